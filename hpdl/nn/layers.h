// The standard layers as Modules over the functional ops in hpdl/ops.
// Tensor layouts: N batch, C channels, H height, W width, D features.
// Every layer that draws initial weights takes a Generator (default: the
// process-wide one) so a model built from one seed is reproducible.
// Parameter and buffer names follow PyTorch ("weight", "bias",
// "running_mean", ...) so state dicts load into the matching torch.nn layers.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hpdl/backend/backend.h"
#include "hpdl/nn/module.h"
#include "hpdl/ops/conv.h"
#include "hpdl/ops/norm.h"

namespace hpdl::nn {

// y = x @ weight^T + bias. x [..., in] -> [..., out]; weight [out, in], bias [out].
// Init: PyTorch's default (init::default_linear_init_).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Linear"; }
  Tensor weight, bias;  // bias undefined when disabled
  int64_t in_features, out_features;
};

struct Conv2dOptions {
  int64_t kernel_h = 3, kernel_w = 3;
  int64_t stride = 1, padding = 0, dilation = 1, groups = 1;
  bool bias = true;
  // Square kernel helper: Conv2dOptions::k(3).s(2).p(1)
  static Conv2dOptions k(int64_t kernel) {
    Conv2dOptions o;
    o.kernel_h = o.kernel_w = kernel;
    return o;
  }
  Conv2dOptions& s(int64_t v) { stride = v; return *this; }
  Conv2dOptions& p(int64_t v) { padding = v; return *this; }
  Conv2dOptions& d(int64_t v) { dilation = v; return *this; }
  Conv2dOptions& g(int64_t v) { groups = v; return *this; }
  Conv2dOptions& no_bias() { bias = false; return *this; }
};

// 2-D convolution: x [N, in, H, W] -> [N, out, P, Q]; weight [out, in/groups, kh, kw], bias [out].
// in and out must be divisible by groups. Init: PyTorch's default.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, const Conv2dOptions& options = {},
         Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Conv2d"; }
  Conv2dParams params() const;
  // Output spatial size for an input of size h x w.
  std::pair<int64_t, int64_t> output_size(int64_t h, int64_t w) const;
  Tensor weight, bias;
  int64_t in_channels, out_channels;
  Conv2dOptions options;
};

struct ConvTranspose2dOptions {
  int64_t kernel_h = 3, kernel_w = 3;
  int64_t stride = 1, padding = 0, output_padding = 0, dilation = 1, groups = 1;
  bool bias = true;
  // Square kernel helper: ConvTranspose2dOptions::k(4).s(2).p(1)
  static ConvTranspose2dOptions k(int64_t kernel) {
    ConvTranspose2dOptions o;
    o.kernel_h = o.kernel_w = kernel;
    return o;
  }
  ConvTranspose2dOptions& s(int64_t v) { stride = v; return *this; }
  ConvTranspose2dOptions& p(int64_t v) { padding = v; return *this; }
  ConvTranspose2dOptions& op(int64_t v) { output_padding = v; return *this; }
  ConvTranspose2dOptions& d(int64_t v) { dilation = v; return *this; }
  ConvTranspose2dOptions& g(int64_t v) { groups = v; return *this; }
  ConvTranspose2dOptions& no_bias() { bias = false; return *this; }
};

// Transposed 2-D convolution (conv_transpose2d): x [N, in, H, W] -> [N, out, P, Q]
// with P = (H-1)*stride - 2*padding + dilation*(kh-1) + output_padding + 1;
// weight [in, out/groups, kh, kw] (PyTorch's layout), bias [out]. Init:
// PyTorch's default, which takes fan_in = weight.dim(1) * kh * kw. Throws at
// construction for non-positive sizes, groups not dividing both channel counts,
// or output_padding outside [0, stride).
class ConvTranspose2d : public Module {
 public:
  ConvTranspose2d(int64_t in_channels, int64_t out_channels, const ConvTranspose2dOptions& options = {},
                  Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "ConvTranspose2d"; }
  ConvTranspose2dParams params() const;
  // Output spatial size for an input of size h x w.
  std::pair<int64_t, int64_t> output_size(int64_t h, int64_t w) const;
  Tensor weight, bias;
  int64_t in_channels, out_channels;
  ConvTranspose2dOptions options;
};

