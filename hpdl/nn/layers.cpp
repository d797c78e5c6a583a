// Layer implementations: argument checks that name the layer and the shapes,
// then one call into the functional ops (which record autograd).
#include "hpdl/nn/layers.h"

#include "hpdl/autograd/node.h"
#include "hpdl/nn/init.h"
#include "hpdl/ops/checkpoint.h"
#include "hpdl/ops/ops.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace hpdl::nn {

// ---------------------------------------------------------------- Linear

Linear::Linear(int64_t in, int64_t out, bool with_bias, Generator& gen) : in_features(in), out_features(out) {
  HPDL_CHECK(in > 0 && out > 0, "Linear: in_features ({}) and out_features ({}) must be positive", in, out);
  weight = register_parameter("weight", Tensor::empty({out, in}));
  if (with_bias) bias = register_parameter("bias", Tensor::empty({out}));
  init::default_linear_init_(weight, bias, gen);
}

Tensor Linear::forward(const Tensor& x) {
  HPDL_CHECK(x.ndim() >= 1 && x.dim(-1) == in_features, "Linear({}, {}): input {} must end in {} features",
             in_features, out_features, shape_str(x.shape()), in_features);
  return linear(x, weight, bias);
}

// ---------------------------------------------------------------- Conv2d

namespace {

// The constructor checks Conv2d and ConvTranspose2d share (ConvTranspose2d adds
// output_padding), so both layers reject the same bad options with the same words.
template <typename Options>
void check_conv_layer(const char* layer, int64_t in, int64_t out, const Options& o) {
  HPDL_CHECK(in > 0 && out > 0, "{}: in_channels ({}) and out_channels ({}) must be positive", layer, in, out);
  HPDL_CHECK(o.groups > 0 && in % o.groups == 0 && out % o.groups == 0,
             "{}({}, {}): groups = {} must divide both channel counts", layer, in, out, o.groups);
  HPDL_CHECK(o.kernel_h > 0 && o.kernel_w > 0 && o.stride > 0 && o.dilation > 0 && o.padding >= 0,
             "{}({}, {}): invalid kernel {}x{}, stride {}, dilation {} or padding {}", layer, in, out, o.kernel_h,
             o.kernel_w, o.stride, o.dilation, o.padding);
  if constexpr (std::is_same_v<Options, ConvTranspose2dOptions>) {
    HPDL_CHECK(o.output_padding >= 0 && o.output_padding < o.stride,
               "{}({}, {}): output_padding {} must be in [0, stride) = [0, {})", layer, in, out, o.output_padding,
               o.stride);
  }
}

// The input of either layer's forward: [N, in_channels, H, W].
void check_conv_input(const char* layer, int64_t in, int64_t out, const Tensor& x) {
  HPDL_CHECK(x.ndim() == 4 && x.dim(1) == in, "{}({}, {}): input must be [N, {}, H, W], got {}", layer, in, out, in,
             shape_str(x.shape()));
}

}  // namespace

Conv2d::Conv2d(int64_t in, int64_t out, const Conv2dOptions& o, Generator& gen)
    : in_channels(in), out_channels(out), options(o) {
  check_conv_layer("Conv2d", in, out, o);
  weight = register_parameter("weight", Tensor::empty({out, in / o.groups, o.kernel_h, o.kernel_w}));
  if (o.bias) bias = register_parameter("bias", Tensor::empty({out}));
  init::default_linear_init_(weight, bias, gen);
}

Conv2dParams Conv2d::params() const {
  Conv2dParams p;
  p.stride_h = p.stride_w = options.stride;
  p.pad_h = p.pad_w = options.padding;
  p.dilation_h = p.dilation_w = options.dilation;
  p.groups = options.groups;
  return p;
}

std::pair<int64_t, int64_t> Conv2d::output_size(int64_t h, int64_t w) const {
  const auto& o = options;
  return {Conv2dParams::out_size(h, o.kernel_h, o.stride, o.padding, o.dilation),
          Conv2dParams::out_size(w, o.kernel_w, o.stride, o.padding, o.dilation)};
}

Tensor Conv2d::forward(const Tensor& x) {
  check_conv_input("Conv2d", in_channels, out_channels, x);
  return conv2d(x, weight, bias, params());
}

// ---------------------------------------------------------------- ConvTranspose2d

