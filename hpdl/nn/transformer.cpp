// Multi-head attention and the transformer encoder layer. The heads are views:
// the fused projection's output [N, T, 3E] is viewed as [N, T, 3, H, D] and
// permuted to [3, N, H, T, D], so q, k and v are selected without copies and
// the attention runs as batched GEMMs over [N, H].
#include "hpdl/nn/transformer.h"

#include "hpdl/nn/init.h"
#include "hpdl/ops/attention.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/linalg.h"
#include "hpdl/ops/reduce.h"

namespace hpdl::nn {

MultiheadAttention::MultiheadAttention(int64_t E, int64_t H, double p, bool with_bias, Generator& gen,
                                       uint64_t dropout_seed)
    : embed_dim(E), num_heads(H), head_dim(H > 0 ? E / H : 0), dropout(p), gen_(dropout_seed) {
  HPDL_CHECK(E > 0 && H > 0, "MultiheadAttention: embed_dim ({}) and num_heads ({}) must be > 0", E, H);
  HPDL_CHECK(E % H == 0, "MultiheadAttention: embed_dim {} is not divisible by num_heads {}", E, H);
  HPDL_CHECK(p >= 0 && p < 1, "MultiheadAttention: dropout must be in [0, 1), got {}", p);
  in_proj_weight = register_parameter("in_proj_weight", Tensor::empty({3 * E, E}));
  init::xavier_uniform_(in_proj_weight, gen);
  if (with_bias) in_proj_bias = register_parameter("in_proj_bias", Tensor::zeros({3 * E}));
  out_proj = register_module("out_proj", std::make_shared<Linear>(E, E, with_bias, gen));
  if (with_bias) init::zeros_(out_proj->bias);
  register_generator("generator", &gen_);
}

Tensor MultiheadAttention::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor MultiheadAttention::forward(const Tensor& x, const Tensor& attn_mask, Tensor* weights_out,
                                   const Tensor& key_padding_mask) {
  HPDL_CHECK(x.ndim() == 3 && x.dim(2) == embed_dim, "MultiheadAttention({}, {}): input {} must be [N, T, {}]",
             embed_dim, num_heads, shape_str(x.shape()), embed_dim);
  const int64_t N = x.dim(0), T = x.dim(1);
  // qkv [N, T, 3E] -> [N, T, 3, H, D] -> [3, N, H, T, D]
  Tensor qkv = linear(x, in_proj_weight, in_proj_bias).reshape({N, T, 3, num_heads, head_dim}).permute({2, 0, 3, 1, 4});
  AttentionOptions o;
  o.attn_mask = attn_mask;
  o.key_padding_mask = key_padding_mask;
  o.causal = causal;
  o.dropout_p = dropout;
  o.training = is_training();
  o.gen = &gen_;
  Tensor w;
  if (weights_out) o.weights_out = &w;
  // ctx [N, H, T, D] -> [N, T, H, D] -> [N, T, E]
  Tensor ctx = scaled_dot_product_attention(qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2), o);
  if (weights_out) *weights_out = mean(w, {1});
  return out_proj->forward(ctx.permute({0, 2, 1, 3}).reshape({N, T, embed_dim}));
}

TransformerEncoderLayer::TransformerEncoderLayer(int64_t d_model, int64_t nhead,
                                                 const TransformerEncoderLayerOptions& o, Generator& gen)
    : options(o) {
  HPDL_CHECK(o.dim_feedforward > 0, "TransformerEncoderLayer: dim_feedforward must be > 0, got {}", o.dim_feedforward);
  HPDL_CHECK(o.activation == "relu" || o.activation == "gelu",
             "TransformerEncoderLayer: activation must be \"relu\" or \"gelu\", got \"{}\"", o.activation);
  // Registration order as torch's __init__, so named_parameters() lists alike.
  self_attn = register_module("self_attn", std::make_shared<MultiheadAttention>(d_model, nhead, o.dropout, true, gen,
                                                                                 o.seed));
  self_attn->causal = o.causal;
  linear1 = register_module("linear1", std::make_shared<Linear>(d_model, o.dim_feedforward, true, gen));
  dropout = register_module("dropout", std::make_shared<Dropout>(o.dropout, o.seed + 1));
  linear2 = register_module("linear2", std::make_shared<Linear>(o.dim_feedforward, d_model, true, gen));
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(d_model, o.layer_norm_eps));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(d_model, o.layer_norm_eps));
  dropout1 = register_module("dropout1", std::make_shared<Dropout>(o.dropout, o.seed + 2));
  dropout2 = register_module("dropout2", std::make_shared<Dropout>(o.dropout, o.seed + 3));
  activation = register_module("activation", make_activation(o.activation));
}

Tensor TransformerEncoderLayer::forward(const Tensor& x) { return forward(x, Tensor()); }

Tensor TransformerEncoderLayer::forward(const Tensor& x, const Tensor& attn_mask, const Tensor& key_padding_mask) {
  auto attend = [&](const Tensor& h) {
    return dropout1->forward(self_attn->forward(h, attn_mask, nullptr, key_padding_mask));
  };
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

}  // namespace hpdl::nn
