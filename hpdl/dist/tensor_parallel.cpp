// Tensor parallelism (Megatron-LM, Shoeybi et al. 2019). The math of the two
// linear layers, for Y = X A^T with A [out, in] split over P ranks:
//   column-parallel: A = [A_0; ...; A_{P-1}] (rows), Y_r = X A_r^T is rank r's
//     columns of Y; dX = sum_r dY_r A_r, hence copy_to_tp (backward allreduce)
//     in front of the product.
//   row-parallel: A = [A_0, ..., A_{P-1}] (columns), X = [X_0, ..., X_{P-1}],
//     Y = sum_r X_r A_r^T, hence reduce_from_tp (forward allreduce) after it;
//     dX_r = dY A_r needs no communication.
// Collectives run on the communicator's communication thread (allreduce_async
// and enqueue), so they stay in order with a data-parallel reducer's bucket
// allreduces on the same communicator.
#include "hpdl/dist/tensor_parallel.h"

#include <cmath>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/ops/attention.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/linalg.h"
#include "hpdl/ops/shape.h"
#include "hpdl/optim/optimizer.h"

namespace hpdl::dist {
namespace {

void check_tp_tensor(const Tensor& x, const char* op) {
  HPDL_CHECK(x.defined(), "{}: input is an undefined tensor", op);
  HPDL_CHECK(x.device().is_cpu(), "{}: tensor parallelism supports CPU tensors only, got {} on {} (move it with "
             ".to(kCPU))", op, shape_str(x.shape()), x.device().str());
  HPDL_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64,
             "{}: unsupported dtype {} (expected float32 or float64)", op, dtype_name(x.dtype()));
}

// A new contiguous tensor holding the sum of x over comm (no graph).
Tensor allreduced(const Tensor& x, Communicator& comm) {
  NoGradGuard ng;
  Tensor t = x.detach().clone();
  if (comm.size() > 1) comm.allreduce_async(t)->wait();
  return t;
}

// x [..., d] from every rank -> [..., P d] (no graph).
Tensor allgathered_last(const Tensor& x, Communicator& comm) {
  NoGradGuard ng;
  Tensor src = x.detach().contiguous();
  Tensor all;  // [P, ..., d]
  comm.enqueue([&] { all = comm.allgather(src); })->wait();
  const int64_t nd = src.ndim();
  std::vector<int64_t> axes;  // [..., P, d]
  for (int64_t i = 1; i < nd; ++i) axes.push_back(i);
  axes.push_back(0);
  axes.push_back(nd);
  Shape out = src.shape();
  out.back() *= comm.size();
  return all.permute(axes).reshape(out).contiguous();
}

void check_cpu_param(const Tensor& t, const std::string& what) {
  HPDL_CHECK(t.device().is_cpu(), "{}: tensor parallelism supports CPU tensors only, got {} on {}", what,
             shape_str(t.shape()), t.device().str());
}

// The shape of t with axis `axis` (size groups * P * n) replaced by [groups, P, n].
Shape grouped_shape(const Shape& s, int64_t axis, int64_t groups, int64_t P) {
  Shape g(s.begin(), s.begin() + axis);
  g.push_back(groups);
  g.push_back(P);
  g.push_back(s[axis] / (groups * P));
  g.insert(g.end(), s.begin() + axis + 1, s.end());
  return g;
}

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

}  // namespace

// ---------------------------------------------------------------- collectives

Tensor copy_to_tp(const Tensor& x, Communicator& comm) {
  check_tp_tensor(x, "copy_to_tp");
  Tensor y = x.detach();
  if (needs_grad({&x})) {
    Communicator* c = &comm;
    record("copy_to_tp", {x}, {&y}, [c](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].defined() ? reduce_from_tp(g[0], *c) : Tensor()};
    });
  }
  return y;
}

Tensor reduce_from_tp(const Tensor& x, Communicator& comm) {
  check_tp_tensor(x, "reduce_from_tp");
  Tensor y = allreduced(x, comm);
  if (needs_grad({&x})) {
    Communicator* c = &comm;
    record("reduce_from_tp", {x}, {&y}, [c](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].defined() ? copy_to_tp(g[0], *c) : Tensor()};
    });
  }
  return y;
}

Tensor gather_from_tp(const Tensor& x, Communicator& comm) {
  check_tp_tensor(x, "gather_from_tp");
  HPDL_CHECK(x.ndim() >= 1, "gather_from_tp: input must have at least one dim, got a scalar");
  Tensor y = allgathered_last(x, comm);
  if (needs_grad({&x})) {
    Communicator* c = &comm;
    record("gather_from_tp", {x}, {&y}, [c](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].defined() ? scatter_to_tp(g[0], *c) : Tensor()};
    });
  }
  return y;
}

