// hpdl_dqn: trains DQN on the built-in CartPole until the moving average of
// the last 20 episode returns reaches 195 (the classic "solved" threshold),
// then reports the greedy return over 10 evaluation episodes.
//
//   build/bin/hpdl_dqn [--seed S] [--max-steps N] [--double] [--mse] [--threads T] [--quiet]
//
// The networks are tiny (4 -> 64 -> 64 -> 2), so one thread is the default:
// the cost is per-op overhead, not arithmetic. See docs/rl.md for results.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/rl/dqn.h"

namespace {

using namespace hpdl;

void run(uint64_t seed, int64_t max_steps, bool double_dqn, bool huber, bool quiet) {
  rl::CartPole env;
  rl::DqnOptions options;
  options.hidden = {64, 64};
  options.lr = 1e-3;
  options.batch_size = 64;
  options.buffer_capacity = 50000;
  options.learning_starts = 1000;
  options.target_sync_every = 500;
  options.epsilon_start = 1.0;
  options.epsilon_end = 0.05;
  options.epsilon_decay_steps = 10000;
  options.double_dqn = double_dqn;
  options.huber = huber;
  options.seed = seed;
  rl::Dqn agent(env.observation_size(), env.num_actions(), options);

  rl::DqnTrainOptions train;
  train.max_steps = max_steps;
  train.env_seed = seed * 1000003ull;
  std::printf("hpdl_dqn: %s on CartPole, seed %llu, hidden 64x64, lr %g, batch %lld, buffer %lld, target sync %lld, "
              "epsilon %g -> %g over %lld steps, %s loss, at most %lld steps\n",
              double_dqn ? "double DQN" : "DQN", static_cast<unsigned long long>(seed), options.lr,
              static_cast<long long>(options.batch_size), static_cast<long long>(options.buffer_capacity),
              static_cast<long long>(options.target_sync_every), options.epsilon_start, options.epsilon_end,
              static_cast<long long>(options.epsilon_decay_steps), huber ? "Huber" : "MSE",
              static_cast<long long>(max_steps));
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  auto result = rl::train_dqn(agent, env, train, [&](const rl::EpisodeLog& log) {
    if (quiet && log.episode % 50 != 0) return;
    std::printf("episode %4lld  steps %6lld  return %5.0f  avg20 %6.1f  epsilon %.3f  loss %.4f\n",
                static_cast<long long>(log.episode), static_cast<long long>(log.total_steps), log.episode_return,
                log.moving_average, log.epsilon, log.last_loss);
  });
  const double train_s = seconds();
  if (result.solved) {
    std::printf("solved: average return of the last %lld episodes >= %.0f after %lld episodes, %lld steps, %.1f s\n",
                static_cast<long long>(train.solved_window), train.solved_return,
                static_cast<long long>(result.solved_episode), static_cast<long long>(result.solved_step), train_s);
  } else {
    std::printf("not solved: %lld episodes, %lld steps, %.1f s without a 20-episode average >= %.0f\n",
                static_cast<long long>(result.episodes), static_cast<long long>(result.steps), train_s,
                train.solved_return);
  }
  auto returns = rl::evaluate_greedy(agent, env, 10, seed * 1000003ull + 777777ull);
  double sum = 0, lo = returns.front(), hi = returns.front();
  for (double r : returns) sum += r, lo = std::min(lo, r), hi = std::max(hi, r);
  std::printf("greedy evaluation: mean return %.1f over %zu episodes (min %.0f, max %.0f); total %.1f s\n",
              sum / static_cast<double>(returns.size()), returns.size(), lo, hi, seconds());
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 0;
  int64_t max_steps = 100000;
  bool double_dqn = false, huber = true, quiet = false;
  int threads = 1;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        HPDL_CHECK(i + 1 < argc, "hpdl_dqn: {} needs a value", a);
        return argv[++i];
      };
      if (a == "--seed") {
        seed = std::stoull(value());
      } else if (a == "--max-steps") {
        max_steps = std::stoll(value());
      } else if (a == "--threads") {
        threads = std::stoi(value());
      } else if (a == "--double") {
        double_dqn = true;
      } else if (a == "--mse") {
        huber = false;
      } else if (a == "--quiet") {
        quiet = true;
      } else if (a == "-h" || a == "--help") {
        std::printf("usage: %s [--seed S] [--max-steps N] [--double] [--mse] [--threads T] [--quiet]\n", argv[0]);
        return 0;
      } else {
        HPDL_FAIL("hpdl_dqn: unknown option '{}' (see --help)", a);
      }
    }
    HPDL_CHECK(max_steps >= 1, "hpdl_dqn: --max-steps {} must be >= 1", max_steps);
    HPDL_CHECK(threads >= 1, "hpdl_dqn: --threads {} must be >= 1", threads);
    set_num_threads(threads);
    run(seed, max_steps, double_dqn, huber, quiet);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
