// Input derivatives for physics-informed losses. Every helper is one or two
// calls of hpdl::grad with ones as the output gradient: since u_i depends on
// row x_i only, the vector-Jacobian product with ones is the per-row gradient.
#include "hpdl/physics/derivatives.h"

#include <vector>

#include "hpdl/autograd/engine.h"
#include "hpdl/core/shape.h"
#include "hpdl/ops/elementwise.h"

namespace hpdl::physics {
namespace {

void check_field(const char* fn, const Tensor& u, const Tensor& x) {
  HPDL_CHECK(x.defined() && u.defined(), "physics::{}: u and x must be defined tensors", fn);
  HPDL_CHECK(x.ndim() == 2, "physics::{}: x must be [N, D] (one point per row), got {}", fn, shape_str(x.shape()));
  HPDL_CHECK(dtype_is_float(x.dtype()), "physics::{}: x must be floating point, got {}", fn, dtype_name(x.dtype()));
  HPDL_CHECK(x.requires_grad(), "physics::{}: x {} does not require grad; call x.set_requires_grad() before "
             "evaluating the network on it", fn, shape_str(x.shape()));
  const bool column = u.ndim() == 1 || (u.ndim() == 2 && u.dim(1) == 1);
  HPDL_CHECK(column && u.dim(0) == x.dim(0), "physics::{}: u must be [N] or [N, 1] with N = {} rows of x {}, got {}",
             fn, x.dim(0), shape_str(x.shape()), shape_str(u.shape()));
}

void check_axis(const char* fn, const Tensor& x, int64_t axis) {
  HPDL_CHECK(axis >= 0 && axis < x.dim(1), "physics::{}: axis {} out of range for x {} with {} coordinates", fn, axis,
             shape_str(x.shape()), x.dim(1));
}

// d(sum_i y_i)/dx for any y computed from x; undefined when y does not depend on x.
Tensor vjp_ones(const Tensor& y, const Tensor& x, bool create_graph) {
  if (!y.requires_grad()) return Tensor();
  Tensor ones = Tensor::ones(y.shape(), y.dtype(), y.device());
  return grad({y}, {x}, {ones}, /*retain_graph=*/true, create_graph, /*allow_unused=*/true)[0];
}

}  // namespace

Tensor gradient(const Tensor& u, const Tensor& x, bool create_graph) {
  check_field("gradient", u, x);
  Tensor dx = vjp_ones(u, x, create_graph);
  HPDL_CHECK(dx.defined(), "physics::gradient: u {} does not depend on x {} (was u computed from a detached copy "
             "of x, or under NoGradGuard?)", shape_str(u.shape()), shape_str(x.shape()));
  return dx;
}

Tensor partial(const Tensor& u, const Tensor& x, int64_t axis, bool create_graph) {
  check_field("partial", u, x);
  check_axis("partial", x, axis);
  return gradient(u, x, create_graph).select(1, axis).reshape(u.shape());
}

Tensor partial2(const Tensor& u, const Tensor& x, int64_t a, int64_t b, bool create_graph) {
  check_field("partial2", u, x);
  check_axis("partial2", x, a);
  check_axis("partial2", x, b);
  // The first derivative must keep its graph to be differentiated again.
  Tensor du_da = gradient(u, x, /*create_graph=*/true).select(1, a);  // [N]
  Tensor d2 = vjp_ones(du_da, x, create_graph);                      // [N, D]
  if (!d2.defined()) return Tensor::zeros(u.shape(), u.dtype(), u.device());
  return d2.select(1, b).reshape(u.shape());
}

Tensor laplacian(const Tensor& u, const Tensor& x, const Tensor& dx, bool create_graph) {
  check_field("laplacian", u, x);
  Tensor g = dx.defined() ? dx : gradient(u, x, /*create_graph=*/true);
  HPDL_CHECK(g.shape() == x.shape(), "physics::laplacian: dx {} must be gradient(u, x), shaped like x {}",
             shape_str(g.shape()), shape_str(x.shape()));
  Tensor lap;
  for (int64_t d = 0; d < x.dim(1); ++d) {
    Tensor d2 = vjp_ones(g.select(1, d), x, create_graph);
    if (!d2.defined()) continue;  // u is linear in x_d
    Tensor term = d2.select(1, d);
    lap = lap.defined() ? add(lap, term) : term;
  }
  if (!lap.defined()) return Tensor::zeros(u.shape(), u.dtype(), u.device());
  return lap.reshape(u.shape());
}

}  // namespace hpdl::physics
