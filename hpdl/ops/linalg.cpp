// Matrix products: forward on the backend's GEMM, backward as two more GEMMs.
#include "hpdl/ops/linalg.h"

#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/autocast.h"
#include "hpdl/ops/op_impl.h"
#include "hpdl/ops/reduce.h"

namespace hpdl {

Tensor sum_to(const Tensor& g, const Shape& shape);

namespace {

// A GEMM operand as stored: a contiguous tensor, or the transpose of one
// (then `trans` is set and no copy is made), or else a contiguous copy.
Tensor gemm_operand(const Tensor& t, bool& trans) {
  trans = false;
  if (t.is_contiguous()) return t;
  Tensor tt = t.transpose(-2, -1);
  if (tt.is_contiguous()) {
    trans = true;
    return tt.detach();
  }
  return t.contiguous();
}

// c = a @ b on rank-2/3 operands (a batch of 1 broadcasts); no graph.
Tensor gemm(const Tensor& a, const Tensor& b) {
  NoGradGuard no_graph;
  bool ta, tb;
  Tensor ac = gemm_operand(a, ta), bc = gemm_operand(b, tb);
  const int64_t M = a.dim(-2), N = b.dim(-1), K = a.dim(-1);
  const int64_t B = std::max(a.ndim() == 3 ? a.dim(0) : 1, b.ndim() == 3 ? b.dim(0) : 1);
  Shape cs = (a.ndim() == 3 || b.ndim() == 3) ? Shape{B, M, N} : Shape{M, N};
  Tensor c = Tensor::empty(cs, a.dtype(), a.device());
  if (c.numel() == 0) return c;
  if (K == 0) {
    c.fill_(0);
    return c;
  }
  // CPU under autocast: bfloat16 operands in the kernel (design decision 69).
  CpuComputeScope compute(detail::autocast_cpu_compute(a));
  detail::pick(a, OpKind::matmul).matmul(ac, bc, c, ta, tb, 1.0, 0.0);
  return c;
}

// t [..batch, R, C] as a rank-3 GEMM operand [prod(batch_to), R, C] for the
// broadcast batch shape `batch_to`. A batch of one element becomes rank 2 (the
// GEMM broadcasts it); a row-major tensor or the transpose of one is viewed,
// not copied; only a batch that must be broadcast (some dims 1) is materialized.
Tensor batch_operand(const Tensor& t, const Shape& batch_to) {
  const int64_t R = t.dim(-2), C = t.dim(-1);
  int64_t own = 1, total = 1;
  for (int i = 0; i + 2 < t.ndim(); ++i) own *= t.dim(i);
  for (int64_t d : batch_to) total *= d;
  if (own == 1) return t.ndim() == 2 ? t : t.reshape({R, C});
  Tensor full = t;
  if (own != total || t.ndim() - 2 != static_cast<int>(batch_to.size())) {
    Shape s = batch_to;
    s.push_back(R);
    s.push_back(C);
    full = t.expand(s).contiguous();
  }
  Tensor tt = full.transpose(-2, -1);
  if (!full.is_contiguous() && tt.is_contiguous()) return tt.reshape({total, C, R}).transpose(-2, -1);
  return full.reshape({total, R, C});
}

// c [..batch, M, N] = a [..batch_a, M, K] @ b [..batch_b, K, N] with the batch
// dims broadcast NumPy-style; no graph.
Tensor gemm_batched(const Tensor& a, const Tensor& b) {
  NoGradGuard no_graph;
  const Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = broadcast_shapes(ba, bb, "matmul");
  Tensor c = gemm(batch_operand(a.detach(), batch), batch_operand(b.detach(), batch));
  Shape cs = batch;
  cs.push_back(a.dim(-2));
  cs.push_back(b.dim(-1));
  return c.reshape(cs);
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_defined(a, "matmul", "a");
  detail::check_defined(b, "matmul", "b");
  if (autocast_applies(a) || autocast_applies(b)) return matmul(autocast_cast(a), autocast_cast(b));
  detail::check_same(a, b, "matmul");
  detail::check_float(a, "matmul");
  HPDL_CHECK(a.ndim() >= 2 && b.ndim() >= 2, "matmul: operands must have at least 2 dims, got {} and {}",
             shape_str(a.shape()), shape_str(b.shape()));
  HPDL_CHECK(a.dim(-1) == b.dim(-2), "matmul: inner dimensions differ, {} @ {}", shape_str(a.shape()),
             shape_str(b.shape()));
  const bool rank3 = a.ndim() <= 3 && b.ndim() <= 3 &&
                     (a.ndim() < 3 || b.ndim() < 3 || a.dim(0) == b.dim(0) || a.dim(0) == 1 || b.dim(0) == 1);
  // The batch dims must broadcast; broadcast_shapes names both shapes when they do not.
  Tensor out = rank3 ? gemm(a, b) : gemm_batched(a, b);
  if (needs_grad({&a, &b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    // The backward's matmuls compute as the forward did (autocast on the CPU, design decision 69).
    const DType cd = detail::autocast_cpu_compute(a);
    Shape sa = a.shape(), sb = b.shape();
    // Each operand is saved only when the other one's gradient reads it.
    SavedTensor saved_a(gb ? a : Tensor(), "input 'a'"), saved_b(ga ? b : Tensor(), "input 'b'");
    record("matmul", {a, b}, {&out}, [saved_a, saved_b, sa, sb, ga, gb, cd](const std::vector<Tensor>& g) {
      AutocastScope autocast(cd, cd != DType::f32);
      // out [.., M, N] = a [.., M, K] @ b [.., K, N]
      // da [.., M, K] = g [.., M, N] @ b^T [.., N, K];  db [.., K, N] = a^T [.., K, M] @ g [.., M, N]
      // (summed over a broadcast batch). Built from matmul/transpose: differentiable again.
      Tensor da, db;
      if (ga) da = sum_to(matmul(g[0], saved_b.get().transpose(-2, -1)), sa);
      if (gb) db = sum_to(matmul(saved_a.get().transpose(-2, -1), g[0]), sb);
      return std::vector<Tensor>{da, db};
    });
  }
  return out;
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  HPDL_CHECK(a.ndim() == 3 && b.ndim() == 3, "bmm: operands must be 3-D, got {} and {}", shape_str(a.shape()),
             shape_str(b.shape()));
  return matmul(a, b);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  detail::check_defined(x, "linear", "input");
  detail::check_defined(w, "linear", "weight");
  if (autocast_applies(x) || autocast_applies(w)) return linear(autocast_cast(x), autocast_cast(w), autocast_cast(b));
  detail::check_ndim(w, 2, "linear", "weight");
  HPDL_CHECK(x.ndim() >= 1 && x.dim(-1) == w.dim(1), "linear: input {} does not match weight {} (in_features {})",
             shape_str(x.shape()), shape_str(w.shape()), w.dim(1));
  HPDL_CHECK(!b.defined() || (b.ndim() == 1 && b.dim(0) == w.dim(0)), "linear: bias {} for weight {}",
             shape_str(b.shape()), shape_str(w.shape()));
  Shape out_shape = x.shape();
  out_shape.back() = w.dim(0);
  Tensor x2 = x.ndim() == 2 ? x : x.reshape({-1, x.dim(-1)});
  detail::check_same(x2, w, "linear");
  // y [M, out] = x [M, in] @ w^T [in, out] (+ b): w^T is a transposed view, not a copy.
  Tensor y = gemm(x2, w.t());
  if (b.defined()) {
    detail::check_same(y, b, "linear");
    detail::pick(y, OpKind::binary).binary(BinaryOp::add, y, b, y, 0);  // in place, broadcast over rows
  }
  if (needs_grad({&x2, &w, &b})) {
    const bool gx = x2.requires_grad(), gw = w.requires_grad(), gb = b.defined() && b.requires_grad();
    const DType cd = detail::autocast_cpu_compute(x2);  // as in matmul
    // dx reads the weight, dw the input: each saved only when that gradient is wanted.
    SavedTensor saved_x(gw ? x2 : Tensor(), "input 'x'"), saved_w(gx ? w : Tensor(), "weight");
    record("linear", {x2, w, b}, {&y}, [saved_x, saved_w, gx, gw, gb, cd](const std::vector<Tensor>& g) {
      AutocastScope autocast(cd, cd != DType::f32);
      // dx [M, in] = g [M, out] @ w [out, in]; dw [out, in] = g^T [out, M] @ x [M, in]
      // (contiguous, so the weight's gradient needs no transpose copy); db [out] = sum_M g.
      // Built from differentiable ops: higher-order gradients flow through linear.
      return std::vector<Tensor>{gx ? matmul(g[0], saved_w.get()) : Tensor(),
                                 gw ? matmul(g[0].t(), saved_x.get()) : Tensor(),
                                 gb ? sum(g[0], {0}) : Tensor()};
    });
  }
  return x.ndim() == 2 ? y : y.reshape(out_shape);
}

}  // namespace hpdl
