// Online training of a surrogate on live simulation output, under mpirun with
// 2 and 4 ranks: every rank agrees on the rounds, the trainers receive every
// simulation exactly once and end with identical surrogates, the surrogate
// learns, and an early stop reaches every rank. Active learning: every rank
// agrees on the chosen parameters. Checkpoint/restart: a run interrupted and
// resumed ends bitwise where the straight run does; a bad resume is named.
// Async exchange (WorkflowAsync.*, also registered at 3 ranks): every result
// is used exactly once (counts and checksums), the trainers keep identical
// weights, a slow rank contributes fewer simulations than the fast ones, an
// early stop drains, and a run checkpointed (mid-run and at a stop) and resumed
// uses every result once over the whole run.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <utility>

#include "hpdl/dist/communicator.h"
#include "hpdl/io/file.h"
#include "hpdl/workflow/workflow.h"
#include "tests/unit/test_util.h"

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

// Active learning: with 4 ranks, 2 simulate (each runs its slice of the chosen parameters) and 2 train.
workflow::OnlineOptions active_options() {
  auto o = small_options(dist::Communicator::world().size() >= 4 ? 2 : 1);
  o.max_rounds = 7;
  o.steps_per_round = 20;
  o.acquire = workflow::Acquire::variance;
  o.ensemble = 2;
  o.pool = 64;
  o.explore = 0.25;
  return o;
}

// A directory every rank names the same (rank 0's pid), emptied first.
std::filesystem::path shared_dir(const std::string& name) {
  auto& world = dist::Communicator::world();
  std::vector<double> pid = {static_cast<double>(::getpid())};
  world.broadcast_bytes(pid.data(), sizeof(double), 0);
  auto d = std::filesystem::temp_directory_path() /
           ("hpdl_mpi_" + name + "_" + std::to_string(static_cast<int64_t>(pid[0])));
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(d);
  world.barrier();
  return d;
}

std::vector<float> weights(const workflow::OnlineResult& r) {
  std::vector<float> w;
  if (r.surrogate)
    for (auto& p : r.surrogate->parameters())
      for (float v : p.to_vector<float>()) w.push_back(v);
  return w;
}

std::vector<double> flat(const std::vector<std::vector<double>>& rounds, size_t from = 0) {
  std::vector<double> v;
  for (size_t i = from; i < rounds.size(); ++i) v.insert(v.end(), rounds[i].begin(), rounds[i].end());
  return v;
}

TEST(Workflow, ActiveLearningRanksAgreeOnTheChosenParameters) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  auto o = active_options();
  auto r = workflow::train_online(sim, o, world);
  ASSERT_EQ(static_cast<int64_t>(r.round_params.size()), o.max_rounds);
  const int64_t per_round = o.sim_ranks * o.sims_per_round;
  for (const auto& rp : r.round_params) ASSERT_EQ(static_cast<int64_t>(rp.size()), per_round * 3);
  // Rounds 1 and 2 are uniform draws from each simulation rank's stream; later rounds were chosen.
  for (int64_t s = 0; s < o.sim_ranks; ++s) {
    const auto u = workflow::sample_params(sim, o.sims_per_round, o.seed, static_cast<uint64_t>(s));
    EXPECT_TRUE(std::equal(u.begin(), u.end(), r.round_params[0].begin() + s * o.sims_per_round * 3));
  }
  const auto uniform2 = workflow::sample_params(sim, o.sims_per_round, o.seed, 2 * world.size());
  EXPECT_FALSE(std::equal(uniform2.begin(), uniform2.end(), r.round_params[2].begin()));
  // The last quarter of a chosen round is the exploration draws.
  const auto explore = workflow::sample_params(sim, per_round / 4, o.seed, 6000000 + 2);
  EXPECT_TRUE(std::equal(explore.begin(), explore.end(), r.round_params[2].end() - static_cast<long>(explore.size())));
  const auto lo = sim.low(), hi = sim.high();
  for (const auto& rp : r.round_params)
    for (size_t i = 0; i < rp.size(); ++i) EXPECT_TRUE(rp[i] >= lo[i % 3] && rp[i] <= hi[i % 3]);
  // Every rank holds the same parameters for every round.
  const auto mine = flat(r.round_params);
  const auto all = world.allgather(Tensor::from_vector(mine, {static_cast<int64_t>(mine.size())})).to_vector<double>();
  for (int k = 1; k < world.size(); ++k)
    EXPECT_TRUE(std::equal(mine.begin(), mine.end(), all.begin() + k * static_cast<long>(mine.size()))) << "rank " << k;
  EXPECT_LT(r.rounds.back().validation_error, 0.5 * r.rounds.front().validation_error) << "the surrogate learns";
}

