// Scaled dot-product attention from differentiable ops. q is scaled before the
// product (T*E multiplies instead of T*S); the mask is added to the scores, so
// its -inf entries become exact zeros after the softmax.
#include "hpdl/ops/attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "hpdl/ops/activation.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/linalg.h"
#include "hpdl/ops/op_impl.h"

namespace hpdl {

Tensor causal_mask(int64_t T, DType dtype, Device device) {
  HPDL_CHECK(T > 0, "causal_mask: length must be > 0, got {}", T);
  std::vector<double> m(static_cast<size_t>(T * T), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = t + 1; s < T; ++s) m[static_cast<size_t>(t * T + s)] = -std::numeric_limits<double>::infinity();
  return Tensor::from_vector(m, {T, T}).to(dtype).to(device);
}

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  const char* op = "scaled_dot_product_attention";
  detail::check_defined(q, op, "q");
  detail::check_defined(k, op, "k");
  detail::check_defined(v, op, "v");
  detail::check_same(q, k, op);
  detail::check_same(q, v, op);
  HPDL_CHECK(q.ndim() >= 2 && k.ndim() >= 2 && v.ndim() >= 2, "{}: q, k, v must have at least 2 dims, got {}, {}, {}",
             op, shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  HPDL_CHECK(q.dim(-1) == k.dim(-1), "{}: q {} and k {} must have the same feature size (last dim)", op,
             shape_str(q.shape()), shape_str(k.shape()));
  HPDL_CHECK(k.dim(-2) == v.dim(-2), "{}: k {} and v {} must have the same length (dim -2)", op, shape_str(k.shape()),
             shape_str(v.shape()));
  HPDL_CHECK(!o.causal || q.dim(-2) == k.dim(-2), "{}: a causal mask needs as many queries as keys, got q {} and k {}",
             op, shape_str(q.shape()), shape_str(k.shape()));
  HPDL_CHECK(o.dropout_p >= 0 && o.dropout_p < 1, "{}: dropout_p must be in [0, 1), got {}", op, o.dropout_p);
  const bool drop = o.training && o.dropout_p > 0;
  HPDL_CHECK(!drop || o.gen != nullptr, "{}: dropout_p = {} in training needs a generator", op, o.dropout_p);
  if (o.attn_mask.defined()) {
    detail::check_same(q, o.attn_mask, op);
    HPDL_CHECK(o.attn_mask.ndim() >= 2 && o.attn_mask.dim(-2) == q.dim(-2) && o.attn_mask.dim(-1) == k.dim(-2),
               "{}: attn_mask {} must end in [T, S] = [{}, {}] (q {}, k {})", op, shape_str(o.attn_mask.shape()),
               q.dim(-2), k.dim(-2), shape_str(q.shape()), shape_str(k.shape()));
  }
  // scores [..., T, S] = (q / sqrt(E)) [..., T, E] @ k^T [..., E, S]
  Tensor scores = matmul(mul(q, 1.0 / std::sqrt(static_cast<double>(q.dim(-1)))), k.transpose(-2, -1));
  if (o.attn_mask.defined()) scores = add(scores, o.attn_mask);
  if (o.causal) scores = add(scores, causal_mask(q.dim(-2), scores.dtype(), scores.device()));
  Tensor w = softmax(scores, -1);
  if (o.weights_out) *o.weights_out = w;
  if (drop) w = dropout(w, o.dropout_p, true, *o.gen);
  // out [..., T, Ev] = w [..., T, S] @ v [..., S, Ev]
  return matmul(w, v);
}

}  // namespace hpdl
