// PPO and Pendulum: GAE against a hand-worked example with a termination and
// a truncation; the clipped surrogate's value and gradient inside and outside
// the clip range against hand computation; the clipped value loss; the
// categorical and Gaussian log-probabilities and entropies against their
// closed forms, with finite-difference gradients; Pendulum one step against
// the equations, its clips, time limit and resets; short training runs that
// improve on CartPole and on a one-step continuous task, reproducibly; and
// the errors bad input gets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "hpdl/autograd/gradcheck.h"
#include "hpdl/core/threading.h"
#include "hpdl/rl/ppo.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using test::error_of;

constexpr double kPi = 3.14159265358979323846;

using test::contains;

Tensor f64(const std::vector<double>& v, const Shape& shape) { return Tensor::from_vector<double>(v, shape); }
// A float64 input that gradcheck differentiates.
Tensor var(const std::vector<double>& v, const Shape& shape) { return f64(v, shape).set_requires_grad(); }

// Tiny networks lose time to thread hand-offs; pin one thread (and the rounding order) for training tests.
struct OneThread {
  int before = num_threads();
  OneThread() { set_num_threads(1); }
  ~OneThread() { set_num_threads(before); }
};

// ---------------------------------------------------------------- GAE

TEST(RlPpoGae, HandWorkedExampleWithTerminationAndTruncation) {
  // Four steps of one environment copy, gamma 0.9, lambda 0.8 (gamma lambda = 0.72):
  //   t=0: goes on;     next value = V(s_1) = 1.0
  //   t=1: terminated;  next value ignored (100 must not leak in)
  //   t=2: goes on;     next value = V(s_3) = 2.0
  //   t=3: truncated;   next value = V(final observation) = 3.0 (bootstrapped)
  // deltas: 1 + 0.9*1 - 0.5 = 1.4;  2 - 1 = 1.0;  3 + 0.9*2 - 1.5 = 3.3;  4 + 0.9*3 - 2 = 4.7
  // A_3 = 4.7;  A_2 = 3.3 + 0.72*4.7 = 6.684;  A_1 = 1.0 (episode end);  A_0 = 1.4 + 0.72*1.0 = 2.12
  auto a = rl::gae_advantages({1, 2, 3, 4}, {0.5, 1.0, 1.5, 2.0}, {1.0, 100.0, 2.0, 3.0},
                              {false, true, false, false}, {false, true, false, true}, 0.9, 0.8);
  ASSERT_EQ(a.size(), 4u);
  EXPECT_NEAR(a[0], 2.12, 1e-12);
  EXPECT_NEAR(a[1], 1.0, 1e-12);
  EXPECT_NEAR(a[2], 6.684, 1e-12);
  EXPECT_NEAR(a[3], 4.7, 1e-12);

  // A truncation in the middle: step 0 is cut by the time limit (bootstrap V(final) = 2.0), steps 1-2
  // belong to the next episode, so A_0 must not take A_1 in.
  //   delta: 1 + 0.9*2.0 - 0.5 = 2.3;  1 + 0.9*0.3 - 0.4 = 0.87;  1 + 0.9*0.5 - 0.3 = 1.15
  //   A_2 = 1.15;  A_1 = 0.87 + 0.72*1.15 = 1.698;  A_0 = 2.3
  auto b = rl::gae_advantages({1, 1, 1}, {0.5, 0.4, 0.3}, {2.0, 0.3, 0.5}, {false, false, false},
                              {true, false, false}, 0.9, 0.8);
  EXPECT_NEAR(b[0], 2.3, 1e-12);
  EXPECT_NEAR(b[1], 1.698, 1e-12);
  EXPECT_NEAR(b[2], 1.15, 1e-12);
}

TEST(RlPpoGae, LimitsAreTdErrorAndMonteCarlo) {
  const std::vector<double> r = {1, -2, 0.5, 3}, v = {0.3, -0.1, 0.7, 0.2}, nv = {-0.1, 0.7, 0.2, 1.5};
  const std::vector<bool> none(4, false);
  // lambda = 0: the one-step TD errors.
  auto td = rl::gae_advantages(r, v, nv, none, none, 0.9, 0.0);
  for (size_t t = 0; t < 4; ++t) EXPECT_NEAR(td[t], r[t] + 0.9 * nv[t] - v[t], 1e-12);
  // lambda = 1: discounted rewards to the end plus the discounted bootstrap, minus V.
  auto mc = rl::gae_advantages(r, v, nv, none, none, 0.9, 1.0);
  for (size_t t = 0; t < 4; ++t) {
    double g = 0, d = 1;
    for (size_t u = t; u < 4; ++u, d *= 0.9) g += d * r[u];
    g += d * nv[3];
    EXPECT_NEAR(mc[t], g - v[t], 1e-12) << "t " << t;
  }
}

