// Online training of a surrogate on live simulation output, under mpirun with
// 2 and 4 ranks: every rank agrees on the rounds, the trainers receive every
// simulation exactly once and end with identical surrogates, the surrogate
// learns, and an early stop reaches every rank.
#include <gtest/gtest.h>

#include "hpdl/dist/communicator.h"
#include "hpdl/workflow/workflow.h"

namespace hpdl {
namespace {

workflow::OnlineOptions small_options(int64_t sim_ranks) {
  workflow::OnlineOptions o;
  o.sim_ranks = sim_ranks;
  o.sims_per_round = 8;
  o.max_rounds = 12;
  o.steps_per_round = 40;
  o.batch_size = 32;
  o.hidden = {32, 32};
  o.validation = 32;
  o.seed = 5;
  return o;
}

void check_run(int64_t sim_ranks) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  auto o = small_options(sim_ranks);
  auto r = workflow::train_online(sim, o, world);
  ASSERT_EQ(static_cast<int64_t>(r.rounds.size()), o.max_rounds);
  for (size_t i = 0; i < r.rounds.size(); ++i)
    EXPECT_EQ(r.rounds[i].samples, static_cast<int64_t>(i + 1) * sim_ranks * o.sims_per_round) << "round " << i;
  EXPECT_EQ(r.simulations, o.max_rounds * sim_ranks * o.sims_per_round);
  EXPECT_LT(r.rounds.back().validation_error, 0.5 * r.rounds.front().validation_error) << "the surrogate learns";
  EXPECT_EQ(r.trainer, world.rank() >= sim_ranks);
  EXPECT_EQ(r.surrogate != nullptr, r.trainer);
  // Every rank saw the same logs; the trainers hold the same weights.
  double sum = 0;
  if (r.surrogate)
    for (auto& p : r.surrogate->parameters())
      for (float v : p.to_vector<float>()) sum += v;
  std::vector<double> mine = {r.rounds.back().validation_error, sum};
  auto all = world.allgather(Tensor::from_vector(mine, {2})).to_vector<double>();
  for (int k = 1; k < world.size(); ++k) {
    EXPECT_EQ(all[2 * k], all[0]);
    if (k > sim_ranks) EXPECT_EQ(all[2 * k + 1], all[2 * sim_ranks + 1]) << "trainer " << k;
  }
}

TEST(Workflow, OneSimulationRank) { check_run(1); }

TEST(Workflow, HalfTheRanksSimulate) {
  if (dist::Communicator::world().size() < 4) GTEST_SKIP() << "needs 4 ranks";
  check_run(2);
}

TEST(Workflow, EarlyStopReachesEveryRank) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  auto o = small_options(1);
  o.max_rounds = 100;
  o.target_error = 0.2;
  auto r = workflow::train_online(sim, o, world);
  const int64_t rounds = static_cast<int64_t>(r.rounds.size());
  EXPECT_LT(rounds, 100);
  EXPECT_LT(r.validation_error, 0.2);
  for (int64_t i = 0; i + 1 < rounds; ++i) EXPECT_GE(r.rounds[i].validation_error, 0.2) << "stopped late, round " << i;
  std::vector<double> mine = {static_cast<double>(rounds)};
  auto all = world.allgather(Tensor::from_vector(mine, {1})).to_vector<double>();
  for (double v : all) EXPECT_EQ(v, all[0]);
}

}  // namespace
}  // namespace hpdl
