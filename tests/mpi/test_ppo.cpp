// Data-parallel PPO across real ranks: every rank steps its own environment
// copies (different rollouts), the gradients are averaged, so after training
// every rank holds bit-identical parameters and identical normaliser
// statistics covering every rank's observations; a per-rank checkpoint
// resumes to the same parameters; a checkpoint of A ranks resumes at B ranks
// (2 -> 1, 1 -> 2, 2 -> 4 with four ranks) with the shared state equal to the
// file's bytes, the continuing ranks' environments restored, the new ranks'
// fresh and repeatable, and CartPole's return still improving after it.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <numeric>

#include <unistd.h>

#include "hpdl/core/threading.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/io/file.h"
#include "hpdl/rl/ppo_runner.h"
#include "hpdl/train/checkpoint.h"

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
  explicit RankRun(const PpoTrainOptions& t, dist::Communicator* comm = &W(), const PpoOptions& o = options()) {
    for (int i = 0; i < 2; ++i) envs.push_back(std::make_unique<CartPole>());
    agent = std::make_unique<Ppo>(*envs[0], o);
    runner = std::make_unique<PpoRunner>(*agent, envs, t, comm);
  }
};

// One directory for the job (rank 0's pid and a name); each run writes below it.
std::filesystem::path job_dir(const std::string& name) {
  int64_t pid = static_cast<int64_t>(::getpid());
  W().broadcast_bytes(&pid, sizeof(pid), 0);
  return std::filesystem::temp_directory_path() / ("hpdl_mpi_ppo_" + name + "_" + std::to_string(pid));
}

// World ranks 0..n-1 as a job of n ranks: a sub-communicator, or none (one process) for n = 1.
// Every world rank calls this (the split is collective); comm is null outside the group.
struct Group {
  bool member = false;
  std::unique_ptr<dist::Communicator> owned;
  dist::Communicator* comm = nullptr;
  explicit Group(int n) : member(W().rank() < n) {
    owned = W().split(member ? 0 : 1, W().rank());
    if (member && n > 1) comm = owned.get();
  }
};

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.raw_data());
  return std::vector<uint8_t>(p, p + t.nbytes());
}

// The tensors of the newest checkpoint in dir/checkpoints.
std::map<std::string, Tensor> newest_checkpoint(const std::filesystem::path& dir) {
  train::CheckpointManager m(dir);
  auto info = m.latest_valid();
  HPDL_CHECK(info.has_value(), "no valid checkpoint in {}", dir.string());
  return m.load(*info);
}

double mean_of(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()); }

// Larger rollouts than options(), for the checks that CartPole still learns across a resume.
PpoOptions learning_options() {
  PpoOptions o;
  o.rollout_steps = 128;
  o.minibatch_size = 128;
  o.epochs = 4;
  o.lr = 1e-3;
  o.seed = 3;
  return o;
}

