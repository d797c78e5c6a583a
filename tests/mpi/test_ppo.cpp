// Data-parallel PPO across real ranks: every rank steps its own environment
// copies (different rollouts), the gradients are averaged, so after training
// every rank holds bit-identical parameters and identical normaliser
// statistics covering every rank's observations; a per-rank checkpoint
// resumes to the same parameters.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "hpdl/core/threading.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/io/file.h"
#include "hpdl/rl/ppo_runner.h"

namespace hpdl::rl {
namespace {

dist::Communicator& W() { return dist::Communicator::world(); }

std::vector<float> flat_parameters(const Ppo& agent) {
  std::vector<float> out;
  for (auto& p : agent.parameters()) {
    auto v = p.to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

// Every rank's values of x, in rank order.
std::vector<double> gather(const std::vector<double>& x) {
  return W().allgather(Tensor::from_vector<double>(x, {static_cast<int64_t>(x.size())})).to_vector<double>();
}

PpoOptions options() {
  PpoOptions o;
  o.hidden = {16, 16};
  o.rollout_steps = 32;
  o.minibatch_size = 32;
  o.epochs = 2;
  o.lr = 1e-3;
  o.seed = 9;
  o.normalize_observations = true;
  o.normalize_returns = true;
  return o;
}

struct RankRun {
  std::vector<std::unique_ptr<Env>> envs;
  std::unique_ptr<Ppo> agent;
  std::unique_ptr<PpoRunner> runner;
  explicit RankRun(const PpoTrainOptions& t) {
    for (int i = 0; i < 2; ++i) envs.push_back(std::make_unique<CartPole>());
    agent = std::make_unique<Ppo>(*envs[0], options());
    runner = std::make_unique<PpoRunner>(*agent, envs, t, &W());
  }
};

TEST(MpiPpo, RanksKeepIdenticalParametersAndMergedStatistics) {
  set_num_threads(1);
  PpoTrainOptions t;
  t.iterations = 4;
  RankRun s(t);
  const auto initial = flat_parameters(*s.agent);
  for (int i = 0; i < 3; ++i) s.runner->iterate();
  const auto w = flat_parameters(*s.agent);
  EXPECT_NE(w, initial);
  // A hash of the parameters' bytes, gathered: equal on every rank.
  const double h = static_cast<double>(io::xxh64(w.data(), w.size() * sizeof(float)) >> 12);
  auto hashes = gather({h});
  for (int r = 1; r < W().size(); ++r) EXPECT_EQ(hashes[static_cast<size_t>(r)], hashes[0]) << "rank " << r;
  // The statistics: equal everywhere and counting every rank's observations (2 copies x 32 steps x 3).
  auto stats = s.agent->observation_stats().pack();
  auto all_stats = gather(stats);
  for (int r = 1; r < W().size(); ++r)
    EXPECT_EQ(std::memcmp(&all_stats[static_cast<size_t>(r) * stats.size()], stats.data(), stats.size() * sizeof(double)), 0);
  EXPECT_EQ(s.agent->observation_stats().count(), 192.0 * W().size());
  EXPECT_EQ(s.agent->return_stats().count(), 192.0 * W().size());
  // The ranks' rollouts differ: their first environment copies are in different states.
  auto state = s.envs[0]->save_state();
  auto states = gather(state);
  EXPECT_NE(std::vector<double>(states.begin(), states.begin() + static_cast<std::ptrdiff_t>(state.size())),
            std::vector<double>(states.begin() + static_cast<std::ptrdiff_t>(state.size()),
                                states.begin() + static_cast<std::ptrdiff_t>(2 * state.size())));
  // Steps are counted over all ranks.
  EXPECT_EQ(s.runner->result().steps, 192 * W().size());
}

TEST(MpiPpo, PerRankCheckpointResumesExactly) {
  set_num_threads(1);
  PpoTrainOptions t;
  t.iterations = 3;
  // One directory for the job (rank 0's pid); each rank writes its own rank-R/ below it.
  int64_t pid = static_cast<int64_t>(::getpid());
  W().broadcast_bytes(&pid, sizeof(pid), 0);
  const auto dir = std::filesystem::temp_directory_path() / ("hpdl_mpi_ppo_ckpt_" + std::to_string(pid));
  RankRun a(t);
  a.runner->iterate();
  a.runner->save_checkpoint(dir);
  a.runner->iterate();
  RankRun b(t);
  ASSERT_TRUE(b.runner->resume(dir));
  b.runner->iterate();
  const auto wa = flat_parameters(*a.agent), wb = flat_parameters(*b.agent);
  EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)), 0) << "rank " << W().rank();
  W().barrier();
  if (W().rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hpdl::rl