TEST(Workflow, ResumedRunEndsBitwiseLikeTheStraightRun) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  const auto dir = shared_dir("wf_resume");
  auto o = active_options();
  o.checkpoint_dir = (dir / "straight").string();
  o.checkpoint_every = 3;  // periodic checkpoints must not change the run
  auto straight = workflow::train_online(sim, o, world);
  // Three chunks: rounds 1-2, 3-5 (a resume of a resume), 6-7.
  auto c = active_options();
  c.checkpoint_dir = (dir / "chunks").string();
  c.stop_after_round = 2;
  auto first = workflow::train_online(sim, c, world);
  EXPECT_EQ(first.rounds.size(), 2u);
  c.resume = true;
  c.stop_after_round = 5;
  workflow::train_online(sim, c, world);
  c.stop_after_round = 0;
  auto resumed = workflow::train_online(sim, c, world);
  // And from the straight run's periodic checkpoint at round 6.
  auto p = o;
  p.resume = true;
  auto from_periodic = workflow::train_online(sim, p, world);
  for (const auto* r : {&resumed, &from_periodic}) {
    ASSERT_EQ(r->rounds.size(), straight.rounds.size());
    for (size_t i = 0; i < straight.rounds.size(); ++i) {
      EXPECT_EQ(r->rounds[i].samples, straight.rounds[i].samples) << "round " << i;
      EXPECT_EQ(r->rounds[i].train_loss, straight.rounds[i].train_loss) << "round " << i;
      EXPECT_EQ(r->rounds[i].validation_error, straight.rounds[i].validation_error) << "round " << i;
    }
    EXPECT_EQ(r->simulations, straight.simulations);
    EXPECT_EQ(weights(*r), weights(straight)) << "bitwise";
    EXPECT_EQ(flat(r->round_params), flat(straight.round_params, static_cast<size_t>(r->first_round)));
  }
  EXPECT_EQ(resumed.first_round, 5);
  EXPECT_EQ(from_periodic.first_round, 6);
  EXPECT_EQ(resumed.trainer, !weights(resumed).empty());
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

TEST(Workflow, BadResumeIsNamedOnEveryRank) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  const auto dir = shared_dir("wf_bad_resume");
  auto o = active_options();
  o.checkpoint_dir = (dir / "missing").string();
  o.resume = true;
  std::string e = test::error_of([&] { workflow::train_online(sim, o, world); });
  EXPECT_NE(e.find("no checkpoint directory " + (dir / "missing" / "checkpoints").string()), std::string::npos) << e;
  // A run that stops after round 2, resumed with other settings.
  o.checkpoint_dir = (dir / "run").string();
  o.resume = false;
  o.stop_after_round = 2;
  workflow::train_online(sim, o, world);
  o.resume = true;
  o.stop_after_round = 0;
  auto other = o;
  other.sims_per_round = 4;
  e = test::error_of([&] { workflow::train_online(sim, other, world); });
  EXPECT_NE(e.find("written with sims_per_round = 8, this run has sims_per_round = 4"), std::string::npos) << e;
  other = o;
  other.acquire = workflow::Acquire::random;
  e = test::error_of([&] { workflow::train_online(sim, other, world); });
  EXPECT_NE(e.find("acquire = \"variance\""), std::string::npos) << e;
  other = o;
  other.stop_after_round = 1;
  e = test::error_of([&] { workflow::train_online(sim, other, world); });
  EXPECT_NE(e.find("already at round 2"), std::string::npos) << e;
  other = o;
  other.checkpoint_dir.clear();
  e = test::error_of([&] { workflow::train_online(sim, other, world); });
  EXPECT_NE(e.find("need a checkpoint directory"), std::string::npos) << e;
  // A corrupted checkpoint (a flipped byte in its tensors) is not resumed from.
  world.barrier();
  if (world.rank() == 0)
    for (auto& f : std::filesystem::directory_iterator(dir / "run" / "checkpoints"))
      if (f.path().extension() == ".safetensors") {
        auto bytes = test::read_text(f.path());
        bytes[bytes.size() - 5] ^= 0x5a;
        test::write_text(f.path(), bytes);
      }
  world.barrier();
  e = test::error_of([&] { workflow::train_online(sim, o, world); });
  EXPECT_NE(e.find("no valid checkpoint in " + (dir / "run" / "checkpoints").string()), std::string::npos) << e;
  // The settings are still good: the same resume works from an intact checkpoint (none left here), so
  // a fresh chunk is rerun and resumed to the end.
  o.resume = false;
  o.stop_after_round = 2;
  std::filesystem::path fresh = dir / "run2";
  o.checkpoint_dir = fresh.string();
  workflow::train_online(sim, o, world);
  o.resume = true;
  o.stop_after_round = 0;
  EXPECT_EQ(workflow::train_online(sim, o, world).rounds.size(), static_cast<size_t>(o.max_rounds));
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