// Batch normalization (Ioffe & Szegedy 2015) over x [N, C, ...] per channel.
// Training: batch statistics of this rank's batch (per-rank, not synchronized
// across ranks) unless cross_replica_sum is set (dist::convert_sync_batchnorm
// installs it): then the statistics and the backward sums span every rank's
// batch (ops batch_norm_cross_replica). Running = (1 - momentum) * running + momentum * batch
// (unbiased variance); eval: running statistics. Parameters weight (ones) and
// bias (zeros) [C]; buffers running_mean (zeros), running_var (ones) [C] and
// num_batches_tracked (int64 scalar, counts training batches).
class BatchNorm : public Module {
 public:
  BatchNorm(int64_t num_features, double eps, double momentum, bool affine, int min_ndim, int max_ndim,
            std::string name);
  Tensor forward(const Tensor& x) override;
  // relu(forward(x)), with the ReLU fused into the batch-norm passes where the backend can
  // (batch_norm_relu); residual blocks use it for their inner conv-BN-ReLU.
  Tensor forward_relu(const Tensor& x);
  // add_relu(forward(x), residual), fused into the batch norm's output pass where the backend can
  // (batch_norm_add_relu); residual blocks use it for their last batch norm.
  Tensor forward_add_relu(const Tensor& x, const Tensor& residual);
  std::string type_name() const override { return name_; }
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  int64_t num_features;
  double eps, momentum;
  // Empty: per-replica statistics. Set: synchronized batch norm in training.
  CrossReplicaSum cross_replica_sum;

 private:
  Tensor forward_impl(const Tensor& x, bool relu, const Tensor& residual = Tensor());
  int min_ndim_, max_ndim_;
  std::string name_;
};
// Recomputes the running statistics of every batch norm in `model` for its current weights
// ("standing statistics": weights averaged by EMA or SWA were never run with the statistics their
// batch norms hold, which are averages of other weights' activations). Each batch norm's running
// mean and variance restart at 0 and 1 and become the plain average, over `batches` training-mode
// forwards of next_input() without autograd, of the batch means and unbiased variances (momentum
// 1 / (k + 1) on forward k). Parameters, num_batches_tracked, the momentum and every module's mode
// are as before afterwards. Throws if batches < 1 or the model has no batch norm.
void recompute_batchnorm_statistics(Module& model, const std::function<Tensor()>& next_input, int64_t batches);

// x [N, C, H, W].
class BatchNorm2d : public BatchNorm {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5, double momentum = 0.1, bool affine = true)
      : BatchNorm(num_features, eps, momentum, affine, 4, 4, "BatchNorm2d") {}
};
// x [N, C] or [N, C, L].
class BatchNorm1d : public BatchNorm {
 public:
  explicit BatchNorm1d(int64_t num_features, double eps = 1e-5, double momentum = 0.1, bool affine = true)
      : BatchNorm(num_features, eps, momentum, affine, 2, 3, "BatchNorm1d") {}
};

// Layer normalization (Ba, Kiros & Hinton 2016) over the last axis of size D:
// x [..., D]; weight (ones) and bias (zeros) [D].
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t normalized_size, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "LayerNorm"; }
  Tensor weight, bias;
  int64_t normalized_size;
  double eps;
};

// Group normalization (Wu & He 2018), PyTorch's nn.GroupNorm: x [N, C, ...] normalized over each
// of num_groups groups of C / num_groups channels per sample; with affine, weight (ones) and bias
// (zeros) [C] per channel. num_groups == C is instance norm, 1 a layer norm over C and the spatial
// axes. Training and eval are the same (no running statistics), and the gradient penalty of a
// WGAN-GP critic stays per sample.
class GroupNorm : public Module {
 public:
  GroupNorm(int64_t num_groups, int64_t num_channels, double eps = 1e-5, bool affine = true);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "GroupNorm"; }
  Tensor weight, bias;  // undefined without affine
  int64_t num_groups, num_channels;
  double eps;
};

// Inverted dropout (Srivastava et al. 2014) with probability p in training,
// identity in eval. The mask comes from the module's own Generator (seeded at
// construction, registered as "generator"), so two runs with one seed drop the
// same units and a checkpoint can restore the stream.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, uint64_t seed = 0);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Dropout"; }
  Generator& generator() { return gen_; }
  double p;

 private:
  Generator gen_;
};

// Embedding table weight [V, D] ~ N(0, 1) (PyTorch's default); int64 indices [...] -> [..., D].
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator& gen = default_generator());
  Tensor forward(const Tensor& indices) override;
  std::string type_name() const override { return "Embedding"; }
  Tensor weight;
};

