// Model problems with known closed-form solutions, for PINN examples and
// tests. Each returns a complete Problem (domain, PDE residual, Dirichlet
// boundary/initial condition, exact solution); x columns are the coordinates
// in the order given, u is [N, 1].
#pragma once

#include "hpdl/physics/pinn.h"

namespace hpdl::physics {

// -u'' = pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0.   Solution u = sin(pi x).
Problem poisson_1d();

// -(u_xx + u_yy) = 2 pi^2 sin(pi x) sin(pi y) on [0, 1]^2, u = 0 on the
// boundary.   Solution u = sin(pi x) sin(pi y).
Problem poisson_2d();

// u_t = nu u_xx on x in [0, 1], t in [0, t_end] (columns x, t), u(0, t) =
// u(1, t) = 0, u(x, 0) = sin(pi x); the boundary is faces 0, 1, 2 (no
// condition at t = t_end).   Solution u = exp(-nu pi^2 t) sin(pi x).
// Throws unless nu > 0 and t_end > 0.
Problem heat_1d(double nu = 0.1, double t_end = 1.0);

}  // namespace hpdl::physics
