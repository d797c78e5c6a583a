// Scaled dot-product attention: argument checks, the composed path from
// differentiable ops, and the fused path's node over the CPU kernels. q is
// scaled before the product (T*E multiplies instead of T*S); the masks are
// added to the scores, so their -inf entries become exact zeros after the
// softmax (a key padding mask becomes an additive [N, 1, .., 1, S] mask).
#include "hpdl/ops/attention.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "hpdl/backend/cpu/flash_attention.h"
#include "hpdl/ops/activation.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/linalg.h"
#include "hpdl/ops/op_impl.h"
#include "hpdl/ops/reduce.h"

namespace hpdl {

Tensor causal_mask(int64_t T, DType dtype, Device device) {
  HPDL_CHECK(T > 0, "causal_mask: length must be > 0, got {}", T);
  std::vector<double> m(static_cast<size_t>(T * T), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = t + 1; s < T; ++s) m[static_cast<size_t>(t * T + s)] = -std::numeric_limits<double>::infinity();
  return Tensor::from_vector(m, {T, T}).to(dtype).to(device);
}

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

// HPDL_FUSED_ATTENTION=0 sends impl = automatic to the composed path (for A/B timing).
const bool g_fused_attention = [] {
  const char* e = std::getenv("HPDL_FUSED_ATTENTION");
  return !(e && std::string(e) == "0");
}();

Shape batch_dims(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

// The key padding mask as an additive mask [N, 1, .., 1, S] (batch_ndim - 1
// ones for the other batch dims, one for the queries): -inf where padded.
Tensor key_padding_additive(const Tensor& kpm, size_t batch_ndim, DType dtype, Device device) {
  const std::vector<uint8_t> m = kpm.to_vector<uint8_t>();
  std::vector<double> add(m.size());
  for (size_t i = 0; i < m.size(); ++i) add[i] = m[i] ? -std::numeric_limits<double>::infinity() : 0.0;
  Shape shape{kpm.dim(0)};
  for (size_t i = 1; i < batch_ndim; ++i) shape.push_back(1);
  shape.push_back(1);
  shape.push_back(kpm.dim(1));
  return Tensor::from_vector(add, shape).to(dtype).to(device);
}

// scores [..., T, S] = (q / sqrt(E)) [..., T, E] @ k^T [..., E, S] + the masks. Differentiable.
Tensor attention_scores(const Tensor& q, const Tensor& k, const Tensor& attn_mask, const Tensor& kp_add, bool causal) {
  Tensor scores = matmul(mul(q, 1.0 / std::sqrt(static_cast<double>(q.dim(-1)))), k.transpose(-2, -1));
  if (attn_mask.defined()) scores = add(scores, attn_mask);
  if (kp_add.defined()) scores = add(scores, kp_add);
  if (causal) scores = add(scores, causal_mask(q.dim(-2), scores.dtype(), scores.device()));
  return scores;
}

// The reason the fused path cannot compute this call, or "" when it can.
std::string fused_blocker(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o, bool drop) {
  if (!q.device().is_cpu()) return "it runs on the CPU only, got " + q.device().str();
  if (q.dtype() != DType::f32 && q.dtype() != DType::f64)
    return std::string("it takes float32 or float64, got ") + dtype_name(q.dtype());
  if (batch_dims(q) != batch_dims(k) || batch_dims(q) != batch_dims(v))
    return "q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + " and v " + shape_str(v.shape()) +
           " must have equal batch dims (no broadcasting)";
  if (o.attn_mask.defined()) return "an additive attn_mask needs the composed path (use causal or key_padding_mask)";
  if (o.weights_out) return "weights_out needs the weights, which the fused path never forms";
  if (drop) return "dropout in training needs the composed path";
  return "";
}

// Gradients (dq, dk, dv) of sum(dout * attention(q, k, v)) written with
// differentiable ops, the weights recomputed from q, k, v: the fused node's
// backward when create_graph asks for a graph of it.
//   P = softmax(scores)      dv = P^T dout       dP = dout v^T
//   dS = P (dP - rowsum(dP P)) / sqrt(E)   dq = dS k   dk = dS^T q
std::vector<Tensor> attention_backward_composed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                                                const Tensor& kp_add, bool causal) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.dim(-1)));
  Tensor p = softmax(attention_scores(q, k, Tensor(), kp_add, causal), -1);  // [..., T, S]
  Tensor dv = matmul(p.transpose(-2, -1), dout);                              // [..., S, Ev]
  Tensor dp = matmul(dout, v.transpose(-2, -1));                              // [..., T, S]
  Tensor ds = mul(mul(p, sub(dp, sum(mul(dp, p), {-1}, true))), scale);       // [..., T, S]
  Tensor dq = matmul(ds, k);                                                  // [..., T, E]
  Tensor dk = matmul(ds.transpose(-2, -1), q);                                // [..., S, E]
  return {dq, dk, dv};
}

template <typename F>
void run_forward(const cpu::FlashAttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                 Tensor& lse) {
  cpu::flash_attention_forward<F>(a, q.data<F>(), k.data<F>(), v.data<F>(), out.data<F>(), lse.data<F>());
}

template <typename F>
void run_backward(const cpu::FlashAttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                  const Tensor& out, const Tensor& dout, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv) {
  cpu::flash_attention_backward<F>(a, q.data<F>(), k.data<F>(), v.data<F>(), out.data<F>(), dout.data<F>(),
                                   lse.data<F>(), dq.data<F>(), dk.data<F>(), dv.data<F>());
}