ConvTranspose2d::ConvTranspose2d(int64_t in, int64_t out, const ConvTranspose2dOptions& o, Generator& gen)
    : in_channels(in), out_channels(out), options(o) {
  check_conv_layer("ConvTranspose2d", in, out, o);
  weight = register_parameter("weight", Tensor::empty({in, out / o.groups, o.kernel_h, o.kernel_w}));
  if (o.bias) bias = register_parameter("bias", Tensor::empty({out}));
  // PyTorch's ConvTranspose2d init is its Conv2d init applied to this layout (fan_in from dim 1).
  init::default_linear_init_(weight, bias, gen);
}

ConvTranspose2dParams ConvTranspose2d::params() const {
  ConvTranspose2dParams p;
  p.stride_h = p.stride_w = options.stride;
  p.pad_h = p.pad_w = options.padding;
  p.output_pad_h = p.output_pad_w = options.output_padding;
  p.dilation_h = p.dilation_w = options.dilation;
  p.groups = options.groups;
  return p;
}

std::pair<int64_t, int64_t> ConvTranspose2d::output_size(int64_t h, int64_t w) const {
  const auto& o = options;
  return {ConvTranspose2dParams::out_size(h, o.kernel_h, o.stride, o.padding, o.dilation, o.output_padding),
          ConvTranspose2dParams::out_size(w, o.kernel_w, o.stride, o.padding, o.dilation, o.output_padding)};
}

Tensor ConvTranspose2d::forward(const Tensor& x) {
  check_conv_input("ConvTranspose2d", in_channels, out_channels, x);
  return conv_transpose2d(x, weight, bias, params());
}

// ---------------------------------------------------------------- normalization

BatchNorm::BatchNorm(int64_t c, double eps, double momentum, bool affine, int min_ndim, int max_ndim,
                     std::string name)
    : num_features(c), eps(eps), momentum(momentum), min_ndim_(min_ndim), max_ndim_(max_ndim),
      name_(std::move(name)) {
  HPDL_CHECK(c > 0, "{}: num_features must be positive, got {}", name_, c);
  HPDL_CHECK(eps > 0 && momentum >= 0 && momentum <= 1, "{}: need eps > 0 and momentum in [0, 1], got {} and {}",
             name_, eps, momentum);
  if (affine) {
    weight = register_parameter("weight", Tensor::ones({c}));
    bias = register_parameter("bias", Tensor::zeros({c}));
  } else {
    // Not trained and not saved: fixed scale 1 and shift 0.
    weight = Tensor::ones({c});
    bias = Tensor::zeros({c});
  }
  running_mean = register_buffer("running_mean", Tensor::zeros({c}));
  running_var = register_buffer("running_var", Tensor::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::i64));
}

Tensor BatchNorm::forward(const Tensor& x) { return forward_impl(x, false); }
Tensor BatchNorm::forward_relu(const Tensor& x) { return forward_impl(x, true); }
Tensor BatchNorm::forward_add_relu(const Tensor& x, const Tensor& residual) {
  HPDL_CHECK(residual.defined(), "{}({}): forward_add_relu needs a residual", name_, num_features);
  return forward_impl(x, true, residual);
}

namespace {
// Every module below `m` (m included) with its mode, depth first.
void collect_modules(Module& m, std::vector<std::pair<Module*, bool>>& out) {
  out.emplace_back(&m, m.is_training());
  for (const auto& [name, child] : m.children()) collect_modules(*child, out);
}
}  // namespace