Tensor scatter_to_tp(const Tensor& x, Communicator& comm) {
  check_tp_tensor(x, "scatter_to_tp");
  HPDL_CHECK(x.ndim() >= 1 && x.dim(-1) % comm.size() == 0,
             "scatter_to_tp: the last dim of {} is not divisible by the tensor-parallel size P = {}",
             shape_str(x.shape()), comm.size());
  const int64_t d = x.dim(-1) / comm.size();
  Tensor y;
  {
    NoGradGuard ng;
    y = x.detach().slice(-1, comm.rank() * d, (comm.rank() + 1) * d).contiguous();
  }
  if (needs_grad({&x})) {
    Communicator* c = &comm;
    record("scatter_to_tp", {x}, {&y}, [c](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].defined() ? gather_from_tp(g[0], *c) : Tensor()};
    });
  }
  return y;
}

// ---------------------------------------------------------------- sharding

Tensor shard_tensor(const Tensor& full, const ShardSpec& spec, int rank, int size, const std::string& what) {
  NoGradGuard ng;
  Tensor f = full.detach();
  if (spec.axis < 0) return f.clone();
  HPDL_CHECK(spec.axis < f.ndim() && spec.groups >= 1, "{}: shard axis {} (groups {}) invalid for shape {}", what,
             spec.axis, spec.groups, shape_str(f.shape()));
  const int64_t n = f.dim(spec.axis);
  HPDL_CHECK(n % (spec.groups * size) == 0,
             "{}: dim {} of shape {} is not divisible by {} groups x the tensor-parallel size P = {}", what, spec.axis,
             shape_str(f.shape()), spec.groups, size);
  Shape local = f.shape();
  local[spec.axis] = n / size;
  // [.., groups, P, n/(groups P), ..] -> this rank's [.., groups, 1, n/(groups P), ..] -> [.., n/P, ..]
  return f.contiguous()
      .reshape(grouped_shape(f.shape(), spec.axis, spec.groups, size))
      .slice(spec.axis + 1, rank, rank + 1)
      .reshape(local)
      .contiguous()
      .clone();
}

namespace {

// The inverse of shard_tensor over comm: every rank's shard, reassembled.
Tensor unshard_tensor(const Tensor& local, const ShardSpec& spec, Communicator& comm) {
  NoGradGuard ng;
  const int P = comm.size();
  Tensor src = local.detach().contiguous();
  Tensor all;  // [P, .., groups * n, ..]
  comm.enqueue([&] { all = comm.allgather(src); })->wait();
  Shape full = src.shape();
  full[spec.axis] *= P;
  // [P, .., groups, n, ..] -> [.., groups, P, n, ..]
  Shape g = src.shape();
  g.erase(g.begin() + spec.axis);
  g.insert(g.begin() + spec.axis, {spec.groups, src.dim(spec.axis) / spec.groups});
  g.insert(g.begin(), P);
  std::vector<int64_t> axes;
  for (int64_t i = 1; i <= spec.axis + 1; ++i) axes.push_back(i);  // leading dims and groups
  axes.push_back(0);                                               // P
  for (int64_t i = spec.axis + 2; i < static_cast<int64_t>(g.size()); ++i) axes.push_back(i);
  return all.reshape(g).permute(axes).reshape(full).contiguous();
}

}  // namespace

std::map<std::string, Tensor> gather_full_state_dict(nn::Module& model) {
  std::map<std::string, Tensor> state = model.state_dict();
  std::map<std::string, Tensor> out;
  {
    NoGradGuard ng;
    for (auto& [k, v] : state) out[k] = v.detach().clone();
  }
  // named_modules() is in the same order on every rank, so are the allgathers.
  for (auto& [prefix, m] : model.named_modules()) {
    auto* tp = dynamic_cast<TensorParallelModule*>(m.get());
    if (!tp) continue;
    for (auto& [name, spec] : tp->shard_specs()) {
      const std::string key = join(prefix, name);
      auto it = state.find(key);
      if (spec.axis < 0 || it == state.end() || !it->second.defined()) continue;
      out[key] = unshard_tensor(it->second, spec, tp->comm());
    }
  }
  return out;
}