// ---------------------------------------------------------------- losses

TEST(RlPpoLoss, ClippedSurrogateValueAndGradient) {
  // eps = 0.2. Rows: (ratio, advantage) and which term min() takes.
  //   (1.1, +2): inside          -> r A,     d/dlogp = r A
  //   (1.5, +2): above 1 + eps   -> 1.2 A,   gradient 0
  //   (0.5, +2): below, A > 0    -> r A      (the unclipped term is smaller), d/dlogp = r A
  //   (0.5, -1): below, A < 0    -> 0.8 A,   gradient 0
  //   (1.5, -1): above, A < 0    -> r A,     d/dlogp = r A
  const std::vector<double> ratio = {1.1, 1.5, 0.5, 0.5, 1.5}, adv = {2, 2, 2, -1, -1};
  const std::vector<double> taken = {1.1 * 2, 1.2 * 2, 0.5 * 2, 0.8 * -1, 1.5 * -1};
  const std::vector<double> slope = {1.1 * 2, 0, 0.5 * 2, 0, 1.5 * -1};
  const std::vector<double> old = {-0.3, -1.2, -0.7, -2.0, -0.1};
  std::vector<double> lp(5);
  for (size_t i = 0; i < 5; ++i) lp[i] = old[i] + std::log(ratio[i]);
  Tensor logp = f64(lp, {5});
  logp.set_requires_grad(true);
  Tensor loss = rl::ppo_clip_loss(logp, f64(old, {5}), f64(adv, {5}), 0.2);
  double expected = 0;
  for (double t : taken) expected -= t / 5;
  EXPECT_NEAR(loss.item(), expected, 1e-12);
  loss.backward();
  auto g = logp.grad().to_vector<double>();
  for (size_t i = 0; i < 5; ++i) EXPECT_NEAR(g[i], -slope[i] / 5, 1e-12) << "row " << i;

  // Finite differences away from the kinks agree.
  GradcheckResult r = gradcheck(
      [&](const std::vector<Tensor>& in) { return rl::ppo_clip_loss(in[0], f64(old, {5}), f64(adv, {5}), 0.2); },
      {var(lp, {5})});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(RlPpoLoss, ValueLossPlainAndClipped) {
  const std::vector<double> v = {1.0, 2.0, -1.0}, old = {0.5, 2.5, -1.05}, ret = {2.0, 1.0, 0.0};
  // Plain: 0.5 mean((V - R)^2) = 0.5 (1 + 1 + 1) / 3 = 0.5.
  EXPECT_NEAR(rl::ppo_value_loss(f64(v, {3}), f64(old, {3}), f64(ret, {3}), 0).item(), 0.5, 1e-12);
  // Clip 0.2: V_clip = old + clip(V - old) = 0.7, 2.3, -1.0;
  // max((V-R)^2, (V_clip-R)^2) = max(1, 1.69), max(1, 1.69), max(1, 1) -> 0.5 (1.69 + 1.69 + 1) / 3.
  EXPECT_NEAR(rl::ppo_value_loss(f64(v, {3}), f64(old, {3}), f64(ret, {3}), 0.2).item(), 0.5 * 4.38 / 3, 1e-12);
  GradcheckResult r = gradcheck(
      [&](const std::vector<Tensor>& in) { return rl::ppo_value_loss(in[0], f64(old, {3}), f64(ret, {3}), 0.2); },
      {var({1.0, 2.0, -0.9}, {3})});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(RlPpoDistributions, GaussianLogProbAndEntropyClosedForm) {
  const std::vector<double> mean = {0.3, -1.0, 2.0, 0.5}, ls = {-0.5, 0.4}, act = {1.0, -0.2, 1.1, 0.5};
  auto lp = rl::gaussian_log_prob(f64(mean, {2, 2}), f64(ls, {2}), f64(act, {2, 2})).to_vector<double>();
  ASSERT_EQ(lp.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    double expected = 0;
    for (size_t d = 0; d < 2; ++d) {
      const double sd = std::exp(ls[d]), x = act[i * 2 + d], m = mean[i * 2 + d];
      expected += std::log(std::exp(-(x - m) * (x - m) / (2 * sd * sd)) / (sd * std::sqrt(2 * kPi)));
    }
    EXPECT_NEAR(lp[i], expected, 1e-12) << "row " << i;
  }
  // Entropy of N(m, s^2) is log(s sqrt(2 pi e)) per dimension.
  double h = 0;
  for (double l : ls) h += std::log(std::exp(l) * std::sqrt(2 * kPi * std::exp(1.0)));
  EXPECT_NEAR(rl::gaussian_entropy(f64(ls, {2})).item(), h, 1e-12);

  GradcheckResult r = gradcheck(
      [](const std::vector<Tensor>& in) { return rl::gaussian_log_prob(in[0], in[1], in[2]); },
      {var(mean, {2, 2}), var(ls, {2}), var(act, {2, 2})});
  EXPECT_TRUE(r.ok) << r.message;
  GradcheckResult re = gradcheck([](const std::vector<Tensor>& in) { return rl::gaussian_entropy(in[0]); },
                                 {var(ls, {2})});
  EXPECT_TRUE(re.ok) << re.message;
}

TEST(RlPpoDistributions, CategoricalLogProbAndEntropy) {
  const std::vector<double> logits = {0.2, -1.0, 0.5, 3.0, 0.0, -2.0};
  const std::vector<int64_t> actions = {2, 0};
  auto lp = rl::categorical_log_prob(f64(logits, {2, 3}), actions).to_vector<double>();
  auto h = rl::categorical_entropy(f64(logits, {2, 3})).to_vector<double>();
  for (size_t i = 0; i < 2; ++i) {
    double z = 0;
    for (size_t j = 0; j < 3; ++j) z += std::exp(logits[i * 3 + j]);
    EXPECT_NEAR(lp[i], logits[i * 3 + static_cast<size_t>(actions[i])] - std::log(z), 1e-12);
    double ent = 0;
    for (size_t j = 0; j < 3; ++j) {
      const double p = std::exp(logits[i * 3 + j]) / z;
      ent -= p * std::log(p);
    }
    EXPECT_NEAR(h[i], ent, 1e-12);
  }
  GradcheckResult r = gradcheck(
      [&](const std::vector<Tensor>& in) { return rl::categorical_log_prob(in[0], actions); }, {var(logits, {2, 3})});
  EXPECT_TRUE(r.ok) << r.message;
  GradcheckResult re = gradcheck([](const std::vector<Tensor>& in) { return rl::categorical_entropy(in[0]); },
                                 {var(logits, {2, 3})});
  EXPECT_TRUE(re.ok) << re.message;
}

// ---------------------------------------------------------------- Pendulum

TEST(RlPendulum, StepMatchesEquations) {
  // th'' = 3 g / (2 l) sin th + 3 / (m l^2) u with g = 10, m = l = 1, dt = 0.05, written out here.
  for (double u : {-1.5, 0.0, 0.7}) {
    for (const std::vector<double>& s : {std::vector<double>{0.4, -1.2}, std::vector<double>{-2.9, 3.0}}) {
      rl::Pendulum env;
      env.reset(0);
      env.set_state(s);
      rl::StepResult r = env.step(std::vector<double>{u});
      const double dot = s[1] + (15.0 * std::sin(s[0]) + 3.0 * u) * 0.05;
      const double th = s[0] + dot * 0.05;
      ASSERT_EQ(r.observation.size(), 3u);
      EXPECT_NEAR(r.observation[0], std::cos(th), 1e-12);
      EXPECT_NEAR(r.observation[1], std::sin(th), 1e-12);
      EXPECT_NEAR(r.observation[2], dot, 1e-12);
      EXPECT_NEAR(r.reward, -(s[0] * s[0] + 0.1 * s[1] * s[1] + 0.001 * u * u), 1e-12);
      EXPECT_FALSE(r.terminated);
    }
  }
}

TEST(RlPendulum, ClipsNormalisesAndTruncates) {
  rl::Pendulum env;
  env.reset(0);
  // The torque is clipped to 2 (reward and dynamics), the angle in the cost is wrapped into [-pi, pi).
  env.set_state({2 * kPi + 0.1, 0.0});
  auto r = env.step(std::vector<double>{5.0});
  EXPECT_NEAR(r.reward, -(0.01 + 0.001 * 4.0), 1e-12);
  EXPECT_NEAR(r.observation[2], (15.0 * std::sin(0.1) + 6.0) * 0.05, 1e-12);
  // The speed is clipped to 8.
  env.set_state({kPi / 2, 7.9});
  EXPECT_DOUBLE_EQ(env.step(std::vector<double>{2.0}).observation[2], 8.0);
  EXPECT_NEAR(rl::Pendulum::normalize_angle(-kPi - 0.25), kPi - 0.25, 1e-12);
  EXPECT_NEAR(rl::Pendulum::normalize_angle(3 * kPi), -kPi, 1e-12);
  // 200 steps, never terminated, truncated on the last; resets are seeded and in range.
  auto o1 = env.reset(7);
  int steps = 0;
  for (bool done = false; !done; ++steps) {
    auto s = env.step(std::vector<double>{0.0});
    EXPECT_FALSE(s.terminated);
    EXPECT_LE(s.reward, 0.0);
    done = s.done();
    EXPECT_EQ(s.truncated, done);
  }
  EXPECT_EQ(steps, 200);
  EXPECT_EQ(env.reset(7), o1);
  for (uint64_t seed = 0; seed < 50; ++seed) {
    env.reset(seed);
    EXPECT_LE(std::abs(env.state()[0]), kPi);
    EXPECT_LE(std::abs(env.state()[1]), 1.0);
  }
}

// ---------------------------------------------------------------- training

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

TEST(RlPpoTrain, CartPoleImprovesAndRepeats) {
  OneThread one_thread;
  rl::PpoOptions o;
  o.rollout_steps = 128;
  o.minibatch_size = 128;
  o.epochs = 4;
  o.lr = 1e-3;
  o.seed = 3;
  auto run = [&](int64_t iterations) {
    std::vector<std::unique_ptr<rl::Env>> envs;
    for (int i = 0; i < 4; ++i) envs.push_back(std::make_unique<rl::CartPole>());
    rl::Ppo agent(*envs[0], o);
    rl::CartPole eval_env;
    const double before = mean_of(rl::evaluate_deterministic(agent, eval_env, 10, 5000));
    rl::PpoTrainOptions t;
    t.iterations = iterations;
    auto result = rl::train_ppo(agent, envs, t);
    const double after = mean_of(rl::evaluate_deterministic(agent, eval_env, 10, 5000));
    return std::make_tuple(before, after, result.returns);
  };
  auto [before, after, returns] = run(12);
  std::printf("CartPole deterministic return over 10 episodes: before %.1f, after 12 iterations (6144 steps) %.1f\n",
              before, after);
  EXPECT_GT(after, 2 * before);
  EXPECT_GT(after, 100);
  // Same seed, same run: the episode returns of two iterations repeat exactly.
  auto [b1, a1, r1] = run(2);
  auto [b2, a2, r2] = run(2);
  EXPECT_EQ(r1, r2);
  EXPECT_EQ(a1, a2);
}

// A one-step continuous task: observe x uniform in [-1, 1], act u, reward -(u - x)^2, episode over.
// The best policy outputs u = x (return 0); the initial one (mean near 0, std 1) scores about -1.33.
class Match : public rl::Env {
 public:
  std::string name() const override { return "Match"; }
  int64_t observation_size() const override { return 1; }
  int64_t num_actions() const override { return 0; }
  bool continuous_actions() const override { return true; }
  int64_t max_episode_steps() const override { return 1; }

 protected:
  rl::Observation reset_state(Generator& gen) override {
    x_ = -1 + 2 * gen.next_uniform();
    return {x_};
  }
  rl::StepResult step_state(int64_t) override { return {}; }
  rl::StepResult step_continuous_state(const std::vector<double>& a) override {
    rl::StepResult r;
    r.observation = {0.0};
    r.reward = -(a[0] - x_) * (a[0] - x_);
    r.terminated = true;
    return r;
  }

 private:
  double x_ = 0;
};

TEST(RlPpoTrain, GaussianPolicyLearnsContinuousTask) {
  OneThread one_thread;
  rl::PpoOptions o;
  o.hidden = {16};
  o.rollout_steps = 64;
  o.minibatch_size = 64;
  o.epochs = 4;
  o.lr = 3e-3;
  o.seed = 1;
  for (bool shared : {false, true}) {
    o.shared_network = shared;
    std::vector<std::unique_ptr<rl::Env>> envs;
    for (int i = 0; i < 4; ++i) envs.push_back(std::make_unique<Match>());
    rl::Ppo agent(*envs[0], o);
    rl::PpoTrainOptions t;
    t.iterations = 30;
    auto result = rl::train_ppo(agent, envs, t);
    const double first = mean_of(std::vector<double>(result.returns.begin(), result.returns.begin() + 256));
    const double last = mean_of(std::vector<double>(result.returns.end() - 256, result.returns.end()));
    Match eval;
    const double greedy = mean_of(rl::evaluate_deterministic(agent, eval, 50, 100));
    const double std_now = std::exp(agent.log_std().item());
    std::printf("Match (%s): sampled return first iteration %.3f, last %.3f; deterministic %.4f; std %.3f\n",
                shared ? "shared" : "separate", first, last, greedy, std_now);
    EXPECT_LT(first, -0.8);
    EXPECT_GT(last, 0.5 * first);
    EXPECT_GT(greedy, -0.1);
    EXPECT_LT(std_now, 0.9);  // the learnt log-std moved down
  }
}

// ---------------------------------------------------------------- errors

TEST(RlPpoErrors, BadInputIsNamed) {
  rl::Pendulum pendulum;
  pendulum.reset(0);
  EXPECT_TRUE(contains(error_of([&] { pendulum.step(1); }), "Pendulum::step: the task has continuous actions"));
  EXPECT_TRUE(contains(error_of([&] { pendulum.step(std::vector<double>{1, 2}); }), "the action has 2 values; the "
                       "task takes 1"));
  EXPECT_TRUE(contains(error_of([&] { pendulum.step(std::vector<double>{std::nan("")}); }), "must be finite"));
  rl::CartPole cartpole;
  cartpole.reset(0);
  EXPECT_TRUE(contains(error_of([&] { cartpole.step(std::vector<double>{1}); }), "the task has 2 discrete actions"));
  rl::PendulumConfig bad;
  bad.dt = 0;
  EXPECT_TRUE(contains(error_of([&] { rl::Pendulum p(bad); }), "dt (0)"));

  EXPECT_TRUE(contains(error_of([] { rl::gae_advantages({1}, {1, 2}, {1}, {false}, {false}, 0.9, 0.9); }),
                       "must have the same length"));
  EXPECT_TRUE(contains(error_of([] { rl::gae_advantages({1}, {1}, {1}, {false}, {false}, 0.9, 1.5); }),
                       "lambda 1.5 must be in [0, 1]"));
  EXPECT_TRUE(contains(error_of([] { rl::categorical_log_prob(Tensor::zeros({2, 3}), {0, 3}); }),
                       "action 3 in row 1 is out of range"));
  EXPECT_TRUE(contains(error_of([] {
                         rl::gaussian_log_prob(Tensor::zeros({2, 2}), Tensor::zeros({3}), Tensor::zeros({2, 2}));
                       }),
                       "log_std [D]"));
  EXPECT_TRUE(contains(error_of([] {
                         rl::ppo_clip_loss(Tensor::zeros({2}), Tensor::zeros({3}), Tensor::zeros({2}), 0.2);
                       }),
                       "old_log_prob must be [2]"));

  auto options_error = [](auto change) {
    rl::PpoOptions o;
    change(o);
    return error_of([&] { rl::Ppo agent(4, 2, false, 1, o); });
  };
  EXPECT_TRUE(contains(options_error([](rl::PpoOptions& o) { o.clip = 0; }), "clip 0 must be in (0, 1)"));
  EXPECT_TRUE(contains(options_error([](rl::PpoOptions& o) { o.gae_lambda = 2; }), "gae_lambda 2"));
  EXPECT_TRUE(contains(options_error([](rl::PpoOptions& o) { o.epochs = 0; }), "epochs 0 must be >= 1"));
  EXPECT_TRUE(contains(options_error([](rl::PpoOptions& o) { o.lr = -1; }), "lr -1 must be positive"));
  EXPECT_TRUE(contains(options_error([](rl::PpoOptions& o) { o.hidden = {}; }), "hidden is empty"));
  EXPECT_EQ(options_error([](rl::PpoOptions&) {}), "");
  EXPECT_TRUE(contains(error_of([] { rl::Ppo agent(4, 0, false, 1, {}); }), "categorical policy needs num_actions"));

  rl::Ppo agent(cartpole, {});
  std::vector<std::unique_ptr<rl::Env>> envs;
  envs.push_back(std::make_unique<rl::Pendulum>());
  EXPECT_TRUE(contains(error_of([&] { rl::train_ppo(agent, envs, {}); }), "environment 0 (Pendulum) has 3"));
  envs.clear();
  envs.push_back(std::make_unique<rl::CartPole>());
  rl::PpoOptions big;
  big.minibatch_size = 1000;
  rl::Ppo agent2(cartpole, big);
  EXPECT_TRUE(contains(error_of([&] { rl::train_ppo(agent2, envs, {}); }), "minibatch_size 1000 exceeds the rollout"));
  EXPECT_TRUE(contains(error_of([&] { agent.act({{0, 0, 0}}); }), "observation 0 has 3 values but the networks "
                       "take 4"));
}

}  // namespace
}  // namespace hpdl