// The fused path on checked arguments that it applies to.
Tensor attention_fused(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  const Shape batch = batch_dims(q);
  int64_t B = 1;
  for (int64_t d : batch) B *= d;
  Tensor qc = q.contiguous().detach(), kc = k.contiguous().detach(), vc = v.contiguous().detach();
  Tensor kp = o.key_padding_mask.defined() ? o.key_padding_mask.contiguous().detach() : Tensor();
  cpu::FlashAttentionArgs a;
  a.B = B;
  a.T = q.dim(-2);
  a.S = k.dim(-2);
  a.E = q.dim(-1);
  a.Ev = v.dim(-1);
  a.scale = 1.0 / std::sqrt(static_cast<double>(a.E));
  a.causal = o.causal;
  if (kp.defined()) {
    a.key_padding = kp.data<uint8_t>();
    a.kp_group = kp.dim(0) > 0 ? B / kp.dim(0) : 1;
  }
  Shape os = q.shape();
  os.back() = a.Ev;
  Tensor out = Tensor::empty(os, q.dtype());
  Tensor lse = Tensor::empty({B, a.T}, q.dtype());
  const bool f64 = q.dtype() == DType::f64;
  if (out.numel() > 0) f64 ? run_forward<double>(a, qc, kc, vc, out, lse) : run_forward<float>(a, qc, kc, vc, out, lse);
  if (needs_grad({&q, &k, &v})) {
    // q, k, v themselves for a recorded backward (their graph), their contiguous copies (the same
    // memory when already contiguous) for the fused one; lse is the node's own.
    record("scaled_dot_product_attention_fused", {q, k, v}, {&out},
           [saved_q = SavedTensor(q, "input 'q'"), saved_k = SavedTensor(k, "input 'k'"),
            saved_v = SavedTensor(v, "input 'v'"), saved_qc = SavedTensor(qc, "input 'q'"),
            saved_kc = SavedTensor(kc, "input 'k'"), saved_vc = SavedTensor(vc, "input 'v'"),
            saved_kp = SavedTensor(kp, "key_padding_mask"), saved_o = SavedTensor(out.detach(), "output"), lse, a,
            f64](const std::vector<Tensor>& g) {
             const Tensor& kp = saved_kp.get();
             if (grad_enabled()) {  // create_graph: the same gradients from differentiable ops
               const Tensor& q = saved_q.get();
               Tensor kp_add = kp.defined() ? key_padding_additive(kp, q.ndim() - 2, q.dtype(), q.device()) : Tensor();
               return attention_backward_composed(q, saved_k.get(), saved_v.get(), g[0], kp_add, a.causal);
             }
             const Tensor &qc = saved_qc.get(), &kc = saved_kc.get(), &vc = saved_vc.get(), &od = saved_o.get();
             Tensor dout = g[0].contiguous();
             Tensor dq = Tensor::empty(qc.shape(), qc.dtype()), dk = Tensor::empty(kc.shape(), kc.dtype()),
                    dv = Tensor::empty(vc.shape(), vc.dtype());
             if (dq.numel() + dk.numel() + dv.numel() > 0) {
               if (f64)
                 run_backward<double>(a, qc, kc, vc, od, dout, lse, dq, dk, dv);
               else
                 run_backward<float>(a, qc, kc, vc, od, dout, lse, dq, dk, dv);
             }
             return std::vector<Tensor>{dq, dk, dv};
           });
  }
  return out;
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& o) {
  const char* op = kOp;
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
  const Shape batch = broadcast_shapes(broadcast_shapes(batch_dims(q), batch_dims(k), op), batch_dims(v), op);
  if (o.key_padding_mask.defined()) {
    const Tensor& m = o.key_padding_mask;
    HPDL_CHECK(m.dtype() == DType::u8, "{}: key_padding_mask must be uint8 (nonzero = ignore the key), got {} {}", op,
               dtype_name(m.dtype()), shape_str(m.shape()));
    HPDL_CHECK(m.device() == q.device(), "{}: key_padding_mask {} is on {}, q on {}", op, shape_str(m.shape()),
               m.device().str(), q.device().str());
    HPDL_CHECK(!batch.empty() && m.ndim() == 2 && m.dim(0) == batch[0] && m.dim(1) == k.dim(-2),
               "{}: key_padding_mask {} must be [N, S] = [{}, {}] (N the first batch dim of q {} and k {})", op,
               shape_str(m.shape()), batch.empty() ? std::string("none") : std::to_string(batch[0]), k.dim(-2),
               shape_str(q.shape()), shape_str(k.shape()));
  }
  if (o.impl == AttentionImpl::fused || (o.impl == AttentionImpl::automatic && g_fused_attention)) {
    const std::string why = fused_blocker(q, k, v, o, drop);
    HPDL_CHECK(o.impl != AttentionImpl::fused || why.empty(), "{}: impl = fused does not apply to q {}: {}", op,
               shape_str(q.shape()), why);
    if (why.empty()) return attention_fused(q, k, v, o);
  }
  Tensor kp_add = o.key_padding_mask.defined()
                      ? key_padding_additive(o.key_padding_mask, batch.size(), q.dtype(), q.device())
                      : Tensor();
  Tensor w = softmax(attention_scores(q, k, o.attn_mask, kp_add, o.causal), -1);
  if (o.weights_out) *o.weights_out = w;
  if (drop) w = dropout(w, o.dropout_p, true, *o.gen);
  // out [..., T, Ev] = w [..., T, S] @ v [..., S, Ev]
  return matmul(w, v);
}

}  // namespace hpdl
