// softmax, log_softmax and dropout. The softmax pair runs the backend's fused
// kernels forward; backward uses the fused kernel on a first-order pass and,
// when a graph of the backward is requested (create_graph), the same formula
// written with differentiable ops, so both are differentiable to any order:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log_softmax: dx = dy - exp(y) * sum(dy)
// Dropout (Srivastava et al. 2014, "inverted" scaling) multiplies by a mask.
#include "hpdl/ops/activation.h"

#include "hpdl/ops/checkpoint.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"
#include "hpdl/ops/reduce.h"

namespace hpdl {
namespace {

Tensor softmax_impl(const Tensor& x, int64_t axis, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  if (x.dtype() == DType::bf16) return softmax_impl(x.to(DType::f32), axis, log);  // probabilities in float32
  HPDL_CHECK(x.ndim() >= 1, "{}: input must have at least one dim, got a scalar", op);
  const int a = normalize_axis(axis, x.ndim(), op);
  Tensor xc = x.contiguous().detach();
  Tensor y = detail::empty_like(xc);
  if (y.numel() > 0) detail::pick(x, OpKind::softmax).softmax_forward(xc, y, a, log);
  if (needs_grad({&x})) {
    record(op, {x}, {&y}, [saved_x = SavedTensor(x, "input 'x'"), saved_y = SavedTensor(y.detach(), "output"), a,
                           log](const std::vector<Tensor>& g) {
      if (!grad_enabled()) {
        const Tensor& yd = saved_y.get();
        Tensor dy = g[0].contiguous();
        Tensor dx = detail::empty_like(yd);
        detail::pick(yd, OpKind::softmax).softmax_backward(yd, dy, dx, a, log);
        return std::vector<Tensor>{dx};
      }
      // create_graph: recompute y from x so the graph reaches x.
      Tensor yy = softmax_impl(saved_x.get(), a, log);
      if (log) return std::vector<Tensor>{sub(g[0], mul(exp(yy), sum(g[0], {a}, true)))};
      return std::vector<Tensor>{mul(yy, sub(g[0], sum(mul(g[0], yy), {a}, true)))};
    });
  }
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t axis) { return softmax_impl(x, axis, false); }
Tensor log_softmax(const Tensor& x, int64_t axis) { return softmax_impl(x, axis, true); }

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  detail::check_defined(x, "dropout", "input");
  detail::check_float(x, "dropout");
  HPDL_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got {}", p);
  if (!training || p == 0.0) return x;
  if (p == 1.0) return mul(x, 0.0);
  // keep = u >= p with u uniform in [0, 1) from (seed, counter): the same mask
  // for any number of threads. Scaled by 1/(1-p) so the expectation is x.
  checkpoint_note_generator(gen);  // a checkpointed segment replays this draw in its recompute
  Tensor mask;
  {
    NoGradGuard ng;
    Tensor u = Tensor::rand(x.shape(), gen, 0.0, 1.0, x.dtype()).to(x.device());
    mask = mul(ge(u, Tensor::scalar(p, x.dtype(), x.device())), 1.0 / (1.0 - p));
  }
  return mul(x, mask);
}

}  // namespace hpdl
