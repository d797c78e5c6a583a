// Tensor (intra-layer) model parallelism, after Shoeybi et al. 2019,
// "Megatron-LM": one layer's weight matrix is split over the P ranks of a
// communicator, each rank multiplies by its slice, and a few differentiable
// collectives put the pieces together. An MLP block (column-parallel, then
// row-parallel linear) costs one allreduce forward and one backward.
//
// Every rank of the tensor-parallel communicator sees the same input and gets
// the same output (the activations between blocks are replicated); only the
// weights and the hidden activations inside a block are split. CPU tensors.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/nn/module.h"
#include "hpdl/nn/transformer.h"

namespace hpdl::dist {

// ---- differentiable collectives (Megatron's f and g) ----
// All are collective over `comm` (every rank must call them in the same order
// with tensors of the same shape and dtype) and need CPU tensors of float32 or
// float64; each throws hpdl::Error naming the op otherwise. Their backwards
// are written with these same ops, so they are differentiable to any order.
// Run on comm's communication thread, in order with its other collectives.

// Identity forward; backward all-reduces (sums) the gradient over comm.
// Put where a replicated activation enters a split computation ("f").
Tensor copy_to_tp(const Tensor& x, Communicator& comm);
// Sums x over comm forward (every rank gets the sum); backward passes the
// gradient through unchanged ("g").
Tensor reduce_from_tp(const Tensor& x, Communicator& comm);
// x [..., d] on every rank -> [..., P d]: rank r's x in columns [r d, (r+1) d).
// Backward keeps this rank's d columns of the gradient.
Tensor gather_from_tp(const Tensor& x, Communicator& comm);
// x [..., P d] replicated -> this rank's columns [r d, (r+1) d). Backward
// all-gathers the gradient. Throws when the last dim is not divisible by P.
Tensor scatter_to_tp(const Tensor& x, Communicator& comm);

// ---- sharded layers ----
// Each is built from a full (unsharded) layer, constructed identically on
// every rank (same seed), by copying this rank's slice of its weights; drop
// the full layer afterwards. Parameter names are the full layer's, so the
// sharded state dict has the full model's keys with smaller tensors, and
// gather_full_state_dict() rebuilds the full one.

// How a parameter of a sharded layer is split: the full tensor's axis `axis`
// is viewed as [groups, P, n] and rank r holds [groups, n] (its slice of each
// group; groups = 3 for attention's q, k, v rows). axis = -1: replicated.
struct ShardSpec {
  int64_t axis = -1;
  int64_t groups = 1;
};

// A module whose parameters are (partly) split over a communicator.
class TensorParallelModule : public nn::Module {
 public:
  explicit TensorParallelModule(Communicator& comm) : comm_(comm) {}
  Communicator& comm() const { return comm_; }
  // The split of each of this module's OWN parameters (not its children's).
  virtual std::map<std::string, ShardSpec> shard_specs() const = 0;

 protected:
  Communicator& comm_;
};

// Y = X A^T + b with A's rows (output features) split: rank r holds rows
// [r out/P, (r+1) out/P) of weight [out, in] and of bias. Input replicated
// [..., in] (passed through copy_to_tp); output [..., out/P], or all-gathered
// to [..., out] with gather_output. Throws when out is not divisible by P.
class ColumnParallelLinear : public TensorParallelModule {
 public:
  ColumnParallelLinear(const nn::Linear& full, Communicator& comm, bool gather_output = false,
                       const std::string& name = "ColumnParallelLinear");
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "ColumnParallelLinear"; }
  std::map<std::string, ShardSpec> shard_specs() const override;

  Tensor weight, bias;  // [out/P, in], [out/P]; bias undefined when the full layer has none
  int64_t in_features, out_features;  // the full layer's
  bool gather_output;
};

// Y = X A^T + b with A's columns (input features) split: rank r holds columns
// [r in/P, (r+1) in/P) of weight [out, in]. Input split [..., in/P] (as a
// ColumnParallelLinear without gather_output leaves it), or replicated
// [..., in] when !input_is_parallel (then scattered). The partial products are
// summed with reduce_from_tp and the bias, replicated [out], is added once
// after the sum. Output replicated [..., out]. Throws when in is not
// divisible by P.
class RowParallelLinear : public TensorParallelModule {
 public:
  RowParallelLinear(const nn::Linear& full, Communicator& comm, bool input_is_parallel = true,
                    const std::string& name = "RowParallelLinear");
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "RowParallelLinear"; }
  std::map<std::string, ShardSpec> shard_specs() const override;

  Tensor weight, bias;  // [out, in/P], [out]
  int64_t in_features, out_features;
  bool input_is_parallel;
};