void load_full_state_dict(nn::Module& model, const std::map<std::string, Tensor>& full) {
  std::map<std::string, Tensor> local = full;
  const std::map<std::string, Tensor> mine = model.state_dict();
  for (auto& [prefix, m] : model.named_modules()) {
    auto* tp = dynamic_cast<TensorParallelModule*>(m.get());
    if (!tp) continue;
    for (auto& [name, spec] : tp->shard_specs()) {
      const std::string key = join(prefix, name);
      if (!mine.count(key)) continue;  // a disabled bias
      auto it = full.find(key);
      HPDL_CHECK(it != full.end(), "load_full_state_dict: the state dict has no \"{}\" (a {} parameter)", key,
                 tp->type_name());
      local[key] = shard_tensor(it->second, spec, tp->comm().rank(), tp->comm().size(), key);
    }
  }
  model.load_state_dict(local, /*strict=*/true);
}

// ---------------------------------------------------------------- linear layers

ColumnParallelLinear::ColumnParallelLinear(const nn::Linear& full, Communicator& comm, bool gather,
                                           const std::string& name)
    : TensorParallelModule(comm), in_features(full.in_features), out_features(full.out_features),
      gather_output(gather) {
  const int P = comm.size();
  check_cpu_param(full.weight, name);
  HPDL_CHECK(out_features % P == 0,
             "{} (Linear {} -> {}): out_features {} is not divisible by the tensor-parallel size P = {} (use a P "
             "that divides it)", name, in_features, out_features, out_features, P);
  weight = register_parameter("weight", shard_tensor(full.weight, {0, 1}, comm.rank(), P, name + ".weight"));
  if (full.bias.defined())
    bias = register_parameter("bias", shard_tensor(full.bias, {0, 1}, comm.rank(), P, name + ".bias"));
}

std::map<std::string, ShardSpec> ColumnParallelLinear::shard_specs() const {
  return {{"weight", {0, 1}}, {"bias", {0, 1}}};
}

Tensor ColumnParallelLinear::forward(const Tensor& x) {
  HPDL_CHECK(x.ndim() >= 1 && x.dim(-1) == in_features, "ColumnParallelLinear({}, {}): input {} must end in {} features",
             in_features, out_features, shape_str(x.shape()), in_features);
  // dY_r flows back through A_r on each rank; copy_to_tp sums the P partial dX.
  Tensor y = linear(copy_to_tp(x, comm_), weight, bias);  // [..., out/P]
  return gather_output ? gather_from_tp(y, comm_) : y;
}

RowParallelLinear::RowParallelLinear(const nn::Linear& full, Communicator& comm, bool parallel_input,
                                     const std::string& name)
    : TensorParallelModule(comm), in_features(full.in_features), out_features(full.out_features),
      input_is_parallel(parallel_input) {
  const int P = comm.size();
  check_cpu_param(full.weight, name);
  HPDL_CHECK(in_features % P == 0,
             "{} (Linear {} -> {}): in_features {} is not divisible by the tensor-parallel size P = {} (use a P "
             "that divides it)", name, in_features, out_features, in_features, P);
  weight = register_parameter("weight", shard_tensor(full.weight, {1, 1}, comm.rank(), P, name + ".weight"));
  if (full.bias.defined()) bias = register_parameter("bias", shard_tensor(full.bias, {}, 0, 1, name + ".bias"));
}

std::map<std::string, ShardSpec> RowParallelLinear::shard_specs() const {
  return {{"weight", {1, 1}}, {"bias", {-1, 1}}};
}

Tensor RowParallelLinear::forward(const Tensor& x) {
  const int64_t local_in = in_features / comm_.size();
  const int64_t expect = input_is_parallel ? local_in : in_features;
  HPDL_CHECK(x.ndim() >= 1 && x.dim(-1) == expect,
             "RowParallelLinear({}, {}): input {} must end in {} features ({} input, P = {})", in_features,
             out_features, shape_str(x.shape()), expect, input_is_parallel ? "split" : "replicated", comm_.size());
  Tensor xr = input_is_parallel ? x : scatter_to_tp(x, comm_);
  // Y = sum_r X_r A_r^T; the bias is added once, after the sum.
  Tensor y = reduce_from_tp(linear(xr, weight), comm_);
  return bias.defined() ? add(y, bias) : y;
}

