// Scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You
// Need", eq. 1): softmax(q k^T / sqrt(E) + mask) v, over any leading batch
// dims (typically [N, heads, T, head_dim]). Two paths:
//  - composed (the reference): matmul, softmax and dropout, differentiable to
//    any order, on the backend's batched GEMM and fused softmax;
//  - fused (CPU, float32/float64): FlashAttention-style blocked kernels
//    (hpdl/backend/cpu/flash_attention.h) that never form the [T, S] weights.
//    Its node's backward runs the fused kernel on a first-order pass; when a
//    graph of the backward is asked for (create_graph), it computes the same
//    gradients with differentiable ops instead (recomputing the weights from
//    q, k, v), so second derivatives work and equal the composed path's.
// `impl = automatic` takes the fused path when it applies: CPU, float32 or
// float64, q/k/v with equal batch dims, no attn_mask, no weights_out, no
// dropout in training (masks: none, causal, key_padding_mask). The environment
// variable HPDL_FUSED_ATTENTION=0 makes automatic mean composed (A/B timing).
#pragma once

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

namespace hpdl {

enum class AttentionImpl {
  automatic,  // fused where it applies, else composed
  composed,   // always the composed reference
  fused,      // the fused kernel; throws naming the reason where it does not apply
};

struct AttentionOptions {
  // Additive float mask broadcastable to [..., T, S] (0 = attend, -inf = do
  // not), as torch's float attn_mask; undefined = none.
  Tensor attn_mask;
  // Position t attends to positions s <= t only (T == S required).
  bool causal = false;
  // uint8 [N, S], nonzero = key s of batch entry n is ignored (PyTorch's
  // key_padding_mask with True = pad), N the first batch dim of the output;
  // broadcast over the other batch dims (heads) and the queries. Undefined = none.
  Tensor key_padding_mask;
  // Dropout on the attention weights, applied when `training` (needs gen).
  double dropout_p = 0.0;
  bool training = false;
  Generator* gen = nullptr;
  // When set, receives the attention weights [..., T, S] (after the softmax,
  // before dropout), with their graph.
  Tensor* weights_out = nullptr;
  AttentionImpl impl = AttentionImpl::automatic;
};

// q [..., T, E], k [..., S, E], v [..., S, Ev] (same dtype and device; batch
// dims broadcast as in matmul) -> [..., T, Ev]. A query row whose masks block
// every key (all -inf in attn_mask, or every key padded) gives NaN in its
// output row, on both paths, as PyTorch's math path and MultiheadAttention do;
// backward, that NaN reaches the gradients of q, k and v of the batch entry.
// Mask out such rows afterwards, or keep one key unpadded. Throws naming the
// shapes when the feature dims of q and k, or the lengths of k and v, differ,
// when a causal mask has T != S, when key_padding_mask is not uint8 [N, S],
// when dropout is requested without a generator, or when impl = fused and
// the fused path does not apply.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options = {});

// The additive causal mask [T, T]: 0 on and below the diagonal, -inf above.
Tensor causal_mask(int64_t T, DType dtype = DType::f32, Device device = kCPU);

}  // namespace hpdl