void recompute_batchnorm_statistics(Module& model, const std::function<Tensor()>& next_input, int64_t batches) {
  HPDL_CHECK(batches >= 1, "recompute_batchnorm_statistics: batches must be >= 1, got {}", batches);
  std::vector<std::pair<Module*, bool>> modules;
  collect_modules(model, modules);
  struct Saved {
    BatchNorm* bn;
    double momentum;
    Tensor counter;
  };
  std::vector<Saved> bns;
  for (auto& [m, training] : modules)
    if (auto* bn = dynamic_cast<BatchNorm*>(m))
      bns.push_back({bn, bn->momentum, bn->num_batches_tracked.defined() ? bn->num_batches_tracked.clone() : Tensor()});
  HPDL_CHECK(!bns.empty(), "recompute_batchnorm_statistics: {} has no batch norm", model.type_name());
  NoGradGuard no_grad;
  for (Saved& s : bns) {
    s.bn->running_mean.fill_(0.0);
    s.bn->running_var.fill_(1.0);
  }
  // Momentum and modes come back also when a forward throws. train(bool) sets a module and
  // everything below it: restored top-down, each module keeps its own mode.
  auto restore = [&] {
    for (Saved& s : bns) s.bn->momentum = s.momentum;
    for (auto& [m, training] : modules) m->train(training);
  };
  model.train(true);
  try {
    for (int64_t k = 0; k < batches; ++k) {
      for (Saved& s : bns) s.bn->momentum = 1.0 / static_cast<double>(k + 1);
      model.forward(next_input());
    }
  } catch (...) {
    restore();
    throw;
  }
  restore();
  for (Saved& s : bns)
    if (s.counter.defined()) s.bn->num_batches_tracked.copy_(s.counter);
}

Tensor BatchNorm::forward_impl(const Tensor& x, bool fuse_relu, const Tensor& residual) {
  HPDL_CHECK(x.ndim() >= min_ndim_ && x.ndim() <= max_ndim_ && x.dim(1) == num_features,
             "{}({}): input must have {} to {} dims with {} channels at axis 1, got {}", name_, num_features,
             min_ndim_, max_ndim_, num_features, shape_str(x.shape()));
  const bool synced = is_training() && static_cast<bool>(cross_replica_sum);
  if (is_training() && !synced) {  // synchronized: the op checks the global count
    int64_t per_channel = x.numel() / num_features;
    HPDL_CHECK(per_channel > 1, "{}: training needs more than one value per channel, got input {}", name_,
               shape_str(x.shape()));
  }
  // weight/bias follow the input when the module was not moved (non-affine constants).
  // A bfloat16 input (autocast) normalizes with float32 parameters and statistics.
  const bool mixed = x.dtype() == DType::bf16 && weight.dtype() == DType::f32;
  if (weight.device() != x.device() || (weight.dtype() != x.dtype() && !mixed)) {
    HPDL_CHECK(!weight.requires_grad(), "{}: parameters are {} on {} but input is {} on {} (call module.to() first)",
               name_, dtype_name(weight.dtype()), weight.device().str(), dtype_name(x.dtype()), x.device().str());
    weight = weight.to(x.dtype()).to(x.device());
    bias = bias.to(x.dtype()).to(x.device());
  }
  // The residual fuses only where its shape, dtype and device match the input; elsewhere add_relu
  // broadcasts and promotes it as for any binary op.
  const bool fuse_res = residual.defined() && residual.shape() == x.shape() && residual.dtype() == x.dtype() &&
                        residual.device() == x.device();
  // A checkpoint's recompute normalizes with the batch statistics as the forward did, but
  // without running statistics: they were updated (and the batch counted) once already.
  const bool recompute = is_training() && checkpoint_recomputing();
  const Tensor rm = recompute ? Tensor() : running_mean, rv = recompute ? Tensor() : running_var;
  Tensor y = synced ? batch_norm_cross_replica(x, weight, bias, rm, rv, cross_replica_sum, momentum, eps)
             : fuse_res ? batch_norm_add_relu(x, residual, weight, bias, rm, rv, is_training(), momentum, eps)
             : fuse_relu && !residual.defined() ? batch_norm_relu(x, weight, bias, rm, rv, is_training(), momentum, eps)
                                                : batch_norm(x, weight, bias, rm, rv, is_training(), momentum, eps);
  if ((synced || !fuse_res) && residual.defined())
    y = add_relu(y, residual);
  else if (synced && fuse_relu)
    y = relu(y);
  // On a GPU the count stays on the device: item() would copy to the host and stall the stream every layer.
  if (is_training() && !recompute) backend_for(num_batches_tracked.device()).increment(num_batches_tracked);
  return y;
}

LayerNorm::LayerNorm(int64_t d, double eps) : normalized_size(d), eps(eps) {
  HPDL_CHECK(d > 0 && eps > 0, "LayerNorm: need a positive size and eps, got {} and {}", d, eps);
  weight = register_parameter("weight", Tensor::ones({d}));
  bias = register_parameter("bias", Tensor::zeros({d}));
}