// ---- Async exchange ----

workflow::OnlineOptions async_options(int64_t sim_ranks, workflow::Acquire acquire) {
  auto o = small_options(sim_ranks);
  o.exchange = workflow::Exchange::async;
  o.acquire = acquire;
  o.ensemble = acquire == workflow::Acquire::variance ? 2 : 1;
  o.pool = 256;
  return o;
}

// xxHash64 of every parameter of the surrogate (0 on simulation ranks).
uint64_t weights_hash(const workflow::OnlineResult& r) {
  if (!r.surrogate) return 0;
  std::vector<float> all;
  for (auto& p : r.surrogate->parameters()) {
    auto v = p.to_vector<float>();
    all.insert(all.end(), v.begin(), v.end());
  }
  return io::xxh64(all.data(), all.size() * sizeof(float));
}

// Checks the bookkeeping of an async run on every rank: what the simulation ranks sent is what every trainer
// holds (count and checksum), each batch of each rank arrived exactly once, every rank has the same record,
// and the trainers hold identical weights.
void check_async_run(const workflow::OnlineResult& r, int64_t sim_ranks) {
  auto& world = dist::Communicator::world();
  const bool simulator = world.rank() < sim_ranks;
  int64_t in_arrivals = 0;
  std::set<std::pair<int64_t, int64_t>> batches;
  std::vector<int64_t> per_rank(static_cast<size_t>(sim_ranks), 0);
  for (const auto& a : r.arrivals) {
    ASSERT_TRUE(a.source >= 0 && a.source < sim_ranks) << a.source;
    EXPECT_TRUE(batches.insert({a.source, a.batch}).second) << "rank " << a.source << " batch " << a.batch << " twice";
    EXPECT_GE(a.round, 1);
    EXPECT_LE(a.round, static_cast<int64_t>(r.rounds.size()) + 1);
    in_arrivals += a.count;
    per_rank[a.source] += a.count;
  }
  EXPECT_EQ(per_rank, r.simulations_by_rank);
  EXPECT_EQ(in_arrivals, r.simulations);
  for (int64_t s = 0; s < sim_ranks; ++s)  // batches 0 .. n - 1 of each rank, none missing
    for (int64_t b = 0; b < r.simulations_by_rank[s] / 8; ++b) EXPECT_TRUE(batches.count({s, b})) << s << " " << b;
  // The logs grow with the data, and the last round trained on at most everything.
  for (size_t i = 1; i < r.rounds.size(); ++i) EXPECT_GT(r.rounds[i].samples, r.rounds[i - 1].samples);
  EXPECT_LE(r.rounds.back().samples, r.simulations);
  // Sent vs received: each simulation rank's checksum and count, against each trainer's buffer.
  EXPECT_EQ(r.sent > 0, simulator);
  std::vector<double> mine = {static_cast<double>(r.sent),
                              static_cast<double>(r.checksum >> 32), static_cast<double>(r.checksum & 0xffffffffu),
                              static_cast<double>(r.simulations), static_cast<double>(r.arrivals.size()),
                              static_cast<double>(weights_hash(r) >> 32), static_cast<double>(weights_hash(r) & 0xffffffffu)};
  auto all = world.allgather(Tensor::from_vector(mine, {7})).to_vector<double>();
  uint64_t sent_sum = 0;
  for (int64_t s = 0; s < sim_ranks; ++s)
    sent_sum += (static_cast<uint64_t>(all[7 * s + 1]) << 32) | static_cast<uint64_t>(all[7 * s + 2]);
  for (int k = 0; k < world.size(); ++k) {
    EXPECT_EQ(all[7 * k + 3], all[3]) << "rank " << k << " disagrees on the simulation count";
    EXPECT_EQ(all[7 * k + 4], all[4]) << "rank " << k << " disagrees on the arrivals";
    if (k >= sim_ranks) {
      const uint64_t held = (static_cast<uint64_t>(all[7 * k + 1]) << 32) | static_cast<uint64_t>(all[7 * k + 2]);
      EXPECT_EQ(held, sent_sum) << "trainer " << k << " holds other results than were sent";
      EXPECT_EQ(all[7 * k + 5], all[7 * sim_ranks + 5]) << "trainer " << k << " has other weights";
      EXPECT_EQ(all[7 * k + 6], all[7 * sim_ranks + 6]) << "trainer " << k << " has other weights";
    } else {
      EXPECT_EQ(static_cast<int64_t>(all[7 * k]), r.simulations_by_rank[k]) << "simulation rank " << k << " sent";
    }
  }
}

