// PPO for real use: the running mean/variance against batch statistics (row
// by row, in one batch, and merged from two halves), clipping, the agent using
// its normalised observations the same way in act, values and the
// deterministic policy, return normalisation; environment state save/load;
// checkpoint/resume of a whole PPO run (N iterations, save, M more, against a
// fresh process resuming the file and running M: bitwise equal parameters)
// and the errors a mismatched or corrupt checkpoint gets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "hpdl/autograd/node.h"
#include "hpdl/core/threading.h"
#include "hpdl/rl/normalize.h"
#include "hpdl/rl/ppo_runner.h"
#include "hpdl/train/checkpoint.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using test::error_of;

using test::contains;

struct OneThread {
  int before = num_threads();
  OneThread() { set_num_threads(1); }
  ~OneThread() { set_num_threads(before); }
};

// n rows of d values, each column with its own offset and scale, from a seed.
std::vector<double> data_rows(int64_t n, int64_t d, uint64_t seed) {
  Generator g(seed);
  std::vector<double> x(static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) x[static_cast<size_t>(i * d + j)] = 100.0 * j + (j + 1) * (g.next_uniform() - 0.3);
  return x;
}

// Two-pass mean and population variance of column j.
std::pair<double, double> column_stats(const std::vector<double>& x, int64_t n, int64_t d, int64_t j) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m += x[static_cast<size_t>(i * d + j)];
  m /= static_cast<double>(n);
  double v = 0;
  for (int64_t i = 0; i < n; ++i) v += (x[static_cast<size_t>(i * d + j)] - m) * (x[static_cast<size_t>(i * d + j)] - m);
  return {m, v / static_cast<double>(n)};
}

void expect_stats(const rl::RunningMeanStd& s, const std::vector<double>& x, int64_t n, int64_t d) {
  ASSERT_EQ(s.count(), static_cast<double>(n));
  const auto var = s.variance();
  for (int64_t j = 0; j < d; ++j) {
    auto [m, v] = column_stats(x, n, d, j);
    EXPECT_NEAR(s.mean()[static_cast<size_t>(j)], m, 1e-12 * (1 + std::abs(m))) << "column " << j;
    EXPECT_NEAR(var[static_cast<size_t>(j)], v, 1e-12 * (1 + v)) << "column " << j;
  }
}

TEST(RlNormalize, RunningStatsEqualBatchStats) {
  const int64_t n = 37, d = 3;
  auto x = data_rows(n, d, 11);
  rl::RunningMeanStd one_by_one(d), batch(d), first(d), second(d);
  for (int64_t i = 0; i < n; ++i)
    one_by_one.update(std::vector<double>(x.begin() + i * d, x.begin() + (i + 1) * d));
  batch.update(x.data(), n);
  first.update(x.data(), 20);
  second.update(x.data() + 20 * d, n - 20);
  rl::RunningMeanStd merged = first;
  merged.merge(second);
  expect_stats(one_by_one, x, n, d);
  expect_stats(batch, x, n, d);
  expect_stats(merged, x, n, d);
  // The halves alone are not the whole (the merge did something).
  EXPECT_GT(std::abs(first.mean()[2] - merged.mean()[2]), 1e-6);
  // Merging an empty summary changes nothing; merging into an empty one copies.
  rl::RunningMeanStd empty(d), copy(d);
  merged.merge(empty);
  expect_stats(merged, x, n, d);
  copy.merge(batch);
  expect_stats(copy, x, n, d);
  // pack/unpack round trip.
  rl::RunningMeanStd back(d);
  back.unpack(merged.pack(), "test");
  EXPECT_EQ(back.pack(), merged.pack());
}