Tensor LayerNorm::forward(const Tensor& x) {
  HPDL_CHECK(x.ndim() >= 1 && x.dim(-1) == normalized_size, "LayerNorm({}): input {} must end in {}",
             normalized_size, shape_str(x.shape()), normalized_size);
  return layer_norm(x, weight, bias, eps);
}

GroupNorm::GroupNorm(int64_t num_groups, int64_t num_channels, double eps, bool affine)
    : num_groups(num_groups), num_channels(num_channels), eps(eps) {
  HPDL_CHECK(num_groups > 0 && num_channels > 0 && num_channels % num_groups == 0,
             "GroupNorm: num_channels = {} must be a positive multiple of num_groups = {}", num_channels, num_groups);
  HPDL_CHECK(eps > 0 && std::isfinite(eps), "GroupNorm: eps must be positive and finite, got {}", eps);
  if (affine) {
    weight = register_parameter("weight", Tensor::ones({num_channels}));
    bias = register_parameter("bias", Tensor::zeros({num_channels}));
  }
}

Tensor GroupNorm::forward(const Tensor& x) {
  HPDL_CHECK(x.ndim() >= 2 && x.dim(1) == num_channels, "GroupNorm({}, {}): input {} must be [N, {}, ...]",
             num_groups, num_channels, shape_str(x.shape()), num_channels);
  return group_norm(x, num_groups, weight, bias, eps);
}

// ---------------------------------------------------------------- Dropout, Embedding

Dropout::Dropout(double p, uint64_t seed) : p(p), gen_(seed) {
  HPDL_CHECK(p >= 0 && p < 1, "Dropout: p must be in [0, 1), got {}", p);
  register_generator("generator", &gen_);
}

Tensor Dropout::forward(const Tensor& x) { return dropout(x, p, is_training() && p > 0, gen_); }

Embedding::Embedding(int64_t v, int64_t d, Generator& gen) {
  HPDL_CHECK(v > 0 && d > 0, "Embedding: need positive sizes, got {} x {}", v, d);
  weight = register_parameter("weight", Tensor::empty({v, d}));
  init::normal_(weight, gen);
}

Tensor Embedding::forward(const Tensor& indices) {
  HPDL_CHECK(indices.dtype() == DType::i64, "Embedding: indices must be int64, got {} {}",
             dtype_name(indices.dtype()), shape_str(indices.shape()));
  return embedding(weight, indices);
}

// ---------------------------------------------------------------- pooling

namespace {

Pool2dParams pool_params(const char* name, int64_t k, int64_t s, int64_t p) {
  if (s <= 0) s = k;
  HPDL_CHECK(k > 0 && p >= 0 && 2 * p <= k, "{}: invalid kernel {} / padding {} (need padding <= kernel/2)", name, k,
             p);
  Pool2dParams pp;
  pp.kernel_h = pp.kernel_w = k;
  pp.stride_h = pp.stride_w = s;
  pp.pad_h = pp.pad_w = p;
  return pp;
}

void check_nchw(const Tensor& x, const char* name) {
  HPDL_CHECK(x.ndim() == 4, "{}: input must be [N, C, H, W], got {}", name, shape_str(x.shape()));
}

}  // namespace

MaxPool2d::MaxPool2d(int64_t k, int64_t s, int64_t p) : params(pool_params("MaxPool2d", k, s, p)) {}
Tensor MaxPool2d::forward(const Tensor& x) {
  check_nchw(x, "MaxPool2d");
  return max_pool2d(x, params);
}

AvgPool2d::AvgPool2d(int64_t k, int64_t s, int64_t p, bool count_include_pad)
    : params(pool_params("AvgPool2d", k, s, p)) {
  params.count_include_pad = count_include_pad;
}
Tensor AvgPool2d::forward(const Tensor& x) {
  check_nchw(x, "AvgPool2d");
  return avg_pool2d(x, params);
}

Tensor AdaptiveAvgPool2d::forward(const Tensor& x) {
  check_nchw(x, "AdaptiveAvgPool2d");
  return adaptive_avg_pool2d(x, out_h, out_w);
}

// ---------------------------------------------------------------- activations

Tensor ReLU::forward(const Tensor& x) { return relu(x); }
Tensor LeakyReLU::forward(const Tensor& x) { return leaky_relu(x, negative_slope); }
Tensor Tanh::forward(const Tensor& x) { return tanh(x); }
Tensor Sigmoid::forward(const Tensor& x) { return sigmoid(x); }
Tensor GELU::forward(const Tensor& x) { return gelu(x); }

