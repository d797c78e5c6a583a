// The built-in simulation against its closed form, parameter sampling, the
// active-learning pieces (ensemble, disagreement, batch selection, acquisition)
// on constructed cases, and the single-rank errors (the multi-rank workflow,
// active learning across ranks and checkpoint/restart are in tests/mpi/test_workflow.cpp).
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/autograd/gradcheck.h"
#include "hpdl/autograd/node.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/ops/ops.h"
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

// Three parameters in the unit cube, one output: a box where scaled inputs equal the parameters.
class UnitCube : public workflow::Simulation {
 public:
  std::string name() const override { return "cube"; }
  int64_t num_params() const override { return 3; }
  int64_t output_size() const override { return 1; }
  std::vector<double> low() const override { return {0, 0, 0}; }
  std::vector<double> high() const override { return {1, 1, 1}; }
  void run(const double* p, float* out) const override { out[0] = static_cast<float>(p[0]); }
};

// A Linear(3 -> 1) with the given weights and zero bias.
std::shared_ptr<nn::Linear> linear_with(const std::vector<float>& w) {
  auto lin = std::make_shared<nn::Linear>(3, 1);
  NoGradGuard ng;
  for (auto& [name, t] : lin->named_parameters())
    t.copy_(name == "weight" ? Tensor::from_vector(w, {1, 3}) : Tensor::from_vector(std::vector<float>{0.f}, {1}));
  return lin;
}

TEST(WorkflowActiveTest, EnsembleVarianceOnAConstructedCase) {
  // Row 0: the members agree. Row 1: outputs (1, 3) and (1, -1): variance 1 each, mean 1.
  Tensor a = Tensor::from_vector(std::vector<float>{0, 0, 1, 1}, {2, 2});
  Tensor b = Tensor::from_vector(std::vector<float>{0, 0, 3, -1}, {2, 2});
  auto v = workflow::ensemble_variance({a, b});
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0], 0.0);
  EXPECT_DOUBLE_EQ(v[1], 1.0);
  // Three members 0, 3, 6 on one output: mean 3, variance (9 + 0 + 9) / 3 = 6.
  auto w = workflow::ensemble_variance({Tensor::from_vector(std::vector<float>{0}, {1, 1}),
                                        Tensor::from_vector(std::vector<float>{3}, {1, 1}),
                                        Tensor::from_vector(std::vector<float>{6}, {1, 1})});
  EXPECT_DOUBLE_EQ(w[0], 6.0);
  EXPECT_NE(test::error_of([&] { workflow::ensemble_variance({a}); }).find("at least 2 members"), std::string::npos);
  Tensor c = Tensor::from_vector(std::vector<float>{0, 0, 0}, {1, 3});
  std::string e = test::error_of([&] { workflow::ensemble_variance({a, c}); });
  EXPECT_NE(e.find("member 1 predicts [1, 3]"), std::string::npos) << e;
}