// The transformer feed-forward block, linear1 (column-parallel) ->
// activation -> linear2 (row-parallel): x [..., E] -> [..., E], hidden
// [..., F/P] per rank; one allreduce forward, one backward. Built from two
// full Linear layers [F, E] and [E, F]; children named "linear1", "linear2".
class ParallelMLP : public nn::Module {
 public:
  ParallelMLP(const nn::Linear& linear1, const nn::Linear& linear2, Communicator& comm,
              const std::string& activation = "relu");
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "ParallelMLP"; }

  std::shared_ptr<ColumnParallelLinear> linear1;
  nn::ModulePtr activation;
  std::shared_ptr<RowParallelLinear> linear2;
};

// Multi-head self-attention with the heads split: rank r holds heads
// [r H/P, (r+1) H/P), i.e. their q, k and v rows of in_proj_weight
// ([3E/P, E] here, rows q_r, k_r, v_r) and in_proj_bias, and the matching
// columns of out_proj.weight ([E, E/P]); out_proj.bias is replicated. Each
// rank attends over its own heads; out_proj is row-parallel, so one allreduce
// forward and one backward. x [N, T, E] -> [N, T, E]. Names as
// nn::MultiheadAttention. Throws when num_heads is not divisible by P.
// Attention dropout draws each rank's masks from the layer's generator
// seeded with the full layer's seed + 1000003 x rank (same offset), so with dropout > 0
// training is not bitwise the one-process layer's.
class ParallelSelfAttention : public TensorParallelModule {
 public:
  ParallelSelfAttention(nn::MultiheadAttention& full, Communicator& comm);
  Tensor forward(const Tensor& x) override;
  Tensor forward(const Tensor& x, const Tensor& attn_mask);
  std::string type_name() const override { return "ParallelSelfAttention"; }
  std::map<std::string, ShardSpec> shard_specs() const override;

  Tensor in_proj_weight, in_proj_bias;        // [3E/P, E], [3E/P]
  std::shared_ptr<RowParallelLinear> out_proj;  // weight [E, E/P], bias [E]
  int64_t embed_dim, num_heads, local_heads, head_dim;
  double dropout;
  bool causal;

 private:
  Generator gen_;
};

// nn::TransformerEncoderLayer with self_attn a ParallelSelfAttention and the
// feed-forward block a ParallelMLP's pair (linear1 column-, linear2
// row-parallel); the layer norms are replicated. Same names, same options
// (norm_first, activation, causal). The residual dropouts are replicated and
// seeded as the full layer's, so they draw the same masks; the dropout on the
// split hidden activation cannot, so with dropout > 0 training differs from
// the one-process layer.
class ParallelTransformerEncoderLayer : public nn::Module {
 public:
  ParallelTransformerEncoderLayer(nn::TransformerEncoderLayer& full, Communicator& comm);
  Tensor forward(const Tensor& x) override;
  Tensor forward(const Tensor& x, const Tensor& attn_mask);
  std::string type_name() const override { return "ParallelTransformerEncoderLayer"; }

  std::shared_ptr<ParallelSelfAttention> self_attn;
  std::shared_ptr<ColumnParallelLinear> linear1;
  std::shared_ptr<RowParallelLinear> linear2;
  std::shared_ptr<nn::LayerNorm> norm1, norm2;
  std::shared_ptr<nn::Dropout> dropout, dropout1, dropout2;
  nn::ModulePtr activation;
  nn::TransformerEncoderLayerOptions options;
};

// This rank's slice of a full tensor under `spec` (a contiguous copy; the
// full tensor itself when replicated). Throws when the axis is not divisible
// by groups * P, naming `what`.
Tensor shard_tensor(const Tensor& full, const ShardSpec& spec, int rank, int size, const std::string& what);

// The full model's state dict from a model holding sharded layers: each
// split parameter is all-gathered over its layer's communicator and
// reassembled in the full layout; everything else is copied as it is. Keys
// are the full model's (PyTorch's), so the result loads into the one-process
// model with load_state_dict, or saves as its checkpoint. Collective over
// every sharded layer's communicator: call it on all their ranks.
std::map<std::string, Tensor> gather_full_state_dict(nn::Module& model);

