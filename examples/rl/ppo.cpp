// hpdl_ppo: trains PPO on the built-in CartPole (categorical policy) or
// Pendulum (Gaussian policy) for a fixed number of iterations, printing each
// iteration's mean episode return, then the deterministic policy's return
// over 20 evaluation episodes.
//
//   build/bin/hpdl_ppo [--env cartpole|pendulum] [--iterations N] [--seed S] [--envs K]
//                      [--shared] [--lr X] [--anneal-lr] [--threads T] [--quiet]
//                      [--normalize-obs] [--normalize-returns] [--target R]
//                      [--checkpoint DIR [--checkpoint-every N] [--resume]]
//   mpirun -np P build/bin/hpdl_ppo --data-parallel ...   (each rank: its own K copies)
//
// CartPole here is the v1 length (500 steps), "solved" at a mean return of
// 475 over the 20 evaluation episodes. The networks are tiny (64x64 tanh),
// so one thread is the default. See docs/rl.md for measured results.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/rl/ppo_runner.h"

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
  bool normalize_obs = false, normalize_returns = false;
  bool data_parallel = false;
  double target = std::numeric_limits<double>::quiet_NaN();  // report when the moving average first reaches it
  std::string checkpoint;     // directory for checkpoints ("" = none)
  int64_t checkpoint_every = 10;
  bool resume = false;
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

  o.normalize_observations = s.normalize_obs;
  o.normalize_returns = s.normalize_returns;

  dist::Communicator* comm = s.data_parallel ? &dist::Communicator::world() : nullptr;
  const int rank = comm ? comm->rank() : 0, ranks = comm ? comm->size() : 1;
  const bool print = rank == 0;
  std::vector<std::unique_ptr<rl::Env>> envs;
  for (int64_t i = 0; i < s.envs; ++i) envs.push_back(make_env(s.env));
  rl::Ppo agent(*envs[0], o);
  rl::PpoTrainOptions t;
  t.iterations = iterations;
  t.env_seed = s.seed * 1000003ull;
  rl::PpoRunner runner(agent, envs, t, comm);
  if (s.resume) {
    HPDL_CHECK(!s.checkpoint.empty(), "hpdl_ppo: --resume needs --checkpoint DIR");
    const bool resumed = runner.resume(s.checkpoint);
    if (print) std::printf("%s\n", resumed ? fmt::format("resumed from {} at iteration {}", s.checkpoint,
                                                              runner.iteration()).c_str()
                                             : fmt::format("no checkpoint in {}; starting fresh", s.checkpoint).c_str());
  }
  if (print)
    std::printf("hpdl_ppo: PPO on %s, seed %llu, %d rank%s x %lld envs x %lld steps, %lld epochs, minibatch %lld, "
                "hidden 64x64 tanh (%s), lr %g%s, gamma %g, lambda %g, clip %g, %lld iterations, observation "
                "normalisation %s, return normalisation %s\n",
                envs[0]->name().c_str(), static_cast<unsigned long long>(s.seed), ranks, ranks > 1 ? "s" : "",
                static_cast<long long>(s.envs), static_cast<long long>(o.rollout_steps),
                static_cast<long long>(o.epochs), static_cast<long long>(o.minibatch_size),
                s.shared ? "shared trunk" : "separate actor and critic", o.lr, s.anneal ? " annealed to 0" : "",
                o.gamma, o.gae_lambda, o.clip, static_cast<long long>(iterations), s.normalize_obs ? "on" : "off",
                s.normalize_returns ? "on" : "off");
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  const int64_t steps_before = runner.result().steps;
  bool reached = false;
  while (!runner.finished()) {
    const rl::PpoIterationLog log = runner.iterate();
    if (!reached && std::isfinite(s.target) && log.moving_average >= s.target) {
      reached = true;
      if (print)
        std::printf("target %.1f reached: iteration %lld, %lld steps, %.2f s\n", s.target,
                    static_cast<long long>(log.iteration), static_cast<long long>(log.total_steps), seconds());
    }
    if (!s.checkpoint.empty() && (log.iteration % s.checkpoint_every == 0 || runner.finished()))
      runner.save_checkpoint(s.checkpoint);
    if (!print || (s.quiet && log.iteration % 10 != 0)) continue;
    std::printf("iter %4lld  steps %7lld  episodes %3lld  mean return %8.1f  avg20 %8.1f  pi %7.4f  v %8.4f  "
                "entropy %6.3f  kl %7.4f  clipfrac %.3f\n",
                static_cast<long long>(log.iteration), static_cast<long long>(log.total_steps),
                static_cast<long long>(log.episodes), log.mean_return, log.moving_average, log.loss.policy_loss,
                log.loss.value_loss, log.loss.entropy, log.loss.approx_kl, log.loss.clip_fraction);
  }
  const double train_s = seconds();
  const auto& result = runner.result();
  if (!print) return;
  if (std::isfinite(s.target) && !reached) std::printf("target %.1f not reached\n", s.target);
  std::printf("trained: %lld iterations, %lld steps, %lld episodes, %.2f s, %.0f samples/s\n",
              static_cast<long long>(result.iterations), static_cast<long long>(result.steps),
              static_cast<long long>(result.episodes), train_s,
              static_cast<double>(result.steps - steps_before) / std::max(train_s, 1e-9));
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
                      "[--lr X] [--anneal-lr] [--threads T] [--quiet] [--normalize-obs] [--normalize-returns] "
                      "[--target R] [--checkpoint DIR] [--checkpoint-every N] [--resume] [--data-parallel]\n";
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
      } else if (a == "--normalize-obs") {
        s.normalize_obs = true;
      } else if (a == "--normalize-returns") {
        s.normalize_returns = true;
      } else if (a == "--data-parallel") {
        s.data_parallel = true;
      } else if (a == "--target") {
        s.target = std::stod(value());
      } else if (a == "--checkpoint") {
        s.checkpoint = value();
      } else if (a == "--checkpoint-every") {
        s.checkpoint_every = std::stoll(value());
        HPDL_CHECK(s.checkpoint_every >= 1, "hpdl_ppo: --checkpoint-every {} must be >= 1", s.checkpoint_every);
      } else if (a == "--resume") {
        s.resume = true;
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
    if (s.data_parallel) dist::init(&argc, &argv);
    run(s);
  } catch (const std::exception& e) {
    // Under mpirun a failing rank ends the whole job rather than leaving the others in a collective.
    if (s.data_parallel && dist::is_initialized() && dist::Communicator::world().size() > 1)
      dist::Communicator::world().abort(std::string("error: ") + e.what());
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
