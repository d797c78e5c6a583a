// The built-in simulation against its closed form, parameter sampling, and the
// single-rank errors (the multi-rank workflow is in tests/mpi/test_workflow.cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/dist/communicator.h"
#include "hpdl/workflow/workflow.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

TEST(WorkflowTest, HeatSolverMatchesTheClosedForm) {
  workflow::HeatEquation1d sim(32, 1.0, 4);
  for (const auto& p : std::vector<std::vector<double>>{{0.01, 1.0, 0.0}, {0.05, 0.3, -0.7}, {0.1, 0.9, 1.0}}) {
    std::vector<float> u(32);
    sim.run(p.data(), u.data());
    auto exact = sim.exact(p.data());
    double num = 0, den = 0;
    for (int k = 0; k < 32; ++k) num += (u[k] - exact[k]) * (u[k] - exact[k]), den += exact[k] * exact[k];
    EXPECT_LT(std::sqrt(num / den), 2e-3) << "nu " << p[0];
  }
  // A coarser solver grid is less accurate: the error comes from the discretization, not a wrong equation.
  workflow::HeatEquation1d coarse(32, 1.0, 1), fine(32, 1.0, 8);
  const double p[3] = {0.1, 0.0, 1.0};
  std::vector<float> uc(32), uf(32);
  coarse.run(p, uc.data());
  fine.run(p, uf.data());
  auto exact = fine.exact(p);
  double ec = 0, ef = 0;
  for (int k = 0; k < 32; ++k) ec += std::abs(uc[k] - exact[k]), ef += std::abs(uf[k] - exact[k]);
  EXPECT_LT(ef, ec);
}

TEST(WorkflowTest, ParameterDrawsAreInTheBoxAndFollowSeedAndStream) {
  workflow::HeatEquation1d sim;
  auto a = workflow::sample_params(sim, 500, 3, 0);
  ASSERT_EQ(a.size(), 1500u);
  const auto lo = sim.low(), hi = sim.high();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_GE(a[i], lo[i % 3]);
    EXPECT_LE(a[i], hi[i % 3]);
  }
  EXPECT_EQ(workflow::sample_params(sim, 500, 3, 0), a);
  EXPECT_NE(workflow::sample_params(sim, 500, 3, 1), a) << "another rank's stream";
  EXPECT_NE(workflow::sample_params(sim, 500, 4, 0), a);
}

TEST(WorkflowTest, BadSetupsAreNamed) {
  EXPECT_NE(test::error_of([] { workflow::HeatEquation1d(2); }).find("points must be at least 3"), std::string::npos);
  workflow::HeatEquation1d sim;
  const double bad[3] = {0.0, 1.0, 0.0};
  std::vector<float> u(32);
  EXPECT_NE(test::error_of([&] { sim.run(bad, u.data()); }).find("diffusivity must be positive"), std::string::npos);
  auto& world = dist::Communicator::world();
  if (world.size() == 1) {
    std::string e = test::error_of([&] { workflow::train_online(sim, {}, world); });
    EXPECT_NE(e.find("needs at least 2 ranks"), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace hpdl
