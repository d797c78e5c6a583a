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
  detail::pick(a, OpKind::matmul).matmul(ac, bc, c, ta, tb, 1.0, 0.0);
  return c;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_defined(a, "matmul", "a");
  detail::check_defined(b, "matmul", "b");
  if (autocast_applies(a) || autocast_applies(b)) return matmul(autocast_cast(a), autocast_cast(b));
  detail::check_same(a, b, "matmul");
  detail::check_float(a, "matmul");
  HPDL_CHECK((a.ndim() == 2 || a.ndim() == 3) && (b.ndim() == 2 || b.ndim() == 3),
             "matmul: operands must be 2-D or 3-D, got {} and {}", shape_str(a.shape()), shape_str(b.shape()));
  HPDL_CHECK(a.dim(-1) == b.dim(-2), "matmul: inner dimensions differ, {} @ {}", shape_str(a.shape()),
             shape_str(b.shape()));
  if (a.ndim() == 3 && b.ndim() == 3)
    HPDL_CHECK(a.dim(0) == b.dim(0) || a.dim(0) == 1 || b.dim(0) == 1, "matmul: batch sizes differ, {} @ {}",
               shape_str(a.shape()), shape_str(b.shape()));
  Tensor out = gemm(a, b);
  if (needs_grad({&a, &b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    record("matmul", {a, b}, {&out}, [a, b, ga, gb](const std::vector<Tensor>& g) {
      // out [.., M, N] = a [.., M, K] @ b [.., K, N]
      // da [.., M, K] = g [.., M, N] @ b^T [.., N, K];  db [.., K, N] = a^T [.., K, M] @ g [.., M, N]
      // (summed over a broadcast batch). Built from matmul/transpose: differentiable again.
      Tensor da, db;
      if (ga) da = sum_to(matmul(g[0], b.transpose(-2, -1)), a.shape());
      if (gb) db = sum_to(matmul(a.transpose(-2, -1), g[0]), b.shape());
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
    record("linear", {x2, w, b}, {&y}, [x2, w, gx, gw, gb](const std::vector<Tensor>& g) {
      // dx [M, in] = g [M, out] @ w [out, in]; dw [out, in] = g^T [out, M] @ x [M, in]
      // (contiguous, so the weight's gradient needs no transpose copy); db [out] = sum_M g.
      // Built from differentiable ops: higher-order gradients flow through linear.
      return std::vector<Tensor>{gx ? matmul(g[0], w) : Tensor(), gw ? matmul(g[0].t(), x2) : Tensor(),
                                 gb ? sum(g[0], {0}) : Tensor()};
    });
  }
  return x.ndim() == 2 ? y : y.reshape(out_shape);
}

}  // namespace hpdl