TEST(RlNormalize, NormalizesAndClips) {
  rl::RunningMeanStd s(2);
  // Empty: variance 1, mean 0, so values pass (almost) unchanged.
  auto z0 = s.normalize({3.0, -4.0}, 0);
  EXPECT_NEAR(z0[0], 3.0, 1e-7);
  EXPECT_NEAR(z0[1], -4.0, 1e-7);
  // Column 0 is {1, 3} (mean 2, var 1); column 1 is {10, 10.2} (mean 10.1, var 0.01).
  s.update({1.0, 10.0});
  s.update({3.0, 10.2});
  auto z = s.normalize({4.0, 10.0}, 0);
  EXPECT_NEAR(z[0], 2.0 / std::sqrt(1.0 + 1e-8), 1e-9);
  EXPECT_NEAR(z[1], -0.1 / std::sqrt(0.01 + 1e-8), 1e-6);
  // Clipping at 5: (100 - 2) / 1 -> 5 and (0 - 10.1) / 0.1 -> -5; inside values untouched.
  auto c = s.normalize({100.0, 0.0}, 5);
  EXPECT_EQ(c[0], 5.0);
  EXPECT_EQ(c[1], -5.0);
  EXPECT_NEAR(s.normalize({4.0, 10.0}, 5)[0], z[0], 1e-15);
  // Bad input is named.
  EXPECT_TRUE(contains(error_of([&] { s.update({1.0}); }), "got 1 values, the statistics have 2"));
  EXPECT_TRUE(contains(error_of([&] { s.unpack({1, 2}, "stats.observation"); }), "stats.observation holds 2 values"));
  EXPECT_TRUE(contains(error_of([&] { s.unpack({-1, 0, 0, 0, 0}, "x"); }), "negative count"));
  EXPECT_TRUE(contains(error_of([] { rl::RunningMeanStd bad(0); }), "size 0 must be >= 1"));
}

rl::PpoOptions small_options(bool normalize) {
  rl::PpoOptions o;
  o.hidden = {16, 16};
  o.rollout_steps = 48;
  o.minibatch_size = 32;
  o.epochs = 2;
  o.lr = 1e-3;
  o.seed = 5;
  o.normalize_observations = normalize;
  o.normalize_returns = normalize;
  return o;
}

TEST(RlPpoNormalize, AgentUsesNormalizedObservationsEverywhere) {
  OneThread one;
  rl::Pendulum env;
  rl::Ppo agent(env, small_options(true));
  // Statistics far from the observation's scale: the networks must see the normalised values.
  rl::RunningMeanStd& s = agent.observation_stats();
  s.update({5.0, -5.0, 20.0});
  s.update({7.0, -3.0, 24.0});
  const rl::Observation raw = {0.3, -0.9, 1.5};
  const rl::Observation seen = agent.normalize_observation(raw);
  EXPECT_EQ(seen, s.normalize(raw, agent.options().observation_clip));
  NoGradGuard no_grad;
  auto row = [](const rl::Observation& o) {
    std::vector<float> f(o.begin(), o.end());
    return Tensor::from_vector<float>(f, {1, static_cast<int64_t>(f.size())});
  };
  const double v_seen = agent.value_output(row(seen)).item();
  const double v_raw = agent.value_output(row(raw)).item();
  EXPECT_NE(v_seen, v_raw);  // the normalisation matters for this observation
  EXPECT_EQ(agent.values({raw})[0], v_seen);
  const double mean_seen = agent.policy_output(row(seen)).item();
  EXPECT_EQ(agent.deterministic_action(raw).vector[0], mean_seen);
  EXPECT_EQ(agent.deterministic_action(raw).value, v_seen);
  EXPECT_NEAR(agent.act({raw, raw})[1].value, v_seen, 1e-6);  // a batch of 2 may round differently
  // Without the option the same agent state leaves observations alone.
  rl::Ppo plain(env, small_options(false));
  EXPECT_EQ(plain.normalize_observation(raw), raw);
}

TEST(RlPpoNormalize, ReturnNormalizationScalesAndClips) {
  rl::Pendulum env;
  auto o = small_options(true);
  o.reward_scale = 0.5;
  o.reward_clip = 3;
  rl::Ppo agent(env, o);
  agent.return_stats().update({-2.0});
  agent.return_stats().update({-6.0});  // var 4, std 2
  EXPECT_NEAR(agent.normalize_reward(-4.0), -4.0 * 0.5 / 2.0, 1e-8);
  EXPECT_EQ(agent.normalize_reward(-100.0), -3.0);
  o.normalize_returns = false;
  rl::Ppo plain(env, o);
  EXPECT_EQ(plain.normalize_reward(-4.0), -2.0);
}