// Pooling over x [N, C, H, W]. stride defaults to the kernel size (stride <= 0).
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "MaxPool2d"; }
  Pool2dParams params;
};
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0, bool count_include_pad = true);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "AvgPool2d"; }
  Pool2dParams params;
};
// To a fixed output size [N, C, out_h, out_w] (1 x 1 is global average pooling).
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(int64_t out_h = 1, int64_t out_w = 1) : out_h(out_h), out_w(out_w) {}
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "AdaptiveAvgPool2d"; }
  int64_t out_h, out_w;
};

// x [N, d1, d2, ...] -> [N, d1 * d2 * ...] (axes from start_axis joined).
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_axis = 1) : start_axis(start_axis) {}
  Tensor forward(const Tensor& x) override { return x.flatten(start_axis); }
  std::string type_name() const override { return "Flatten"; }
  int64_t start_axis;
};

class Identity : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
  std::string type_name() const override { return "Identity"; }
};

// Pointwise activations (any shape).
class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "ReLU"; }
};
class LeakyReLU : public Module {
 public:
  explicit LeakyReLU(double negative_slope = 0.01) : negative_slope(negative_slope) {}
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "LeakyReLU"; }
  double negative_slope;
};
class Tanh : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Tanh"; }
};
class Sigmoid : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Sigmoid"; }
};
// Exact GELU x * Phi(x) (Hendrycks & Gimpel 2016).
class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "GELU"; }
};
// An activation module by name: relu, leaky_relu, tanh, sigmoid, gelu, identity.
// Throws listing the known names.
ModulePtr make_activation(const std::string& name);

// A model that pipeline parallelism (dist::Pipeline) can cut into stages: its
// forward is the composition of num_layers() layers, and make_stage(lo, hi)
// builds a module running layers [lo, hi) that holds the model's own
// parameters, buffers and generators (shared, not copied) under the model's
// names, listed in the model's order. The first stage takes the model's input,
// the last gives its output; the ones between take and give what the layers
// between hand on.
class Stageable {
 public:
  virtual ~Stageable() = default;
  virtual int64_t num_layers() const = 0;
  // Parameters (elements) of layer i, which the pipeline balances stages by.
  virtual int64_t layer_parameters(int64_t i) const = 0;
  // Throws unless 0 <= lo < hi <= num_layers().
  virtual std::shared_ptr<Module> make_stage(int64_t lo, int64_t hi) = 0;
};

// Children run in order; they are named "0", "1", ... as in PyTorch. Its layers
// for a pipeline (Stageable) are its leaves(): its children with nested
// Sequentials opened up (a ResNet's stages of blocks become their blocks), so
// a stage can end inside a nested Sequential; a stage is a NamedSequential
// holding them under their names (nested NamedSequentials for "7.2").
class Sequential : public Module, public Stageable {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<ModulePtr> modules);
  // Appends a child named by its position; returns it.
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    return register_module(std::to_string(children().size()), std::move(m));
  }
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Sequential"; }
  size_t size() const { return children().size(); }
  Module& operator[](size_t i) const;
  // Activation checkpointing (ops/checkpoint.h): with k > 0, forward runs the
  // children in consecutive groups of k, each group one checkpointed segment
  // (its activations recomputed in backward); 0 (the default) turns it off.
  // Names, parameters and outputs do not change. Throws for a negative k.
  void set_checkpoint_chunk(int64_t k);
  int64_t checkpoint_chunk() const { return checkpoint_chunk_; }

  // The chain of modules it runs: children, nested Sequentials opened up, each
  // with its dotted name ("0", "7.2").
  std::vector<std::pair<std::string, ModulePtr>> leaves() const;
  int64_t num_layers() const override { return static_cast<int64_t>(leaves().size()); }
  int64_t layer_parameters(int64_t i) const override;
  std::shared_ptr<Module> make_stage(int64_t lo, int64_t hi) override;

 private:
  int64_t checkpoint_chunk_ = 0;
};

// A Sequential whose children keep the names they are added under (a run of
// another module's layers, e.g. layers 3..5 of a Sequential as "3", "4", "5"),
// so its state dict uses that module's names.
class NamedSequential : public Sequential {
 public:
  template <typename M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }
  std::string type_name() const override { return "NamedSequential"; }
};

// Throws unless 0 <= lo < hi <= layers, naming the model.
void check_stage_range(const Module& model, int64_t lo, int64_t hi, int64_t layers);

}  // namespace hpdl::nn
