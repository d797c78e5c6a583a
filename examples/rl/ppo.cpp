// hpdl_ppo: trains PPO on the built-in CartPole (categorical policy) or
// Pendulum (Gaussian policy) for a fixed number of iterations, printing each
// iteration's mean episode return, then the deterministic policy's return
// over 20 evaluation episodes.
//
//   build/bin/hpdl_ppo [--env cartpole|pendulum] [--iterations N] [--seed S] [--envs K]
//                      [--shared] [--lr X] [--anneal-lr] [--threads T] [--quiet]
//
// CartPole here is the v1 length (500 steps), "solved" at a mean return of
// 475 over the 20 evaluation episodes. The networks are tiny (64x64 tanh),
// so one thread is the default. See docs/rl.md for measured results.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/rl/ppo.h"

namespace {

using namespace hpdl;

struct Setup {
  std::string env = "cartpole";
  int64_t iterations = -1;  // -1: the task's default
  uint64_t seed = 0;
  int64_t envs = 4;
  bool shared = false;
  double lr = -1;           // -1: the task's default
  bool quiet = false;
  bool anneal = false;
};

std::unique_ptr<rl::Env> make_env(const std::string& name) {
  if (name == "cartpole") return std::make_unique<rl::CartPole>();
  return std::make_unique<rl::Pendulum>();
}

void run(const Setup& s) {
  rl::PpoOptions o;
  int64_t iterations = 0;
  double solved = 0;
  if (s.env == "cartpole") {
    // 4 x 128 steps per iteration, 4 epochs of 4 minibatches (the common Atari/classic-control settings).
    o.rollout_steps = 128;
    o.epochs = 4;
    o.minibatch_size = 128;
    o.lr = 1e-3;
    o.gamma = 0.99;
    o.gae_lambda = 0.95;
    o.entropy_coef = 0.0;
    iterations = 100;
    solved = 475;
  } else {
    // Pendulum: longer rollouts, more epochs, a short horizon (gamma 0.9) and rewards scaled to O(1).
    o.rollout_steps = 512;
    o.epochs = 10;
    o.minibatch_size = 256;
    o.lr = 1e-3;
    o.gamma = 0.9;
    o.gae_lambda = 0.95;
    o.entropy_coef = 0.0;
    o.reward_scale = 0.1;
    iterations = 60;
    solved = -400;
  }
  o.clip = 0.2;
  o.value_coef = 0.5;
  o.max_grad_norm = 0.5;
  o.shared_network = s.shared;
  o.anneal_lr = s.anneal;
  o.seed = s.seed;
  if (s.lr > 0) o.lr = s.lr;
  if (s.iterations > 0) iterations = s.iterations;

  std::vector<std::unique_ptr<rl::Env>> envs;
  for (int64_t i = 0; i < s.envs; ++i) envs.push_back(make_env(s.env));
  rl::Ppo agent(*envs[0], o);
  rl::PpoTrainOptions t;
  t.iterations = iterations;
  t.env_seed = s.seed * 1000003ull;
  std::printf("hpdl_ppo: PPO on %s, seed %llu, %lld envs x %lld steps, %lld epochs, minibatch %lld, hidden 64x64 "
              "tanh (%s), lr %g%s, gamma %g, lambda %g, clip %g, %lld iterations\n",
              envs[0]->name().c_str(), static_cast<unsigned long long>(s.seed), static_cast<long long>(s.envs),
              static_cast<long long>(o.rollout_steps), static_cast<long long>(o.epochs),
              static_cast<long long>(o.minibatch_size), s.shared ? "shared trunk" : "separate actor and critic",
              o.lr, s.anneal ? " annealed to 0" : "", o.gamma, o.gae_lambda, o.clip, static_cast<long long>(iterations));
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  auto result = rl::train_ppo(agent, envs, t, [&](const rl::PpoIterationLog& log) {
    if (s.quiet && log.iteration % 10 != 0) return;
    std::printf("iter %4lld  steps %7lld  episodes %3lld  mean return %8.1f  avg20 %8.1f  pi %7.4f  v %8.4f  "
                "entropy %6.3f  kl %7.4f  clipfrac %.3f\n",
                static_cast<long long>(log.iteration), static_cast<long long>(log.total_steps),
                static_cast<long long>(log.episodes), log.mean_return, log.moving_average, log.loss.policy_loss,
                log.loss.value_loss, log.loss.entropy, log.loss.approx_kl, log.loss.clip_fraction);
  });
  const double train_s = seconds();
  std::printf("trained: %lld iterations, %lld steps, %lld episodes, %.2f s\n",
              static_cast<long long>(result.iterations), static_cast<long long>(result.steps),
              static_cast<long long>(result.episodes), train_s);
  auto eval_env = make_env(s.env);
  auto returns = rl::evaluate_deterministic(agent, *eval_env, 20, s.seed * 1000003ull + 777777ull);
  double sum = 0, lo = returns.front(), hi = returns.front();
  for (double r : returns) sum += r, lo = std::min(lo, r), hi = std::max(hi, r);
  const double mean = sum / static_cast<double>(returns.size());
  std::printf("deterministic evaluation: mean return %.1f over %zu episodes (min %.1f, max %.1f); %s (threshold "
              "%.0f); total %.1f s\n",
              mean, returns.size(), lo, hi, mean >= solved ? "solved" : "not solved", solved, seconds());
}

}  // namespace

int main(int argc, char** argv) {
  Setup s;
  int threads = 1;
  const char* usage = "usage: %s [--env cartpole|pendulum] [--iterations N] [--seed S] [--envs K] [--shared] "
                      "[--lr X] [--anneal-lr] [--threads T] [--quiet]\n";
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        HPDL_CHECK(i + 1 < argc, "hpdl_ppo: {} needs a value", a);
        return argv[++i];
      };
      if (a == "--env") {
        s.env = value();
      } else if (a == "--iterations") {
        s.iterations = std::stoll(value());
        HPDL_CHECK(s.iterations >= 1, "hpdl_ppo: --iterations {} must be >= 1", s.iterations);
      } else if (a == "--seed") {
        s.seed = std::stoull(value());
      } else if (a == "--envs") {
        s.envs = std::stoll(value());
      } else if (a == "--lr") {
        s.lr = std::stod(value());
        HPDL_CHECK(s.lr > 0, "hpdl_ppo: --lr {} must be positive", s.lr);
      } else if (a == "--threads") {
        threads = std::stoi(value());
      } else if (a == "--anneal-lr") {
        s.anneal = true;
      } else if (a == "--shared") {
        s.shared = true;
      } else if (a == "--quiet") {
        s.quiet = true;
      } else if (a == "-h" || a == "--help") {
        std::printf(usage, argv[0]);
        return 0;
      } else {
        HPDL_FAIL("hpdl_ppo: unknown option '{}' (see --help)", a);
      }
    }
    HPDL_CHECK(s.env == "cartpole" || s.env == "pendulum", "hpdl_ppo: --env '{}' is unknown; use cartpole or "
               "pendulum", s.env);
    HPDL_CHECK(s.envs >= 1, "hpdl_ppo: --envs {} must be >= 1", s.envs);
    HPDL_CHECK(threads >= 1, "hpdl_ppo: --threads {} must be >= 1", threads);
    set_num_threads(threads);
    run(s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