ModulePtr make_activation(const std::string& name) {
  if (name == "relu") return std::make_shared<ReLU>();
  if (name == "leaky_relu") return std::make_shared<LeakyReLU>();
  if (name == "tanh") return std::make_shared<Tanh>();
  if (name == "sigmoid") return std::make_shared<Sigmoid>();
  if (name == "gelu") return std::make_shared<GELU>();
  if (name == "identity" || name == "none") return std::make_shared<Identity>();
  HPDL_FAIL("unknown activation '{}' (known: relu, leaky_relu, tanh, sigmoid, gelu, identity)", name);
}

// ---------------------------------------------------------------- Sequential

Sequential::Sequential(std::initializer_list<ModulePtr> modules) {
  for (const auto& m : modules) push_back(m);
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  if (checkpoint_chunk_ == 0 || !grad_enabled()) {
    for (const auto& [_, m] : children()) h = m->forward(h);
    return h;
  }
  const auto& kids = children();
  for (size_t b = 0; b < kids.size(); b += static_cast<size_t>(checkpoint_chunk_)) {
    // The segment holds its modules (not `this`): the recompute may outlive a caller's handle.
    std::vector<ModulePtr> group;
    for (size_t i = b; i < std::min(kids.size(), b + static_cast<size_t>(checkpoint_chunk_)); ++i)
      group.push_back(kids[i].second);
    h = checkpoint(
        [group](const Tensor& in) {
          Tensor y = in;
          for (const ModulePtr& m : group) y = m->forward(y);
          return y;
        },
        h);
  }
  return h;
}

void Sequential::set_checkpoint_chunk(int64_t k) {
  HPDL_CHECK(k >= 0, "Sequential: checkpoint chunk must be >= 0 (0: off), got {}", k);
  checkpoint_chunk_ = k;
}

std::vector<std::pair<std::string, ModulePtr>> Sequential::leaves() const {
  std::vector<std::pair<std::string, ModulePtr>> out;
  for (const auto& [name, child] : children()) {
    if (const auto* inner = dynamic_cast<const Sequential*>(child.get()))
      for (auto& [sub, m] : inner->leaves()) out.emplace_back(name + "." + sub, m);
    else
      out.emplace_back(name, child);
  }
  return out;
}

int64_t Sequential::layer_parameters(int64_t i) const {
  const auto all = leaves();
  HPDL_CHECK(i >= 0 && i < static_cast<int64_t>(all.size()), "Sequential: layer {} out of range ({} layers)", i,
             all.size());
  return all[static_cast<size_t>(i)].second->num_parameters();
}

std::shared_ptr<Module> Sequential::make_stage(int64_t lo, int64_t hi) {
  const auto all = leaves();
  check_stage_range(*this, lo, hi, static_cast<int64_t>(all.size()));
  auto stage = std::make_shared<NamedSequential>();
  for (int64_t i = lo; i < hi; ++i) {
    // "7.2": into the stage's "7" (added by the first of its leaves here), as "2".
    const auto& [path, m] = all[static_cast<size_t>(i)];
    NamedSequential* at = stage.get();
    size_t from = 0;
    for (size_t dot = path.find('.'); dot != std::string::npos; from = dot + 1, dot = path.find('.', from)) {
      const std::string part = path.substr(from, dot - from);
      const auto& kids = at->children();
      if (kids.empty() || kids.back().first != part) at->add(part, std::make_shared<NamedSequential>());
      at = static_cast<NamedSequential*>(at->children().back().second.get());
    }
    at->add(path.substr(from), m);
  }
  stage->train(is_training());
  return stage;
}

void check_stage_range(const Module& model, int64_t lo, int64_t hi, int64_t layers) {
  HPDL_CHECK(0 <= lo && lo < hi && hi <= layers, "{}: a stage of layers [{}, {}) is not a non-empty run of its {} "
             "layers", model.type_name(), lo, hi, layers);
}

Module& Sequential::operator[](size_t i) const {
  HPDL_CHECK(i < children().size(), "Sequential: index {} out of range (size {})", i, children().size());
  return *children()[i].second;
}

}  // namespace hpdl::nn
