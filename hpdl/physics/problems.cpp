// The model problems: each residual is the PDE moved to one side, so the exact
// solution makes it zero; boundary conditions reuse the exact solution as the
// Dirichlet data (it has the prescribed values on the boundary faces).
#include "hpdl/physics/problems.h"

#include <numbers>

#include "hpdl/ops/elementwise.h"

namespace hpdl::physics {
namespace {

constexpr double kPi = std::numbers::pi;

// Column d of x [N, D] as [N, 1].
Tensor column(const Tensor& x, int64_t d) { return x.slice(1, d, d + 1); }

}  // namespace

Problem poisson_1d() {
  Problem p;
  p.name = "poisson_1d";
  p.domain = Box{{0.0}, {1.0}};
  p.exact = [](const Tensor& x) { return sin(mul(column(x, 0), kPi)); };
  // -u'' - pi^2 sin(pi x) = 0  <=>  u'' + pi^2 sin(pi x) = 0
  p.residual = [](const Tensor& x, const Tensor& u) {
    return add(partial2(u, x, 0, 0), mul(sin(mul(column(x, 0), kPi)), kPi * kPi));
  };
  p.boundary = dirichlet(p.exact);
  return p;
}

Problem poisson_2d() {
  Problem p;
  p.name = "poisson_2d";
  p.domain = Box{{0.0, 0.0}, {1.0, 1.0}};
  p.exact = [](const Tensor& x) { return mul(sin(mul(column(x, 0), kPi)), sin(mul(column(x, 1), kPi))); };
  // lap u + 2 pi^2 sin(pi x) sin(pi y) = 0
  p.residual = [exact = p.exact](const Tensor& x, const Tensor& u) {
    return add(laplacian(u, x), mul(exact(x), 2 * kPi * kPi));
  };
  p.boundary = dirichlet(p.exact);
  return p;
}

Problem heat_1d(double nu, double t_end) {
  HPDL_CHECK(nu > 0 && t_end > 0, "physics::heat_1d: nu ({}) and t_end ({}) must be positive", nu, t_end);
  Problem p;
  p.name = "heat_1d";
  p.domain = Box{{0.0, 0.0}, {1.0, t_end}};
  p.boundary_faces = {0, 1, 2};  // x = 0, x = 1, t = 0
  p.exact = [nu](const Tensor& x) {
    return mul(exp(mul(column(x, 1), -nu * kPi * kPi)), sin(mul(column(x, 0), kPi)));
  };
  // u_t - nu u_xx = 0, with one first-order pass shared by both terms.
  p.residual = [nu](const Tensor& x, const Tensor& u) {
    Tensor du = gradient(u, x);                                  // [N, 2]: (u_x, u_t)
    Tensor u_t = du.slice(1, 1, 2);                              // [N, 1]
    Tensor u_xx = gradient(du.select(1, 0), x).slice(1, 0, 1);  // d(u_x)/dx, [N, 1]
    return sub(u_t, mul(u_xx, nu));
  };
  p.boundary = dirichlet(p.exact);
  return p;
}

}  // namespace hpdl::physics