// Two trainers where the world allows it, so that identical weights mean something.
int64_t async_sim_ranks() { return dist::Communicator::world().size() >= 3 ? dist::Communicator::world().size() - 2 : 1; }

TEST(WorkflowAsync, EveryResultIsUsedExactlyOnce) {
  workflow::HeatEquation1d sim(16, 1.0, 2);
  for (auto acquire : {workflow::Acquire::random, workflow::Acquire::variance}) {
    SCOPED_TRACE(workflow::acquire_name(acquire));
    const int64_t sim_ranks = async_sim_ranks();
    auto o = async_options(sim_ranks, acquire);
    auto r = workflow::train_online(sim, o, dist::Communicator::world());
    EXPECT_EQ(static_cast<int64_t>(r.rounds.size()), o.max_rounds);
    EXPECT_TRUE(r.round_params.empty());
    check_async_run(r, sim_ranks);
    // Flow control: a rank runs at most one batch beyond the trainers' last round, plus the one the stop meets.
    for (int64_t n : r.simulations_by_rank) EXPECT_LE(n, (o.max_rounds + 1) * o.sims_per_round);
    EXPECT_LT(r.rounds.back().validation_error, 0.5 * r.rounds.front().validation_error) << "the surrogate learns";
  }
}

TEST(WorkflowAsync, SlowRankFallsBehindTheFastOnes) {
  auto& world = dist::Communicator::world();
  if (world.size() < 3) GTEST_SKIP() << "needs 2 simulation ranks and a trainer";
  workflow::HeatEquation1d sim(16, 1.0, 2);
  const int64_t sim_ranks = world.size() - 1;
  auto o = async_options(sim_ranks, workflow::Acquire::random);
  // A batch of 8 small solves takes well under a millisecond; 20000 times that is longer than the trainers'
  // whole 12 rounds, during which the fast ranks deliver about a batch a round each.
  o.slow_rank = 0;
  o.slow_factor = 20000;
  auto r = workflow::train_online(sim, o, world);
  check_async_run(r, sim_ranks);
  for (int64_t s = 1; s < sim_ranks; ++s)
    EXPECT_GT(r.simulations_by_rank[s], r.simulations_by_rank[0]) << "fast rank " << s << " vs the slow rank 0";
  EXPECT_GE(r.simulations_by_rank[0], o.sims_per_round) << "the slow rank's batch in flight is drained, not lost";
}