TEST(RlPpoNormalize, RolloutsFeedTheStatistics) {
  OneThread one;
  std::vector<std::unique_ptr<rl::Env>> envs;
  for (int i = 0; i < 2; ++i) envs.push_back(std::make_unique<rl::Pendulum>());
  rl::Ppo agent(*envs[0], small_options(true));
  rl::PpoTrainOptions t;
  t.iterations = 2;
  rl::train_ppo(agent, envs, t);
  // Every observation acted on (2 copies x 48 steps x 2 iterations) and every discounted return.
  EXPECT_EQ(agent.observation_stats().count(), 192.0);
  EXPECT_EQ(agent.return_stats().count(), 192.0);
  // Pendulum's cos and sin stay in [-1, 1], its speed in [-8, 8]; the returns are negative.
  for (int j = 0; j < 2; ++j) EXPECT_LE(std::abs(agent.observation_stats().mean()[static_cast<size_t>(j)]), 1.0);
  EXPECT_GT(agent.observation_stats().variance()[2], 0.01);
  EXPECT_LT(agent.return_stats().mean()[0], 0.0);
}

TEST(RlEnv, SaveAndLoadStateMidEpisode) {
  for (int task = 0; task < 2; ++task) {
    std::unique_ptr<rl::Env> a, b;
    if (task == 0) a = std::make_unique<rl::CartPole>(), b = std::make_unique<rl::CartPole>();
    else a = std::make_unique<rl::Pendulum>(), b = std::make_unique<rl::Pendulum>();
    a->reset(3);
    b->reset(99);
    auto step = [&](rl::Env& e, int i) { return task == 0 ? e.step(int64_t(i % 2)) : e.step(std::vector<double>{0.5}); };
    for (int i = 0; i < 5; ++i) step(*a, i);
    b->load_state(a->save_state());
    EXPECT_EQ(b->elapsed_steps(), 5);
    for (int i = 0; i < 3; ++i) {
      auto ra = step(*a, i), rb = step(*b, i);
      EXPECT_EQ(ra.observation, rb.observation);
      EXPECT_EQ(ra.reward, rb.reward);
    }
    EXPECT_TRUE(contains(error_of([&] { b->load_state({1.0}); }), "load_state: 1 values given"));
  }
}

// ---------------------------------------------------------------- checkpoint/resume

