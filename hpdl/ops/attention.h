// Scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You
// Need", eq. 1): softmax(q k^T / sqrt(E) + mask) v, over any leading batch
// dims (typically [N, heads, T, head_dim]). Built from matmul, softmax and
// dropout, so it is differentiable to any order and runs on the backend's
// batched GEMM and fused softmax.
#pragma once

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

namespace hpdl {

struct AttentionOptions {
  // Additive float mask broadcastable to [..., T, S] (0 = attend, -inf = do
  // not), as torch's float attn_mask; undefined = none.
  Tensor attn_mask;
  // Position t attends to positions s <= t only (T == S required).
  bool causal = false;
  // Dropout on the attention weights, applied when `training` (needs gen).
  double dropout_p = 0.0;
  bool training = false;
  Generator* gen = nullptr;
  // When set, receives the attention weights [..., T, S] (after the softmax,
  // before dropout), with their graph.
  Tensor* weights_out = nullptr;
};

// q [..., T, E], k [..., S, E], v [..., S, Ev] (same dtype and device; batch
// dims broadcast as in matmul) -> [..., T, Ev]. A row whose mask blocks every
// position gives NaN, as in PyTorch. Throws naming the shapes when the
// feature dims of q and k, or the lengths of k and v, differ, when a causal
// mask has T != S, or when dropout is requested without a generator.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options = {});

// The additive causal mask [T, T]: 0 on and below the diagonal, -inf above.
Tensor causal_mask(int64_t T, DType dtype = DType::f32, Device device = kCPU);

}  // namespace hpdl
