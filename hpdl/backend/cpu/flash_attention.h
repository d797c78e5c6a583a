// Fused scaled dot-product attention on the CPU, FlashAttention style (Dao et
// al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with
// IO-Awareness", Algorithm 1, and the backward of its FlashAttention-2 form):
// the forward walks each block of query rows over blocks of keys with a running
// row maximum and sum (the "online softmax"), so the [T, S] probability matrix
// never exists; it saves the row log-sum-exp, from which the backward
// recomputes each row's probabilities. float32 and float64; OpenMP over
// (batch x heads) x query blocks forward, over batch x heads backward.
// Dimension letters: B batch (all leading dims flattened), T queries, S keys,
// E query/key features, Ev value features.
#pragma once

#include <cstdint>

namespace hpdl::cpu {

struct FlashAttentionArgs {
  int64_t B = 0, T = 0, S = 0, E = 0, Ev = 0;
  double scale = 1.0;  // the scores are (q * scale) . k
  bool causal = false;  // query t attends to keys s <= t (T == S)
  // Key padding [B / kp_group, S], nonzero = that key is ignored; batch entry b
  // uses row b / kp_group (kp_group = heads for [N, H] batches). Null: none.
  const uint8_t* key_padding = nullptr;
  int64_t kp_group = 1;
};

// q [B, T, E], k [B, S, E], v [B, S, Ev] row-major -> out [B, T, Ev] and
// lse [B, T] (log sum_s exp(score), -inf for a row whose keys are all masked;
// that row's output is NaN, as the composed softmax gives).
template <typename F>
void flash_attention_forward(const FlashAttentionArgs& a, const F* q, const F* k, const F* v, F* out, F* lse);

// Gradients of sum(dout * out) for the forward above: dq [B, T, E], dk [B, S, E],
// dv [B, S, Ev] (overwritten). out and lse are the forward's. Rows with lse =
// -inf make NaN reach dq, dk and dv of their batch entry, as the composed path.
template <typename F>
void flash_attention_backward(const FlashAttentionArgs& a, const F* q, const F* k, const F* v, const F* out,
                              const F* dout, const F* lse, F* dq, F* dk, F* dv);

}  // namespace hpdl::cpu