// Train `before` iterations at `saved` ranks, checkpoint, resume at `resumed` ranks, train `after`:
// the shared state equals the checkpoint's bytes, ranks below both counts continue their own
// environments, new ranks start fresh and repeatably, and CartPole's deterministic return after
// is more than twice the one at the checkpoint.
void resume_at_another_count(int saved, int resumed, int64_t before, int64_t after) {
  set_num_threads(1);
  const auto dir = job_dir(fmt::format("np{}_np{}", saved, resumed));
  const PpoOptions o = learning_options();
  PpoTrainOptions t;
  t.iterations = before + after;
  double at_checkpoint = 0;
  {
    Group g(saved);
    if (g.member) {
      RankRun a(t, g.comm, o);
      for (int64_t i = 0; i < before; ++i) a.runner->iterate();
      a.runner->save_checkpoint(dir);
      CartPole eval_env;
      at_checkpoint = mean_of(evaluate_deterministic(*a.agent, eval_env, 10, 5000));
    }
  }
  W().barrier();
  const auto saved_dir = [&](int r) { return saved > 1 ? dir / fmt::format("rank-{}", r) : dir; };
  Group g(resumed);
  if (g.member) {
    const int rank = W().rank();
    RankRun b(t, g.comm, o);
    ASSERT_TRUE(b.runner->resume(dir));
    EXPECT_EQ(b.runner->iteration(), before);
    EXPECT_NE(b.runner->resume_note().find(fmt::format("written by {} rank", saved)), std::string::npos)
        << b.runner->resume_note();
    // Shared state: the bytes of rank 0's file (equal on every saving rank).
    const auto file = newest_checkpoint(saved_dir(0));
    for (auto& [name, p] : b.agent->named_parameters())
      EXPECT_EQ(bytes_of(p), bytes_of(file.at("param." + name))) << name << " on rank " << rank;
    auto optim = b.agent->optimizer().state_dict();
    ASSERT_FALSE(optim.empty());
    for (auto& [name, v] : optim) EXPECT_EQ(bytes_of(v), bytes_of(file.at("optim." + name))) << name;
    EXPECT_EQ(b.agent->observation_stats().pack(), file.at("stats.observation").to_vector<double>());
    EXPECT_EQ(b.agent->return_stats().pack(), file.at("stats.return").to_vector<double>());
    // Per-rank state: continued from this rank's file, or fresh.
    std::vector<double> state;
    for (auto& e : b.envs) {
      auto s = e->save_state();
      state.insert(state.end(), s.begin(), s.end());
    }
    if (rank < saved) {
      EXPECT_EQ(state, newest_checkpoint(saved_dir(rank)).at("env.state").to_vector<double>()) << "rank " << rank;
    } else {
      EXPECT_NE(state, file.at("env.state").to_vector<double>()) << "rank " << rank;
      EXPECT_TRUE(b.runner->result().returns.empty());
    }
    const int64_t steps_at_checkpoint = b.runner->result().steps;
    for (int64_t i = 0; i < after; ++i) b.runner->iterate();
    EXPECT_EQ(b.runner->result().steps, steps_at_checkpoint + after * 2 * o.rollout_steps * resumed);
    const auto w = flat_parameters(*b.agent);
    if (g.comm != nullptr) {
      // Still one model over the resumed ranks.
      const double h = static_cast<double>(io::xxh64(w.data(), w.size() * sizeof(float)) >> 12);
      auto hashes = g.comm->allgather(Tensor::from_vector<double>({h}, {1})).to_vector<double>();
      for (double x : hashes) EXPECT_EQ(x, hashes[0]) << "rank " << rank;
    }
    // The same resume again ends in the same bits (new ranks' seeds depend on seed, rank, iteration only).
    RankRun c(t, g.comm, o);
    ASSERT_TRUE(c.runner->resume(dir));
    for (int64_t i = 0; i < after; ++i) c.runner->iterate();
    EXPECT_EQ(flat_parameters(*c.agent), w) << "rank " << rank;
    if (rank == 0) {
      CartPole eval_env;
      const double later = mean_of(evaluate_deterministic(*b.agent, eval_env, 10, 5000));
      std::printf("PPO np %d -> np %d: CartPole deterministic return %.1f at the checkpoint (iteration %lld), %.1f "
                  "after %lld more\n", saved, resumed, at_checkpoint, static_cast<long long>(before), later,
                  static_cast<long long>(after));
      EXPECT_GT(later, 2 * at_checkpoint);
    }
  }
  W().barrier();
  if (W().rank() == 0) std::filesystem::remove_all(dir);
}

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
  // One directory for the job; each rank writes its own rank-R/ below it.
  const auto dir = job_dir("ckpt");
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

TEST(MpiPpo, ResumeTwoRanksAtOne) { resume_at_another_count(2, 1, 4, 6); }
TEST(MpiPpo, ResumeOneRankAtTwo) { resume_at_another_count(1, 2, 4, 6); }
TEST(MpiPpo, ResumeTwoRanksAtFour) {
  if (W().size() < 4) GTEST_SKIP() << "needs 4 ranks (the np 4 run has them)";
  resume_at_another_count(2, 4, 4, 6);
}

TEST(MpiPpo, ResumeWithARankFileMissingFailsOnEveryRank) {
  set_num_threads(1);
  PpoTrainOptions t;
  t.iterations = 3;
  const auto dir = job_dir("missing");
  {
    RankRun a(t);
    a.runner->iterate();
    a.runner->save_checkpoint(dir);
  }
  W().barrier();
  if (W().rank() == 0) std::filesystem::remove_all(dir / "rank-1");
  W().barrier();
  RankRun b(t);
  std::string error;
  try {
    b.runner->resume(dir);
  } catch (const Error& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("rank 1 finds no checkpoint of iteration 1"), std::string::npos) << "rank " << W().rank()
                                                                                        << ": " << error;
  W().barrier();
  if (W().rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hpdl::rl