TEST(WorkflowAsync, EarlyStopDrainsEveryRank) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  const int64_t sim_ranks = async_sim_ranks();
  auto o = async_options(sim_ranks, workflow::Acquire::variance);
  o.max_rounds = 100;
  o.target_error = 0.2;
  auto r = workflow::train_online(sim, o, world);  // a hang here is caught by the test's timeout
  const int64_t rounds = static_cast<int64_t>(r.rounds.size());
  EXPECT_LT(rounds, 100);
  EXPECT_LT(r.validation_error, 0.2);
  for (int64_t i = 0; i + 1 < rounds; ++i) EXPECT_GE(r.rounds[i].validation_error, 0.2) << "stopped late, round " << i;
  check_async_run(r, sim_ranks);
  // Nothing is left over: a second run on the same world starts clean and ends alike.
  o.max_rounds = 3;
  o.target_error = 0;
  auto again = workflow::train_online(sim, o, world);
  EXPECT_EQ(static_cast<int64_t>(again.rounds.size()), 3);
  check_async_run(again, sim_ranks);
}

TEST(WorkflowAsync, CheckpointAndResumeUseEveryResultOnce) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  const int64_t sim_ranks = async_sim_ranks();
  const bool simulator = world.rank() < sim_ranks;
  auto o = async_options(sim_ranks, workflow::Acquire::variance);
  const auto dir = shared_dir("wf_async_resume");
  o.checkpoint_dir = dir.string();
  o.checkpoint_every = 2;  // mid-run checkpoints: drain, save, restart the exchange
  o.stop_after_round = 5;  // and the first part ends with one at round 5
  auto a = workflow::train_online(sim, o, world);
  ASSERT_EQ(static_cast<int64_t>(a.rounds.size()), 5);
  check_async_run(a, sim_ranks);
  auto resumed = o;
  resumed.stop_after_round = 0;
  resumed.resume = true;
  auto b = workflow::train_online(sim, resumed, world);
  ASSERT_EQ(static_cast<int64_t>(b.rounds.size()), o.max_rounds);
  // The checkpoint's history carries over: its round logs and arrival order.
  for (size_t i = 0; i < a.rounds.size(); ++i)
    EXPECT_EQ(b.rounds[i].validation_error, a.rounds[i].validation_error) << "round " << i + 1;
  ASSERT_GE(b.arrivals.size(), a.arrivals.size());
  for (size_t i = 0; i < a.arrivals.size(); ++i) {
    EXPECT_EQ(b.arrivals[i].source, a.arrivals[i].source) << i;
    EXPECT_EQ(b.arrivals[i].batch, a.arrivals[i].batch) << i;
    EXPECT_EQ(b.arrivals[i].round, a.arrivals[i].round) << i;
  }
  EXPECT_GT(b.simulations, a.simulations);
  // Over the whole run: each batch arrived once, what the simulation ranks sent in both parts (counts and
  // checksums) is what every trainer holds, and the trainers agree.
  auto whole = b;
  whole.sent += a.sent;
  if (simulator) whole.checksum += a.checksum;
  check_async_run(whole, sim_ranks);
  // Training went on from the checkpoint's state: no worse than there (the order of arrivals is not repeatable).
  EXPECT_LE(b.validation_error, 1.1 * a.validation_error);
  if (world.rank() == 0)
    std::printf("async checkpoint/resume: validation error %.4f at the round-5 checkpoint, %.4f after round %lld; "
                "%lld simulations over the whole run\n", a.validation_error, b.validation_error,
                static_cast<long long>(o.max_rounds), static_cast<long long>(b.simulations));
  // The checkpoint is async's: a sync run does not take it.
  auto sync = resumed;
  sync.exchange = workflow::Exchange::sync;
  const std::string e = test::error_of([&] { workflow::train_online(sim, sync, world); });
  EXPECT_NE(e.find("was written with exchange = \"async\", this run has exchange = sync"), std::string::npos) << e;
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

TEST(WorkflowAsync, SlowRankMustSimulate) {
  auto& world = dist::Communicator::world();
  workflow::HeatEquation1d sim(16, 1.0, 2);
  auto o = async_options(1, workflow::Acquire::random);
  o.slow_factor = 3;
  o.slow_rank = 1;  // a trainer
  const std::string e = test::error_of([&] { workflow::train_online(sim, o, world); });
  EXPECT_NE(e.find("slow_rank = 1 must be one of the 1 simulation ranks"), std::string::npos) << e;
}

}  // namespace
}  // namespace hpdl
