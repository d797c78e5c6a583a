// Physics-informed neural networks (Raissi, Perdikaris & Karniadakis 2019,
// "Physics-informed neural networks", J. Comput. Phys. 378): a network u(x)
// is trained so that a PDE residual r(x, u) vanishes at interior collocation
// points and a boundary residual b(x, u) vanishes on the boundary:
//
//   loss = mean_i r(x_i, u)^2 + boundary_weight * mean_j b(x_j, u)^2
//
// The residuals take input derivatives with physics/derivatives.h, through
// higher-order autograd, so the loss backpropagates into the weights. Every op
// used by the residual and the network must support double backward (the
// elementwise ops, linear, matmul, conv2d, conv_transpose2d and max/avg
// pooling do; batch/layer norm and the RNNs are first-order only).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"
#include "hpdl/nn/layers.h"
#include "hpdl/physics/derivatives.h"
#include "hpdl/physics/domain.h"

namespace hpdl::physics {

// r(x, u): x [N, D] requires grad, u = model(x) [N, 1]; returns [N, 1] (or [N]),
// zero where u solves the equation.
using Residual = std::function<Tensor(const Tensor& x, const Tensor& u)>;
// A known function of the inputs, x [N, D] -> [N, 1] (boundary data, exact solution).
using Field = std::function<Tensor(const Tensor& x)>;

// The Dirichlet condition u = g on the boundary, as the residual u - g(x).
Residual dirichlet(Field g);

struct Problem {
  std::string name;
  Box domain;
  Residual residual;                    // the PDE, at interior points
  Residual boundary;                    // the boundary (and initial) conditions
  std::vector<int64_t> boundary_faces;  // faces of `domain` where `boundary` holds; empty: all
  Field exact;                          // the known solution, when there is one (for errors)
};

struct PinnOptions {
  int64_t interior_points = 256;  // collocation points inside the domain
  int64_t boundary_points = 64;   // points on the boundary faces
  int64_t steps = 2000;           // Adam steps
  double lr = 1e-3;
  double boundary_weight = 1.0;
  int64_t resample_every = 0;     // draw new collocation points every k steps; 0 keeps the first draw
  uint64_t seed = 0;              // for the collocation points
  int64_t log_every = 0;          // call on_log every k steps (and after the last); 0: never
  // Optional L-BFGS refinement after Adam (see lbfgs_minimize), on the
  // collocation points of the last Adam step: at most this many iterations.
  int64_t lbfgs_iterations = 0;
};

// One evaluation of the loss.
struct PinnLoss {
  Tensor total;                 // scalar, differentiable in the model's parameters
  double residual_mse = 0;      // mean r^2
  double boundary_mse = 0;      // mean b^2
};

struct PinnLog {
  int64_t step = 0;  // Adam steps done, then Adam steps + L-BFGS iterations done
  double loss = 0, residual_mse = 0, boundary_mse = 0;
};

struct PinnResult {
  PinnLog last;                  // the loss at the final parameters
  std::vector<PinnLog> history;  // every log_every steps, when log_every > 0
};

// A fully connected tanh network in -> hidden... -> out (Linear, Tanh, ...,
// Linear), Xavier-initialised from `gen` with zero biases, in `dtype`.
std::shared_ptr<nn::Sequential> make_mlp(int64_t in, const std::vector<int64_t>& hidden, int64_t out,
                                         Generator& gen, DType dtype = DType::f32);

// The loss above for the given points (x_interior [N, D], x_boundary [M, D],
// the model's dtype; requires_grad is set on copies here). Throws hpdl::Error
// when the problem lacks a residual or boundary condition, the points do not
// have the domain's D columns, or a residual's shape is not [N] / [N, 1].
PinnLoss pinn_loss(nn::Module& model, const Problem& problem, const Tensor& x_interior, const Tensor& x_boundary,
                   double boundary_weight = 1.0);

// Trains `model` with Adam (AdamW without weight decay) on `problem`, then
// with L-BFGS when options.lbfgs_iterations > 0.
// Collocation points come from options.seed, so a run is reproducible given
// the model's initial weights. `on_log` (optional) sees each log entry.
PinnResult train_pinn(nn::Module& model, const Problem& problem, const PinnOptions& options,
                      const std::function<void(const PinnLog&)>& on_log = {});

struct LbfgsOptions {
  int64_t max_iterations = 500;
  int64_t history = 10;         // (s, y) pairs kept
  double gradient_tol = 1e-9;   // stop when max |g| falls below
  double change_tol = 1e-15;    // stop when |f_old - f| <= change_tol * max(1, |f|)
};

struct LbfgsResult {
  int64_t iterations = 0;
  int64_t evaluations = 0;  // calls of the objective
  double loss = 0;          // at the final parameters
};

// Minimises f over `params` in place with L-BFGS (Liu & Nocedal 1989, "On the
// limited memory BFGS method for large scale optimization"): the two-loop
// recursion for the direction and a backtracking line search on the Armijo
// condition. `f` computes a scalar loss from the current parameter values; its
// gradient comes from backward. Arithmetic on the flattened parameters is in
// double. Stops early when the gradient or the change of f is below tolerance,
// or the line search finds no decrease. `on_iteration` (optional) sees the
// iteration number and the loss after it.
LbfgsResult lbfgs_minimize(const std::vector<Tensor>& params, const std::function<Tensor()>& f,
                           const LbfgsOptions& options = {},
                           const std::function<void(int64_t, double)>& on_iteration = {});

// ||u - u*|| / ||u*|| over the points x [N, D], with u = model(x) and
// u* = exact(x); throws when exact is empty or ||u*|| is zero.
double relative_l2_error(nn::Module& model, const Tensor& x, const Field& exact);

}  // namespace hpdl::physics