std::vector<float> flat_parameters(const rl::Ppo& agent) {
  std::vector<float> out;
  for (auto& p : agent.parameters()) {
    auto v = p.to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

struct PpoRun {
  std::vector<std::unique_ptr<rl::Env>> envs;
  std::unique_ptr<rl::Ppo> agent;
  std::unique_ptr<rl::PpoRunner> runner;
  PpoRun(bool cartpole, const rl::PpoOptions& o, const rl::PpoTrainOptions& t, int copies = 2) {
    for (int i = 0; i < copies; ++i) {
      if (cartpole) envs.push_back(std::make_unique<rl::CartPole>());
      else envs.push_back(std::make_unique<rl::Pendulum>());
    }
    agent = std::make_unique<rl::Ppo>(*envs[0], o);
    runner = std::make_unique<rl::PpoRunner>(*agent, envs, t);
  }
  void iterate(int n) {
    for (int i = 0; i < n; ++i) runner->iterate();
  }
};

std::filesystem::path fresh_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("hpdl_ppo_ckpt_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(RlPpoCheckpoint, ResumeIsBitwiseEqualToStraightRun) {
  OneThread one;
  for (bool cartpole : {false, true}) {
    auto o = small_options(true);
    o.anneal_lr = true;
    rl::PpoTrainOptions t;
    t.iterations = 5;
    t.env_seed = 77;
    const auto dir = fresh_dir(cartpole ? "cartpole" : "pendulum");
    PpoRun straight(cartpole, o, t);
    straight.iterate(3);
    straight.runner->save_checkpoint(dir);
    const auto at_save = flat_parameters(*straight.agent);
    straight.iterate(2);

    PpoRun resumed(cartpole, o, t);
    ASSERT_TRUE(resumed.runner->resume(dir));
    EXPECT_EQ(resumed.runner->iteration(), 3);
    EXPECT_EQ(flat_parameters(*resumed.agent), at_save);
    resumed.iterate(2);
    const auto a = flat_parameters(*straight.agent), b = flat_parameters(*resumed.agent);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << (cartpole ? "CartPole" : "Pendulum");
    EXPECT_NE(a, at_save);  // the last two iterations trained
    EXPECT_EQ(straight.runner->result().returns, resumed.runner->result().returns);
    EXPECT_EQ(straight.runner->result().steps, resumed.runner->result().steps);
    EXPECT_EQ(straight.agent->observation_stats().pack(), resumed.agent->observation_stats().pack());
    EXPECT_EQ(straight.agent->return_stats().pack(), resumed.agent->return_stats().pack());
    EXPECT_EQ(straight.agent->updates(), resumed.agent->updates());
    EXPECT_EQ(straight.agent->optimizer().step_count(), resumed.agent->optimizer().step_count());
    // A run that does not resume differs (the check above is not vacuous).
    PpoRun fresh(cartpole, o, t);
    fresh.iterate(2);
    EXPECT_NE(flat_parameters(*fresh.agent), b);
    std::filesystem::remove_all(dir);
  }
}

TEST(RlPpoCheckpoint, MismatchedOrCorruptFilesAreNamed) {
  OneThread one;
  auto o = small_options(true);
  rl::PpoTrainOptions t;
  t.iterations = 3;
  const auto dir = fresh_dir("errors");
  {
    PpoRun none(false, o, t);
    EXPECT_FALSE(none.runner->resume(dir));  // nothing there yet
  }
  PpoRun run(false, o, t);
  run.iterate(1);
  const auto sidecar = run.runner->save_checkpoint(dir);

  auto other = o;
  other.hidden = {16, 8};
  PpoRun wrong_net(false, other, t);
  EXPECT_TRUE(contains(error_of([&] { wrong_net.runner->resume(dir); }), "hidden = [16,16], this run has [16,8]"));
  PpoRun wrong_copies(false, o, t, 3);
  EXPECT_TRUE(contains(error_of([&] { wrong_copies.runner->resume(dir); }), "copies = 2, this run has 3"));
  PpoRun wrong_task(true, o, t);
  EXPECT_TRUE(contains(error_of([&] { wrong_task.runner->resume(dir); }), "env = \"Pendulum\", this run has \"CartPole\""));
  auto no_norm = o;
  no_norm.normalize_observations = false;
  PpoRun wrong_option(false, no_norm, t);
  EXPECT_TRUE(contains(error_of([&] { wrong_option.runner->resume(dir); }), "normalize_observations"));

  // A trainer's checkpoint is not a PPO run's.
  {
    train::CheckpointManager other_kind(dir / "trainer");
    train::CheckpointMeta meta;
    meta.step = 1;
    const auto trainer_sidecar = other_kind.save(meta, {{"w", Tensor::zeros({2})}}).sidecar_path;
    PpoRun victim(false, o, t);
    EXPECT_TRUE(contains(error_of([&] { victim.runner->load_checkpoint(trainer_sidecar); }), "not a PPO checkpoint"));
  }

  // Flip one byte of the tensors: named as corrupt, and the agent is left untouched.
  auto tensors = sidecar;
  tensors.replace_extension(".safetensors");
  {
    std::fstream f(tensors, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x40);
    f.seekp(-5, std::ios::end);
    f.write(&c, 1);
  }
  PpoRun victim(false, o, t);
  const auto before = flat_parameters(*victim.agent);
  const std::string err = error_of([&] { victim.runner->load_checkpoint(sidecar); });
  EXPECT_TRUE(contains(err, tensors.string())) << err;
  EXPECT_TRUE(contains(err, "corrupt")) << err;
  EXPECT_EQ(flat_parameters(*victim.agent), before);
  EXPECT_FALSE(victim.runner->resume(dir));  // the only checkpoint is bad: none valid
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hpdl
