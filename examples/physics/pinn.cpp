// hpdl_pinn: trains a physics-informed network on a model problem with a known
// solution and reports the relative L2 error on a test grid.
//
//   build/bin/hpdl_pinn [poisson_1d|poisson_2d|heat_1d|all] [--steps N] [--seed S] [--lr LR] [--lbfgs N] [--f64]
//
// Each run prints the loss every few hundred steps, then one line with the
// error and the wall time. See docs/physics.md for measured results.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/physics/problems.h"

namespace {

using namespace hpdl;

struct Setup {
  physics::Problem problem;
  std::vector<int64_t> hidden;
  physics::PinnOptions options;
  std::vector<int64_t> test_grid;
};

Setup setup_for(const std::string& name) {
  Setup s;
  if (name == "poisson_1d") {
    s.problem = physics::poisson_1d();
    s.hidden = {32, 32};
    s.options.interior_points = 128;
    s.options.boundary_points = 2;
    s.options.steps = 2000;
    s.options.lr = 3e-3;
    s.test_grid = {1001};
  } else if (name == "poisson_2d") {
    s.problem = physics::poisson_2d();
    s.hidden = {32, 32};
    s.options.interior_points = 512;
    s.options.boundary_points = 128;
    s.options.steps = 1000;
    s.options.lbfgs_iterations = 3000;
    s.options.lr = 3e-3;
    s.test_grid = {101, 101};
  } else if (name == "heat_1d") {
    s.problem = physics::heat_1d();
    s.hidden = {32, 32};
    s.options.interior_points = 512;
    s.options.boundary_points = 128;
    s.options.steps = 1000;
    s.options.lbfgs_iterations = 1000;
    s.options.lr = 3e-3;
    s.test_grid = {101, 101};
  } else {
    HPDL_FAIL("hpdl_pinn: unknown problem '{}'; choose poisson_1d, poisson_2d, heat_1d or all", name);
  }
  return s;
}

// Trains one problem and prints its error; returns the relative L2 error.
double run(const std::string& name, int64_t steps, uint64_t seed, double lr, int64_t lbfgs, DType dtype) {
  Setup s = setup_for(name);
  if (steps >= 0) s.options.steps = steps;
  if (lr > 0) s.options.lr = lr;
  if (lbfgs >= 0) s.options.lbfgs_iterations = lbfgs;
  s.options.seed = seed;
  s.options.log_every = 500;
  Generator init(seed);
  auto model = physics::make_mlp(s.problem.domain.dims(), s.hidden, 1, init, dtype);
  std::printf("%s on %s: %lld interior + %lld boundary points, %lld Adam steps (lr %g) + %lld L-BFGS, %s\n",
              s.problem.name.c_str(),
              s.problem.domain.str().c_str(), static_cast<long long>(s.options.interior_points),
              static_cast<long long>(s.options.boundary_points), static_cast<long long>(s.options.steps),
              s.options.lr, static_cast<long long>(s.options.lbfgs_iterations), dtype_name(dtype));
  std::fflush(stdout);
  auto t0 = std::chrono::steady_clock::now();
  auto result = physics::train_pinn(*model, s.problem, s.options, [](const physics::PinnLog& l) {
    std::printf("  step %5lld  loss %.3e  (pde %.3e, boundary %.3e)\n", static_cast<long long>(l.step), l.loss,
                l.residual_mse, l.boundary_mse);
    std::fflush(stdout);  // progress shows when stdout is a pipe or a log file
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Tensor x_test = physics::grid(s.problem.domain, s.test_grid, dtype);
  double err = physics::relative_l2_error(*model, x_test, s.problem.exact);
  std::printf("%s: relative L2 error %.3e on %lld test points, final loss %.3e, %.2f s\n", s.problem.name.c_str(),
              err, static_cast<long long>(x_test.dim(0)), result.last.loss, seconds);
  return err;
}

}  // namespace

int main(int argc, char** argv) {
  std::string problem = "poisson_1d";
  int64_t steps = -1;
  uint64_t seed = 0;
  double lr = 0;
  int64_t lbfgs = -1;
  DType dtype = DType::f32;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        HPDL_CHECK(i + 1 < argc, "hpdl_pinn: {} needs a value", a);
        return argv[++i];
      };
      if (a == "--steps") {
        steps = std::stoll(value());
      } else if (a == "--seed") {
        seed = std::stoull(value());
      } else if (a == "--lr") {
        lr = std::stod(value());
      } else if (a == "--lbfgs") {
        lbfgs = std::stoll(value());
      } else if (a == "--f64") {
        dtype = DType::f64;
      } else if (a == "-h" || a == "--help") {
        std::printf("usage: %s [poisson_1d|poisson_2d|heat_1d|all] [--steps N] [--seed S] [--lr LR] [--lbfgs N] [--f64]\n",
                    argv[0]);
        return 0;
      } else if (!a.empty() && a[0] != '-') {
        problem = a;
      } else {
        HPDL_FAIL("hpdl_pinn: unknown option '{}' (see --help)", a);
      }
    }
    std::vector<std::string> names = {problem};
    if (problem == "all") names = {"poisson_1d", "poisson_2d", "heat_1d"};
    for (const auto& n : names) run(n, steps, seed, lr, lbfgs, dtype);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
