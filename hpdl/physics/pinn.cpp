// PINN loss and trainer. The loss evaluates the network on copies of the
// collocation points that require grad, so residuals can differentiate u with
// respect to x; backward of the total then reaches the weights through those
// (create_graph) derivatives.
#include "hpdl/physics/pinn.h"

#include <cmath>
#include <utility>

#include "hpdl/autograd/node.h"
#include "hpdl/nn/init.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/reduce.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::physics {
namespace {

DType model_dtype(const nn::Module& model) {
  auto params = model.parameters();
  HPDL_CHECK(!params.empty(), "physics: the model has no parameters to train");
  return params.front().dtype();
}

void check_points(const char* what, const Tensor& x, const Problem& problem, DType dtype) {
  HPDL_CHECK(x.defined() && x.ndim() == 2 && x.dim(0) > 0 && x.dim(1) == problem.domain.dims(),
             "physics::pinn_loss: {} points must be [N, {}] with N > 0 for the {}-D domain {} of problem '{}', "
             "got {}", what, problem.domain.dims(), problem.domain.dims(), problem.domain.str(), problem.name,
             x.defined() ? shape_str(x.shape()) : std::string("an undefined tensor"));
  HPDL_CHECK(x.dtype() == dtype, "physics::pinn_loss: {} points are {} but the model is {}; sample them in the "
             "model's dtype", what, dtype_name(x.dtype()), dtype_name(dtype));
}

// mean(r^2) of one residual, after checking it is one value per point.
Tensor mean_square(const char* what, const Tensor& r, int64_t n, const std::string& problem) {
  HPDL_CHECK(r.defined(), "physics::pinn_loss: the {} residual of problem '{}' returned an undefined tensor", what,
             problem);
  const bool column = r.ndim() == 1 || (r.ndim() == 2 && r.dim(1) == 1);
  HPDL_CHECK(column && r.dim(0) == n, "physics::pinn_loss: the {} residual of problem '{}' must be [{}] or [{}, 1] "
             "(one value per point), got {}", what, problem, n, n, shape_str(r.shape()));
  return mean(square(r));
}

}  // namespace

Residual dirichlet(Field g) {
  HPDL_CHECK(g != nullptr, "physics::dirichlet: the boundary value function is empty");
  return [g = std::move(g)](const Tensor& x, const Tensor& u) { return sub(u, g(x).reshape(u.shape())); };
}

std::shared_ptr<nn::Sequential> make_mlp(int64_t in, const std::vector<int64_t>& hidden, int64_t out,
                                         Generator& gen, DType dtype) {
  HPDL_CHECK(in > 0 && out > 0, "physics::make_mlp: in ({}) and out ({}) must be positive", in, out);
  auto net = std::make_shared<nn::Sequential>();
  int64_t width = in;
  auto add_linear = [&](int64_t to) {
    auto layer = net->push_back(std::make_shared<nn::Linear>(width, to, true, gen));
    // Xavier suits tanh (Glorot & Bengio 2010); zero biases keep u(x) centred at the start.
    nn::init::xavier_normal_(layer->weight, gen);
    nn::init::zeros_(layer->bias);
    width = to;
  };
  for (int64_t h : hidden) {
    HPDL_CHECK(h > 0, "physics::make_mlp: hidden width {} must be positive", h);
    add_linear(h);
    net->push_back(std::make_shared<nn::Tanh>());
  }
  add_linear(out);
  if (dtype != DType::f32) net->to(dtype);
  return net;
}

PinnLoss pinn_loss(nn::Module& model, const Problem& problem, const Tensor& x_interior, const Tensor& x_boundary,
                   double boundary_weight) {
  problem.domain.check();
  HPDL_CHECK(problem.residual != nullptr, "physics::pinn_loss: problem '{}' has no PDE residual", problem.name);
  HPDL_CHECK(problem.boundary != nullptr, "physics::pinn_loss: problem '{}' has no boundary condition (set "
             "Problem::boundary, e.g. to dirichlet(g))", problem.name);
  HPDL_CHECK(std::isfinite(boundary_weight) && boundary_weight >= 0,
             "physics::pinn_loss: boundary_weight {} must be finite and >= 0", boundary_weight);
  const DType dtype = model_dtype(model);
  check_points("interior", x_interior, problem, dtype);
  check_points("boundary", x_boundary, problem, dtype);

  // Fresh leaves, so the residual can take d/dx without touching the caller's tensors.
  Tensor xi = x_interior.detach().set_requires_grad();
  Tensor xb = x_boundary.detach().set_requires_grad();
  Tensor r = mean_square("PDE", problem.residual(xi, model(xi)), xi.dim(0), problem.name);
  Tensor b = mean_square("boundary", problem.boundary(xb, model(xb)), xb.dim(0), problem.name);
  PinnLoss out;
  out.total = add(r, mul(b, boundary_weight));
  out.residual_mse = r.item();
  out.boundary_mse = b.item();
  return out;
}

