// A converged workflow in one MPI job (docs/workflow.md):
//   mpirun -np 3 build/bin/hpdl_workflow [--sim-ranks 2] [--rounds 40] [--target 0.01] [--seed 0]
//       [--acquire variance|random] [--ensemble K] [--pool N] [--explore F] [--steps N] [--validation N]
//       [--checkpoint-dir DIR] [--checkpoint-every N] [--stop-after ROUND] [--resume]
//       [--exchange sync|async] [--slow-rank R --slow-factor F]
// The first --sim-ranks ranks run a 1-D heat equation solver for random
// parameters, the others train a surrogate on the results as they arrive
// (transformation); by default (--acquire variance) the trainers choose the
// parameters where their ensemble disagrees most (active learning). Then the first trainer measures the surrogate against the
// solver on fresh parameters (augmentation) and lets it steer a sweep for the
// parameters that keep x = 1/4 warmest at t = 1 (modulation), checking the
// best candidates with the solver. --exchange async sends each rank's results
// point-to-point as they are done instead of one allgather a round;
// --slow-rank R --slow-factor F makes simulation rank R F times slower (it
// sleeps), to compare the two.
#include <cstdio>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/workflow/workflow.h"

using namespace hpdl;

int main(int argc, char** argv) {
  dist::init(&argc, &argv);
  auto& world = dist::Communicator::world();
  workflow::OnlineOptions o;
  o.max_rounds = 40;
  o.target_error = 0.01;
  o.acquire = workflow::Acquire::variance;  // measured better than random at the same compute (docs/workflow.md)
  int64_t ensemble = 0;  // 0: 1 for random acquisition, 4 for variance
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        HPDL_CHECK(i + 1 < argc, "hpdl_workflow: {} needs a value", a);
        return argv[++i];
      };
      if (a == "--sim-ranks") o.sim_ranks = std::stoll(value());
      else if (a == "--rounds") o.max_rounds = std::stoll(value());
      else if (a == "--target") o.target_error = std::stod(value());
      else if (a == "--seed") o.seed = std::stoull(value());
      else if (a == "--sims") o.sims_per_round = std::stoll(value());
      else if (a == "--acquire") o.acquire = workflow::parse_acquire(value());
      else if (a == "--ensemble") ensemble = std::stoll(value());
      else if (a == "--pool") o.pool = std::stoll(value());
      else if (a == "--explore") o.explore = std::stod(value());
      else if (a == "--steps") o.steps_per_round = std::stoll(value());
      else if (a == "--validation") o.validation = std::stoll(value());
      else if (a == "--checkpoint-dir") o.checkpoint_dir = value();
      else if (a == "--checkpoint-every") o.checkpoint_every = std::stoll(value());
      else if (a == "--stop-after") o.stop_after_round = std::stoll(value());
      else if (a == "--resume") o.resume = true;
      else if (a == "--exchange") o.exchange = workflow::parse_exchange(value());
      else if (a == "--slow-rank") o.slow_rank = std::stoll(value());
      else if (a == "--slow-factor") o.slow_factor = std::stod(value());
      else HPDL_FAIL("hpdl_workflow: unknown option '{}'", a);
    }
    o.ensemble = ensemble > 0 ? ensemble : (o.acquire == workflow::Acquire::variance ? 4 : 1);
    workflow::HeatEquation1d sim;
    if (world.rank() == 0)
      std::printf("hpdl_workflow: %s, %d rank(s): %lld simulating (%lld runs a round each), %lld training; "
                  "%s exchange, %s acquisition, %lld surrogate(s)\n",
                  sim.name().c_str(), world.size(), static_cast<long long>(o.sim_ranks),
                  static_cast<long long>(o.sims_per_round), static_cast<long long>(world.size() - o.sim_ranks),
                  workflow::exchange_name(o.exchange), workflow::acquire_name(o.acquire),
                  static_cast<long long>(o.ensemble));
    auto result = workflow::train_online(sim, o, world, [](const workflow::RoundLog& l) {
      std::printf("round %3lld  samples %5lld  train loss %.3e  validation error %.4f  (%.1f s)\n",
                  static_cast<long long>(l.round), static_cast<long long>(l.samples), l.train_loss,
                  l.validation_error, l.seconds);
      std::fflush(stdout);
    });
    if (world.rank() == 0) {
      std::string by_rank;
      // Sync: this run's (a resumed run's result.simulations also counts the checkpoint's); async: the whole
      // run's, the checkpoint's included.
      int64_t total = 0;
      for (size_t s = 0; s < result.simulations_by_rank.size(); ++s) {
        by_rank += (s ? ", " : "") + std::to_string(result.simulations_by_rank[s]);
        total += result.simulations_by_rank[s];
      }
      std::printf("exchange %s: %lld simulations in %.2f s (%.1f/s), by simulation rank: %s\n",
                  workflow::exchange_name(o.exchange), static_cast<long long>(total), result.seconds,
                  static_cast<double>(total) / result.seconds, by_rank.c_str());
      std::fflush(stdout);
    }
    const auto done = static_cast<int64_t>(result.rounds.size());
    const bool finished = o.stop_after_round == 0 || done < o.stop_after_round || done >= o.max_rounds;
    if (!finished && world.rank() == 0)
      std::printf("stopped after round %lld with a checkpoint; continue with --resume --checkpoint-dir %s\n",
                  static_cast<long long>(result.rounds.size()), o.checkpoint_dir.c_str());
    if (finished && world.rank() == o.sim_ranks) {  // the first trainer
      auto speed = workflow::surrogate_speedup(*result.surrogate, sim, 1000, o.seed + 1);
      std::printf("augmentation: surrogate error %.4f on 1000 fresh runs; %.1f us a simulation, %.2f us a surrogate "
                  "evaluation (%.0fx)\n",
                  speed.error, 1e6 * speed.simulation_s, 1e6 * speed.surrogate_s,
                  speed.simulation_s / speed.surrogate_s);
      const int64_t quarter = sim.output_size() / 4;
      auto best = workflow::steer_sweep(
          *result.surrogate, sim, [quarter](const float* u) { return static_cast<double>(u[quarter]); }, 100000, 3,
          o.seed + 2);
      for (const auto& s : best)
        std::printf("modulation: nu %.4f a %.3f b %.3f: u(1/4, 1) predicted %.4f, simulated %.4f\n", s.params[0],
                    s.params[1], s.params[2], s.predicted, s.simulated);
      std::fflush(stdout);
    }
    world.barrier();
  } catch (const std::exception& e) {
    world.abort(std::string("hpdl_workflow: ") + e.what());
  }
  return 0;
}
