// Attention layers (Vaswani et al. 2017) over ops::scaled_dot_product_attention:
// multi-head self-attention and the transformer encoder layer. Sequences are
// batch first, x [N, T, E] (torch's batch_first=True). Parameter names and
// layouts are PyTorch's, so a state dict loads into torch.nn.MultiheadAttention
// / torch.nn.TransformerEncoderLayer(batch_first=True):
//   in_proj_weight [3E, E] (rows: q, k, v), in_proj_bias [3E],
//   out_proj.weight [E, E], out_proj.bias [E];
//   the encoder layer adds self_attn.*, linear1.* [F, E], linear2.* [E, F],
//   norm1.*, norm2.* [E].
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "hpdl/core/random.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/module.h"

namespace hpdl::nn {

// Multi-head self-attention: q, k, v = split(x @ in_proj_weight^T + in_proj_bias)
// (one fused GEMM), each [N, T, E] viewed as heads x head_dim; per head
// softmax(q k^T / sqrt(head_dim) + mask) v, with dropout on the weights in
// training; heads joined and passed through out_proj. Init as PyTorch:
// in_proj_weight Xavier-uniform, biases zero, out_proj.weight Linear's default.
// Throws at construction when embed_dim is not divisible by num_heads.
class MultiheadAttention : public Module {
 public:
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, double dropout = 0.0, bool bias = true,
                     Generator& gen = default_generator(), uint64_t dropout_seed = 0);
  // Self-attention over x [N, T, E] with the layer's `causal` setting.
  Tensor forward(const Tensor& x) override;
  // With an additive float mask broadcastable to [N, heads, T, T] ([T, T] is
  // usual); `weights_out`, when set, receives the attention weights averaged
  // over heads [N, T, T] (PyTorch's need_weights default). key_padding_mask:
  // uint8 [N, T], nonzero = that position is padding and no query attends to
  // it (PyTorch's key_padding_mask with True = ignore); a sequence padded
  // everywhere gives NaN, as in PyTorch. Runs the fused attention kernel
  // when neither attn_mask, weights_out nor training dropout is in use.
  Tensor forward(const Tensor& x, const Tensor& attn_mask, Tensor* weights_out = nullptr,
                 const Tensor& key_padding_mask = Tensor());
  std::string type_name() const override { return "MultiheadAttention"; }
  Generator& generator() { return gen_; }

  Tensor in_proj_weight, in_proj_bias;  // bias undefined when disabled
  std::shared_ptr<Linear> out_proj;
  int64_t embed_dim, num_heads, head_dim;
  double dropout;
  bool causal = false;  // each position attends only to itself and earlier ones

 private:
  Generator gen_;
};

struct TransformerEncoderLayerOptions {
  int64_t dim_feedforward = 2048;
  double dropout = 0.1;
  std::string activation = "relu";  // relu | gelu
  double layer_norm_eps = 1e-5;
  // Pre-norm (x + f(norm(x)), Xiong et al. 2020) is hpdl's default: it trains
  // without warm-up. false: PyTorch's default post-norm, norm(x + f(x)).
  bool norm_first = true;
  bool causal = false;
  uint64_t seed = 0;  // the dropout streams
};

// One encoder layer: self-attention and a feed-forward block linear1 ->
// activation -> dropout -> linear2, each a residual branch with dropout and a
// LayerNorm (before the branch when norm_first, after the sum otherwise).
// x [N, T, E] -> [N, T, E].
class TransformerEncoderLayer : public Module {
 public:
  TransformerEncoderLayer(int64_t d_model, int64_t nhead, const TransformerEncoderLayerOptions& options = {},
                          Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  // attn_mask and key_padding_mask as MultiheadAttention takes them (torch's src_mask, src_key_padding_mask).
  Tensor forward(const Tensor& x, const Tensor& attn_mask, const Tensor& key_padding_mask = Tensor());
  std::string type_name() const override { return "TransformerEncoderLayer"; }

  std::shared_ptr<MultiheadAttention> self_attn;
  std::shared_ptr<Linear> linear1, linear2;
  std::shared_ptr<LayerNorm> norm1, norm2;
  std::shared_ptr<Dropout> dropout, dropout1, dropout2;
  ModulePtr activation;
  TransformerEncoderLayerOptions options;
};

}  // namespace hpdl::nn