ParallelMLP::ParallelMLP(const nn::Linear& l1, const nn::Linear& l2, Communicator& comm, const std::string& act) {
  HPDL_CHECK(l1.out_features == l2.in_features,
             "ParallelMLP: linear1's out_features {} must equal linear2's in_features {}", l1.out_features,
             l2.in_features);
  linear1 = register_module("linear1", std::make_shared<ColumnParallelLinear>(l1, comm, false, "ParallelMLP.linear1"));
  activation = register_module("activation", nn::make_activation(act));
  linear2 = register_module("linear2", std::make_shared<RowParallelLinear>(l2, comm, true, "ParallelMLP.linear2"));
}

Tensor ParallelMLP::forward(const Tensor& x) { return linear2->forward(activation->forward(linear1->forward(x))); }

// ---------------------------------------------------------------- attention

ParallelSelfAttention::ParallelSelfAttention(nn::MultiheadAttention& full, Communicator& comm)
    : TensorParallelModule(comm), embed_dim(full.embed_dim), num_heads(full.num_heads), head_dim(full.head_dim),
      dropout(full.dropout), causal(full.causal) {
  const int P = comm.size();
  check_cpu_param(full.in_proj_weight, "ParallelSelfAttention");
  HPDL_CHECK(num_heads % P == 0,
             "ParallelSelfAttention (embed_dim {}): num_heads {} is not divisible by the tensor-parallel size P = {} "
             "(use a P that divides the head count)", embed_dim, num_heads, P);
  local_heads = num_heads / P;
  in_proj_weight = register_parameter(
      "in_proj_weight", shard_tensor(full.in_proj_weight, {0, 3}, comm.rank(), P, "ParallelSelfAttention.in_proj_weight"));
  if (full.in_proj_bias.defined())
    in_proj_bias = register_parameter(
        "in_proj_bias", shard_tensor(full.in_proj_bias, {0, 3}, comm.rank(), P, "ParallelSelfAttention.in_proj_bias"));
  out_proj = register_module("out_proj",
                             std::make_shared<RowParallelLinear>(*full.out_proj, comm, true, "ParallelSelfAttention.out_proj"));
  // Each rank's heads draw their own dropout masks.
  gen_.set_state(full.generator().seed() + 1000003ull * static_cast<uint64_t>(comm.rank()), full.generator().offset());
  register_generator("generator", &gen_);
}

std::map<std::string, ShardSpec> ParallelSelfAttention::shard_specs() const {
  return {{"in_proj_weight", {0, 3}}, {"in_proj_bias", {0, 3}}};
}

Tensor ParallelSelfAttention::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor ParallelSelfAttention::forward(const Tensor& x, const Tensor& attn_mask) {
  HPDL_CHECK(x.ndim() == 3 && x.dim(2) == embed_dim, "ParallelSelfAttention({}, {}): input {} must be [N, T, {}]",
             embed_dim, num_heads, shape_str(x.shape()), embed_dim);
  const int64_t N = x.dim(0), T = x.dim(1), H = local_heads, D = head_dim;
  // qkv [N, T, 3 H D] -> [N, T, 3, H, D] -> [3, N, H, T, D]: this rank's heads only.
  Tensor qkv = linear(copy_to_tp(x, comm_), in_proj_weight, in_proj_bias).reshape({N, T, 3, H, D}).permute({2, 0, 3, 1, 4});
  AttentionOptions o;
  o.attn_mask = attn_mask;
  o.causal = causal;
  o.dropout_p = dropout;
  o.training = is_training();
  o.gen = &gen_;
  Tensor ctx = scaled_dot_product_attention(qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2), o);
  // ctx [N, H, T, D] -> [N, T, H D]: this rank's columns of the joined heads, out_proj's split input.
  return out_proj->forward(ctx.permute({0, 2, 1, 3}).reshape({N, T, H * D}));
}

