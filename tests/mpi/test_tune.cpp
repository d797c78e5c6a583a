// Successive halving across rank groups: every trial of a rung runs on exactly
// one group, every rank of that group takes part, and every rank ends with the
// same ranking. Runs with 2 and 4 ranks (groups of 1 and of 2).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <set>
#include <thread>

#include "hpdl/dist/communicator.h"
#include "hpdl/tune/tune.h"

namespace hpdl {
namespace {

// A search over optimizer.lr alone (log-uniform in [1e-3, 1]) on groups of ranks_per_trial.
tune::SearchConfig lr_search(const std::string& method, int64_t ranks_per_trial) {
  tune::SearchConfig s;
  s.method = method;
  s.ranks_per_trial = ranks_per_trial;
  tune::Param p;
  p.key = "optimizer.lr";
  p.kind = tune::Param::Kind::log_uniform;
  p.low = 1e-3, p.high = 1.0;
  s.space = {p};
  return s;
}

// The made-up objective: best at lr = 0.05. Only the group's first rank
// reports; the others' values must not count.
tune::Outcome lr_outcome(const std::vector<std::string>& o, const dist::Communicator& group) {
  const double lr = std::stod(o[0].substr(o[0].find('=') + 1));
  tune::Outcome out;
  out.val_accuracy = group.rank() == 0 ? 1.0 - std::abs(std::log(lr / 0.05)) / 10 : -100.0;
  return out;
}

void check_groups(int64_t ranks_per_trial) {
  auto& world = dist::Communicator::world();
  if (world.size() % ranks_per_trial != 0) GTEST_SKIP() << world.size() << " ranks, groups of " << ranks_per_trial;
  tune::SearchConfig s = lr_search("sha", ranks_per_trial);
  s.trials = 7;
  s.seed = 4;
  s.min_resource = 1;
  s.max_resource = 4;
  s.eta = 2;
  // runs[rung budget][trial]: how many ranks ran it (summed over the world below).
  std::vector<double> runs(3 * 7, 0.0);
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>& o, int64_t budget, bool,
                                 dist::Communicator& group) {
    EXPECT_EQ(group.size(), ranks_per_trial);
    const int rung = budget == 1 ? 0 : budget == 2 ? 1 : 2;
    runs[rung * 7 + trial] += 1;
    return lr_outcome(o, group);
  };
  auto result = tune::run_search(s, runner, world);
  world.allreduce(runs.data(), static_cast<int64_t>(runs.size()), DType::f64);
  const int expected_per_rung[3] = {7, 3, 1};
  for (int r = 0; r < 3; ++r) {
    int ran = 0;
    for (int t = 0; t < 7; ++t) {
      const double n = runs[r * 7 + t];
      EXPECT_TRUE(n == 0 || n == static_cast<double>(ranks_per_trial)) << "rung " << r << " trial " << t << ": " << n;
      ran += n > 0;
    }
    EXPECT_EQ(ran, expected_per_rung[r]) << "rung " << r;
  }
  // The best trial and every metric agree on all ranks.
  std::vector<double> mine = {static_cast<double>(result.best_trial), result.best.metric};
  auto all = world.allgather(Tensor::from_vector(mine, {2})).to_vector<double>();
  for (int r = 1; r < world.size(); ++r) {
    EXPECT_EQ(all[2 * r], all[0]);
    EXPECT_EQ(all[2 * r + 1], all[1]);
  }
  EXPECT_GT(result.best.metric, 0.0);
}

// PBT across rank groups: every member trains on exactly one group each
// generation, only world rank 0 copies checkpoints (k per generation), and
// every rank sees the same members with the same perturbed overrides.
void check_pbt(int64_t ranks_per_trial) {
  auto& world = dist::Communicator::world();
  if (world.size() % ranks_per_trial != 0) GTEST_SKIP() << world.size() << " ranks, groups of " << ranks_per_trial;
  tune::SearchConfig s = lr_search("pbt", ranks_per_trial);
  s.trials = 8;
  s.seed = 9;
  s.resource = "steps";
  s.interval = 10;
  s.max_resource = 40;
  s.quantile = 0.25;
  std::vector<double> runs(4 * 8, 0.0);  // [generation][trial]: ranks that ran it
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>& o, int64_t budget, bool resume,
                                 dist::Communicator& group) {
    EXPECT_EQ(group.size(), ranks_per_trial);
    EXPECT_EQ(resume, budget > 10);
    runs[static_cast<size_t>((budget / 10 - 1) * 8 + trial)] += 1;
    return lr_outcome(o, group);
  };
  double clones = 0;
  tune::TrialCloner cloner = [&](int64_t, int64_t, const std::vector<std::string>&) { clones += 1; };
  auto result = tune::run_search(s, runner, world, {}, cloner);
  EXPECT_TRUE(world.rank() == 0 || clones == 0) << "only rank 0 copies";
  world.allreduce(&clones, 1, DType::f64);
  EXPECT_EQ(clones, 2 * 3) << "the worst 2 of 8 after each of the first 3 generations";
  world.allreduce(runs.data(), static_cast<int64_t>(runs.size()), DType::f64);
  for (double n : runs) EXPECT_EQ(n, static_cast<double>(ranks_per_trial));
  // Every rank holds the same records: trial, parent, overrides and metric.
  ASSERT_EQ(result.records.size(), 32u);
  std::vector<double> mine;
  for (const auto& r : result.records) {
    mine.push_back(static_cast<double>(r.trial));
    mine.push_back(static_cast<double>(r.parent));
    mine.push_back(std::stod(r.overrides[0].substr(r.overrides[0].find('=') + 1)));
    mine.push_back(r.metric);
  }
  auto all = world.allgather(Tensor::from_vector(mine, {static_cast<int64_t>(mine.size())})).to_vector<double>();
  for (int r = 1; r < world.size(); ++r)
    for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(all[r * mine.size() + i], mine[i]) << "rank " << r << " entry " << i;
}