// Loads a full (one-process) state dict into a model holding sharded layers:
// each rank copies its slice. Same keys as gather_full_state_dict; strict.
void load_full_state_dict(nn::Module& model, const std::map<std::string, Tensor>& full);

// ---- whole models and their optimizer state ----

// The Vision Transformer (nn/models/vit.h) with every encoder layer a
// ParallelTransformerEncoderLayer over `comm`, built from a full model
// constructed identically on every rank (same seed): the patch embedding,
// class token, position embedding, final norm and head are the full model's
// own (shared, replicated on every rank), so the names and the forward are
// the full model's. Throws (the layer's error) when model.heads or the
// feed-forward width is not divisible by comm.size().
// Its pipeline layers (nn::Stageable) are the vit's: embedding, each encoder
// layer, head; a stage is an nn::models::VitStage holding the parallel layers.
class ParallelVisionTransformer : public nn::Module, public nn::Stageable {
 public:
  ParallelVisionTransformer(nn::models::VisionTransformer& full, Communicator& comm);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "ParallelVisionTransformer"; }
  int64_t num_layers() const override { return options.depth + 2; }
  // This rank's parameters of layer i (an encoder layer's slices).
  int64_t layer_parameters(int64_t i) const override;
  std::shared_ptr<nn::Module> make_stage(int64_t lo, int64_t hi) override;

  std::shared_ptr<nn::Conv2d> patch_embed;
  Tensor cls_token, pos_embed;
  std::shared_ptr<nn::Sequential> blocks;  // of ParallelTransformerEncoderLayer
  std::shared_ptr<nn::LayerNorm> norm;
  std::shared_ptr<nn::Linear> head;
  nn::models::VitOptions options;
};

// The split parameters of a model holding sharded layers, by full name: how
// each is split and over which communicator. Replicated ones are absent.
struct ShardedParameter {
  ShardSpec spec;
  Communicator* comm = nullptr;
};
std::map<std::string, ShardedParameter> sharded_parameters(nn::Module& model);

// optimizer.clip_grad_norm for a model holding sharded layers: the global L2
// norm of the FULL model's gradients, every rank of `comm` (the
// tensor-parallel group, over which every split parameter must be split)
// scaling its own gradients by the same max_norm / (norm + 1e-6) when that is
// below 1. Per parameter, in model.named_parameters() order: a split
// parameter's sum of squares is its slices' float64 sums added over the ranks,
// a replicated one's (the same gradient on every rank) is counted once, from
// rank 0; one float64 allreduce gives every rank all of them, added in that
// order. Equal to optim::clip_grad_norm on the one-process model's gradients
// up to the order of float sums inside a split parameter (about 1e-7
// relative for float32 gradients). Collective; call it on every rank of
// `comm` after the gradients are complete (data-parallel average included).
// Returns the norm before clipping. Throws when max_norm <= 0, when a split
// parameter is split over another communicator, or when the norm is not finite.
double clip_grad_norm(nn::Module& model, Communicator& comm, double max_norm);

// The float64 sum of squares of each of model.named_parameters()' FULL
// gradients (0 for one without a gradient), the same on every rank of
// `comm`: a split parameter's slices summed over the group, a replicated one
// counted once (rank 0's). One allreduce over `comm`, in order with the
// layers' collectives. What clip_grad_norm adds up; Pipeline::clip_grad_norm
// uses it for stages split over a group.
std::vector<double> parameter_sums_of_squares(nn::Module& model, Communicator& comm);

// An optimizer's state (optim::Optimizer::state_dict(): "<parameter>.<buffer>"
// entries and counters) of a model holding sharded layers, in the full
// model's layout: a buffer of a split parameter with the shape of that
// parameter's slice (momentum, Adam's moments: elementwise state) is
// all-gathered and reassembled as the parameter is; everything else (counters,
// buffers of replicated parameters) is copied. Collective over every sharded
// layer's communicator, as gather_full_state_dict.
std::map<std::string, Tensor> gather_full_optimizer_state(nn::Module& model, const std::map<std::string, Tensor>& state);
// The inverse: this rank's slice of a full optimizer state (each buffer of a
// split parameter with the full parameter's shape is sliced as the
// parameter). Local; throws naming the entry when a shape does not split.
std::map<std::string, Tensor> shard_optimizer_state(nn::Module& model, const std::map<std::string, Tensor>& full);

}  // namespace hpdl::dist