TEST(WorkflowActiveTest, SelectionTakesTheBestOfEachChunk) {
  const std::vector<double> s = {0.1, 0.9, 0.3, 0.5, 0.2, 0.8, 0.7, 0.7, 0.0};
  EXPECT_EQ(workflow::select_in_chunks(s, 3), (std::vector<int64_t>{1, 5, 6})) << "ties: the first";
  EXPECT_EQ(workflow::select_in_chunks(s, 1), (std::vector<int64_t>{1}));
  EXPECT_EQ(workflow::select_in_chunks(s, 9), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
  // Chunks of 4, 5 when 9 is split in 2: the best of [0, 4) is 1, of [4, 9) is 5.
  EXPECT_EQ(workflow::select_in_chunks(s, 2), (std::vector<int64_t>{1, 5}));
  std::string e = test::error_of([&] { workflow::select_in_chunks(s, 10); });
  EXPECT_NE(e.find("cannot pick 10 of 9"), std::string::npos) << e;
}

TEST(WorkflowActiveTest, AcquisitionPicksTheHighestDisagreement) {
  // Two members that differ only in the weight of the third input: they disagree by (x2 / 2)^2,
  // so each chunk's pick must be its candidate with the largest third parameter.
  UnitCube sim;
  workflow::Ensemble ens;
  ens.add(linear_with({0.5f, -0.25f, 0.f}));
  ens.add(linear_with({0.5f, -0.25f, 1.f}));
  const int64_t pool = 64, n = 4, round = 7;
  const uint64_t seed = 11;
  auto picks = workflow::acquire_params(ens, sim, n, pool, 0.0, seed, round);
  ASSERT_EQ(picks.size(), static_cast<size_t>(n * 3));
  const auto cand = workflow::sample_params(sim, pool, seed, 5000000 + round);
  for (int64_t c = 0; c < n; ++c) {
    int64_t best = c * 16;
    for (int64_t i = c * 16; i < (c + 1) * 16; ++i)
      if (cand[i * 3 + 2] > cand[best * 3 + 2]) best = i;
    for (int j = 0; j < 3; ++j) EXPECT_EQ(picks[c * 3 + j], cand[best * 3 + j]) << "chunk " << c;
    EXPECT_GT(picks[c * 3 + 2], 0.5) << "the best third parameter of 16 uniform draws";
  }
  EXPECT_EQ(workflow::acquire_params(ens, sim, n, pool, 0.0, seed, round), picks) << "deterministic";
  EXPECT_NE(workflow::acquire_params(ens, sim, n, pool, 0.0, seed, round + 1), picks) << "a fresh pool each round";
  // explore = 0.5: the first 2 picks by disagreement (chunks of 32), the last 2 uniform draws.
  auto mixed = workflow::acquire_params(ens, sim, n, pool, 0.5, seed, round);
  const auto extra = workflow::sample_params(sim, 2, seed, 6000000 + round);
  for (int j = 0; j < 6; ++j) EXPECT_EQ(mixed[6 + j], extra[j]);
  for (int64_t c = 0; c < 2; ++c) {
    double best = 0;
    for (int64_t i = c * 32; i < (c + 1) * 32; ++i) best = std::max(best, cand[i * 3 + 2]);
    EXPECT_EQ(mixed[c * 3 + 2], best);
  }
  std::string e = test::error_of([&] { workflow::acquire_params(ens, sim, n, 3, 0.0, seed, round); });
  EXPECT_NE(e.find("a pool of 3 cannot give 4 picks"), std::string::npos) << e;
}

TEST(WorkflowActiveTest, EnsemblePredictsTheMeanAndPassesGradcheck) {
  workflow::Ensemble ens;
  ens.add(linear_with({1.f, 2.f, 3.f}));
  ens.add(linear_with({-1.f, 0.f, 1.f}));
  auto y = ens.forward(Tensor::from_vector(std::vector<float>{1, 1, 1}, {1, 3})).to_vector<float>();
  EXPECT_FLOAT_EQ(y[0], 3.f) << "(6 + 0) / 2";
  ens.to(DType::f64);
  Tensor x = Tensor::from_vector(std::vector<double>{0.2, -0.4, 0.7, 0.1, 0.3, -0.9}, {2, 3});
  x.set_requires_grad(true);
  auto r = gradcheck([&](const std::vector<Tensor>& in) { return tanh(ens.forward(in[0])); }, {x});
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_NE(test::error_of([] { workflow::Ensemble().forward(Tensor::from_vector(std::vector<float>{0}, {1, 1})); })
                .find("empty ensemble"),
            std::string::npos);
}

TEST(WorkflowActiveTest, AcquireNamesParse) {
  EXPECT_EQ(workflow::parse_acquire("variance"), workflow::Acquire::variance);
  EXPECT_EQ(workflow::parse_acquire("random"), workflow::Acquire::random);
  std::string e = test::error_of([] { workflow::parse_acquire("ucb"); });
  EXPECT_NE(e.find("unknown acquisition 'ucb'"), std::string::npos) << e;
}

TEST(WorkflowAsyncTest, ExchangeNamesParse) {
  EXPECT_EQ(workflow::parse_exchange("sync"), workflow::Exchange::sync);
  EXPECT_EQ(workflow::parse_exchange("async"), workflow::Exchange::async);
  EXPECT_STREQ(workflow::exchange_name(workflow::Exchange::async), "async");
  std::string e = test::error_of([] { workflow::parse_exchange("eager"); });
  EXPECT_NE(e.find("unknown exchange 'eager'; choose sync or async"), std::string::npos) << e;
}

TEST(WorkflowAsyncTest, RecordChecksumSeesEveryValue) {
  const double p[3] = {0.05, 0.5, -0.25};
  const float y[4] = {1, 2, 3, 4};
  const uint64_t base = workflow::record_checksum(p, 3, y, 4);
  EXPECT_EQ(workflow::record_checksum(p, 3, y, 4), base) << "deterministic";
  double q[3] = {0.05, 0.5, -0.25};
  q[2] = std::nextafter(q[2], 0.0);
  EXPECT_NE(workflow::record_checksum(q, 3, y, 4), base) << "one ulp of a parameter";
  float z[4] = {1, 2, 3, 4};
  z[3] = std::nextafter(z[3], 5.0f);
  EXPECT_NE(workflow::record_checksum(p, 3, z, 4), base) << "one ulp of an output";
  EXPECT_NE(workflow::record_checksum(p, 2, y, 4), base) << "a shorter record";
}

}  // namespace
}  // namespace hpdl