// ASHA across rank groups, with world rank 0's scheduler thread (or, with
// one group, the scheduler called directly). Jobs take uneven times (a few ms
// x budget x a per-trial cost), so groups finish out of step. Whatever the
// order: every job runs on exactly one group with all its ranks, a trial
// reaches a rung only after the rung below, every group gets work, and every
// rank ends with the same records and the objective's best trial.
void check_asha(int64_t ranks_per_trial) {
  auto& world = dist::Communicator::world();
  if (world.size() % ranks_per_trial != 0) GTEST_SKIP() << world.size() << " ranks, groups of " << ranks_per_trial;
  const int groups = world.size() / static_cast<int>(ranks_per_trial);
  tune::SearchConfig s = lr_search("asha", ranks_per_trial);
  s.trials = 9;
  s.seed = 4;
  s.min_resource = 1;
  s.max_resource = 9;
  s.eta = 3;
  const auto trials = tune::trial_overrides(s);
  int best = 0;  // the objective's best: nearest lr = 0.05
  auto lr = [&](int t) { return std::stod(trials[static_cast<size_t>(t)][0].substr(13)); };
  for (int t = 1; t < 9; ++t)
    if (std::abs(std::log(lr(t) / 0.05)) < std::abs(std::log(lr(best) / 0.05))) best = t;
  std::vector<double> runs(3 * 9, 0.0);  // [rung][trial]: ranks that ran it
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>& o, int64_t budget, bool resume,
                                 dist::Communicator& group) {
    EXPECT_EQ(group.size(), ranks_per_trial);
    const int rung = budget == 1 ? 0 : budget == 3 ? 1 : 2;
    EXPECT_EQ(resume, rung > 0);
    runs[static_cast<size_t>(rung * 9 + trial)] += 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(2 * budget * (1 + trial % 3)));
    return lr_outcome(o, group);
  };
  auto result = tune::run_search(s, runner, world);
  world.allreduce(runs.data(), static_cast<int64_t>(runs.size()), DType::f64);
  for (int t = 0; t < 9; ++t) {
    EXPECT_EQ(runs[static_cast<size_t>(t)], static_cast<double>(ranks_per_trial)) << "every trial starts once";
    for (int r = 1; r < 3; ++r) {
      const double n = runs[static_cast<size_t>(r * 9 + t)];
      EXPECT_TRUE(n == 0 || n == static_cast<double>(ranks_per_trial)) << "rung " << r << " trial " << t << ": " << n;
      if (n > 0) EXPECT_GT(runs[static_cast<size_t>((r - 1) * 9 + t)], 0) << "rung " << r << " trial " << t;
    }
  }
  EXPECT_EQ(result.best_trial, best);
  EXPECT_EQ(result.best.budget, 9);
  // One record per job run, each naming a group; every group got work.
  double jobs = 0;
  for (double n : runs) jobs += n / static_cast<double>(ranks_per_trial);
  ASSERT_EQ(static_cast<double>(result.records.size()), jobs);
  std::set<int64_t> used;
  for (const auto& r : result.records) {
    EXPECT_TRUE(r.group >= 0 && r.group < groups) << r.group;
    used.insert(r.group);
  }
  EXPECT_EQ(static_cast<int>(used.size()), groups);
  // Every rank holds the same records, in the same (completion) order.
  std::vector<double> mine;
  for (const auto& r : result.records) {
    mine.push_back(static_cast<double>(r.trial));
    mine.push_back(static_cast<double>(r.rung));
    mine.push_back(static_cast<double>(r.group));
    mine.push_back(r.metric);
  }
  auto all = world.allgather(Tensor::from_vector(mine, {static_cast<int64_t>(mine.size())})).to_vector<double>();
  for (int r = 1; r < world.size(); ++r)
    for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(all[r * mine.size() + i], mine[i]) << "rank " << r << " entry " << i;
}

TEST(Tune, SuccessiveHalvingOnSingleRankGroups) { check_groups(1); }
TEST(Tune, AsynchronousHalvingOnSingleRankGroups) { check_asha(1); }
TEST(Tune, AsynchronousHalvingOnTwoRankGroups) { check_asha(2); }
TEST(Tune, PopulationBasedTrainingOnSingleRankGroups) { check_pbt(1); }
TEST(Tune, PopulationBasedTrainingOnTwoRankGroups) { check_pbt(2); }
TEST(Tune, SuccessiveHalvingOnTwoRankGroups) { check_groups(2); }

}  // namespace
}  // namespace hpdl