ParallelTransformerEncoderLayer::ParallelTransformerEncoderLayer(nn::TransformerEncoderLayer& full,
                                                                 Communicator& comm)
    : options(full.options) {
  const int64_t E = full.self_attn->embed_dim;
  // Registration order as nn::TransformerEncoderLayer, so named_parameters() lists alike.
  self_attn = register_module("self_attn", std::make_shared<ParallelSelfAttention>(*full.self_attn, comm));
  linear1 = register_module(
      "linear1", std::make_shared<ColumnParallelLinear>(*full.linear1, comm, false, "TransformerEncoderLayer.linear1"));
  dropout = register_module("dropout", std::make_shared<nn::Dropout>(full.dropout->p));
  linear2 = register_module(
      "linear2", std::make_shared<RowParallelLinear>(*full.linear2, comm, true, "TransformerEncoderLayer.linear2"));
  norm1 = register_module("norm1", std::make_shared<nn::LayerNorm>(E, full.norm1->eps));
  norm2 = register_module("norm2", std::make_shared<nn::LayerNorm>(E, full.norm2->eps));
  dropout1 = register_module("dropout1", std::make_shared<nn::Dropout>(full.dropout1->p));
  dropout2 = register_module("dropout2", std::make_shared<nn::Dropout>(full.dropout2->p));
  activation = register_module("activation", nn::make_activation(options.activation));
  {
    NoGradGuard ng;
    for (auto [mine, theirs] : {std::pair{norm1, full.norm1}, std::pair{norm2, full.norm2}}) {
      mine->to(theirs->weight.dtype());
      mine->weight.copy_(theirs->weight.detach());
      mine->bias.copy_(theirs->bias.detach());
    }
  }
  // Replicated dropouts draw the full layer's masks; the split hidden one draws its own per rank.
  dropout1->generator() = full.dropout1->generator();
  dropout2->generator() = full.dropout2->generator();
  const Generator& g = full.dropout->generator();
  dropout->generator().set_state(g.seed() + 1000003ull * static_cast<uint64_t>(comm.rank()), g.offset());
}

Tensor ParallelTransformerEncoderLayer::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor ParallelTransformerEncoderLayer::forward(const Tensor& x, const Tensor& attn_mask) {
  auto attend = [&](const Tensor& h) { return dropout1->forward(self_attn->forward(h, attn_mask)); };
  auto feed_forward = [&](const Tensor& h) {
    return dropout2->forward(linear2->forward(dropout->forward(activation->forward(linear1->forward(h)))));
  };
  if (options.norm_first) {
    Tensor h = add(x, attend(norm1->forward(x)));
    return add(h, feed_forward(norm2->forward(h)));
  }
  Tensor h = norm1->forward(add(x, attend(x)));
  return norm2->forward(add(h, feed_forward(h)));
}

}  // namespace hpdl::dist