PinnResult train_pinn(nn::Module& model, const Problem& problem, const PinnOptions& options,
                      const std::function<void(const PinnLog&)>& on_log) {
  problem.domain.check();
  HPDL_CHECK(options.interior_points > 0 && options.boundary_points > 0,
             "physics::train_pinn: interior_points ({}) and boundary_points ({}) must be positive",
             options.interior_points, options.boundary_points);
  HPDL_CHECK(options.steps >= 0 && options.lbfgs_iterations >= 0,
             "physics::train_pinn: steps ({}) and lbfgs_iterations ({}) must be >= 0", options.steps,
             options.lbfgs_iterations);
  HPDL_CHECK(options.resample_every >= 0 && options.log_every >= 0,
             "physics::train_pinn: resample_every ({}) and log_every ({}) must be >= 0", options.resample_every,
             options.log_every);
  const DType dtype = model_dtype(model);
  Generator gen(options.seed);
  Tensor xi, xb;
  auto draw = [&] {
    xi = sample_interior(problem.domain, options.interior_points, gen, dtype);
    xb = sample_boundary(problem.domain, options.boundary_points, gen, dtype, problem.boundary_faces);
  };
  draw();

  optim::AdamWOptions adam;
  adam.lr = options.lr;
  adam.weight_decay = 0;  // plain Adam: the loss already pins the solution down
  optim::AdamW opt(optim::param_specs(model), adam);
  PinnResult result;
  auto log = [&](int64_t step, const PinnLoss& l) {
    PinnLog entry{step, l.total.item(), l.residual_mse, l.boundary_mse};
    result.history.push_back(entry);
    if (on_log) on_log(entry);
  };
  for (int64_t step = 0; step < options.steps; ++step) {
    if (options.resample_every > 0 && step > 0 && step % options.resample_every == 0) draw();
    opt.zero_grad();
    PinnLoss l = pinn_loss(model, problem, xi, xb, options.boundary_weight);
    HPDL_CHECK(std::isfinite(l.total.item()), "physics::train_pinn: problem '{}' loss is {} at step {}; lower "
               "the learning rate ({})", problem.name, l.total.item(), step, options.lr);
    l.total.backward();
    opt.step();
    if (options.log_every > 0 && step % options.log_every == 0) log(step, l);
  }
  int64_t done = options.steps;
  if (options.lbfgs_iterations > 0) {
    // Quasi-Newton refinement on fixed points (the objective must not change under L-BFGS).
    if (options.log_every > 0) log(options.steps, pinn_loss(model, problem, xi, xb, options.boundary_weight));
    LbfgsOptions lo;
    lo.max_iterations = options.lbfgs_iterations;
    auto objective = [&] { return pinn_loss(model, problem, xi, xb, options.boundary_weight).total; };
    auto r = lbfgs_minimize(model.parameters(), objective, lo, [&](int64_t it, double) {
      if (options.log_every > 0 && it % options.log_every == 0 && it < options.lbfgs_iterations)
        log(options.steps + it, pinn_loss(model, problem, xi, xb, options.boundary_weight));
    });
    done += r.iterations;
  }
  // The loss at the final weights, on the points of the last step.
  PinnLoss final_loss = pinn_loss(model, problem, xi, xb, options.boundary_weight);
  result.last = PinnLog{done, final_loss.total.item(), final_loss.residual_mse, final_loss.boundary_mse};
  if (options.log_every > 0) log(done, final_loss);
  return result;
}

double relative_l2_error(nn::Module& model, const Tensor& x, const Field& exact) {
  HPDL_CHECK(exact != nullptr, "physics::relative_l2_error: no exact solution given");
  NoGradGuard no_grad;
  auto u = model(x).to_vector<double>();
  auto ue = exact(x).to_vector<double>();
  HPDL_CHECK(u.size() == ue.size(), "physics::relative_l2_error: the model gives {} values but the exact solution "
             "{} for x {}", u.size(), ue.size(), shape_str(x.shape()));
  double num = 0, den = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    num += (u[i] - ue[i]) * (u[i] - ue[i]);
    den += ue[i] * ue[i];
  }
  HPDL_CHECK(den > 0, "physics::relative_l2_error: the exact solution is zero on all {} points", ue.size());
  return std::sqrt(num / den);
}

}  // namespace hpdl::physics