namespace hpdl::dist {

// ---------------------------------------------------------------- whole models

ParallelVisionTransformer::ParallelVisionTransformer(nn::models::VisionTransformer& full, Communicator& comm)
    : options(full.options) {
  // Registration order and kinds as VisionTransformer's, so named_parameters() lists alike.
  patch_embed = register_module("patch_embed", full.patch_embed);
  cls_token = register_parameter("cls_token", full.cls_token);
  pos_embed = register_parameter("pos_embed", full.pos_embed);
  blocks = register_module("blocks", std::make_shared<nn::Sequential>());
  for (size_t i = 0; i < full.blocks->size(); ++i) {
    auto* layer = dynamic_cast<nn::TransformerEncoderLayer*>(&(*full.blocks)[i]);
    HPDL_CHECK(layer != nullptr, "ParallelVisionTransformer: blocks.{} is a {}, not a TransformerEncoderLayer", i,
               (*full.blocks)[i].type_name());
    blocks->push_back(std::make_shared<ParallelTransformerEncoderLayer>(*layer, comm));
  }
  norm = register_module("norm", full.norm);
  head = register_module("head", full.head);
  train(full.is_training());
}

Tensor ParallelVisionTransformer::forward(const Tensor& x) {
  // As VisionTransformer::forward: the encoder layers take and give replicated [N, 1 + L, E], so
  // the head sees the same on every rank.
  return nn::models::vit_classify(
      *norm, *head,
      blocks->forward(nn::models::vit_embed("ParallelVisionTransformer", options, *patch_embed, cls_token, pos_embed, x)));
}

int64_t ParallelVisionTransformer::layer_parameters(int64_t i) const {
  return nn::models::vit_parts(*this).layer_parameters(*this, i);
}

std::shared_ptr<nn::Module> ParallelVisionTransformer::make_stage(int64_t lo, int64_t hi) {
  return nn::models::vit_parts(*this).make_stage(*this, lo, hi);
}

// ---------------------------------------------------------------- optimizer state

std::map<std::string, ShardedParameter> sharded_parameters(nn::Module& model) {
  std::map<std::string, ShardedParameter> out;
  for (auto& [prefix, m] : model.named_modules()) {
    auto* tp = dynamic_cast<TensorParallelModule*>(m.get());
    if (!tp) continue;
    for (auto& [name, spec] : tp->shard_specs())
      if (spec.axis >= 0) out[join(prefix, name)] = {spec, &tp->comm()};
  }
  return out;
}

std::vector<double> parameter_sums_of_squares(nn::Module& model, Communicator& comm) {
  NoGradGuard no_grad;
  const auto sharded = sharded_parameters(model);
  const auto named = model.named_parameters();
  std::vector<Tensor> grads;
  std::vector<size_t> at;
  for (size_t i = 0; i < named.size(); ++i) {
    const auto& [name, p] = named[i];
    auto it = sharded.find(name);
    HPDL_CHECK(it == sharded.end() || it->second.comm == &comm, "tensor-parallel clip_grad_norm: parameter '{}' is "
               "split over another communicator than the one given", name);
    // A replicated parameter's gradient is the same on every rank of the group: rank 0 counts it.
    const bool counts = it != sharded.end() || comm.rank() == 0;
    if (counts && p.grad().defined()) grads.push_back(p.grad()), at.push_back(i);
  }
  // Per parameter: this rank's share (its slice's sum of squares, or a replicated one's on rank 0,
  // zero elsewhere); the sum over the group is the full parameter's sum of squares.
  Tensor sq = Tensor::zeros({static_cast<int64_t>(named.size())}, DType::f64);
  const std::vector<double> mine = optim::sums_of_squares(grads);
  double* v = sq.data<double>();
  for (size_t k = 0; k < at.size(); ++k) v[at[k]] = mine[k];
  if (sq.numel() > 0) comm.allreduce_async(sq)->wait();  // in order with the layers' collectives
  return sq.to_vector<double>();
}

double clip_grad_norm(nn::Module& model, Communicator& comm, double max_norm) {
  HPDL_CHECK(max_norm > 0, "tensor-parallel clip_grad_norm: max_norm must be > 0, got {}", max_norm);
  const std::vector<double> sq = parameter_sums_of_squares(model, comm);
  NoGradGuard no_grad;
  double total_sq = 0;
  for (double v : sq) total_sq += v;  // parameter order
  const double total = std::sqrt(total_sq);
  HPDL_CHECK(std::isfinite(total), "tensor-parallel clip_grad_norm: the gradient norm is not finite ({}); the loss "
             "has diverged (lower the learning rate or check the inputs)", total);
  const double coef = max_norm / (total + 1e-6);  // the epsilon of optim::clip_grad_norm
  if (coef < 1)
    for (const auto& [_, p] : model.named_parameters()) {
      if (!p.grad().defined()) continue;
      Tensor g = p.grad();
      g.copy_(mul(g, coef));
    }
  return total;
}

namespace {

// The split parameter an optimizer entry "<parameter>.<buffer>" belongs to, or null.
const ShardedParameter* owner_of(const std::map<std::string, ShardedParameter>& sharded, const std::string& key,
                                 std::string* param) {
  const auto dot = key.rfind('.');
  if (dot == std::string::npos) return nullptr;
  auto it = sharded.find(key.substr(0, dot));
  if (it == sharded.end()) return nullptr;
  *param = it->first;
  return &it->second;
}

}  // namespace

std::map<std::string, Tensor> gather_full_optimizer_state(nn::Module& model, const std::map<std::string, Tensor>& state) {
  const auto sharded = sharded_parameters(model);
  std::map<std::string, Tensor> params;
  for (auto& [k, v] : model.named_parameters()) params.emplace(k, v);
  std::map<std::string, Tensor> out;
  // std::map order: the same keys in the same order on every rank, so are the allgathers.
  for (const auto& [key, t] : state) {
    std::string param;
    const ShardedParameter* sp = owner_of(sharded, key, &param);
    if (sp && t.defined() && t.shape() == params.at(param).shape())
      out[key] = unshard_tensor(t, sp->spec, *sp->comm);
    else
      out[key] = t;
  }
  return out;
}

std::map<std::string, Tensor> shard_optimizer_state(nn::Module& model, const std::map<std::string, Tensor>& full) {
  const auto sharded = sharded_parameters(model);
  std::map<std::string, Tensor> params;
  for (auto& [k, v] : model.named_parameters()) params.emplace(k, v);
  std::map<std::string, Tensor> out;
  for (const auto& [key, t] : full) {
    std::string param;
    const ShardedParameter* sp = owner_of(sharded, key, &param);
    if (sp && t.defined() && t.ndim() == params.at(param).ndim() && t.dim(sp->spec.axis) ==
        params.at(param).dim(sp->spec.axis) * sp->comm->size())
      out[key] = shard_tensor(t, sp->spec, sp->comm->rank(), sp->comm->size(), "optimizer state '" + key + "'");
    else
      out[key] = t;
  }
  return out;
}

}  // namespace hpdl::dist
