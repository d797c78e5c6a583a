// Converged workflows: a simulation and a trainer in one MPI job.
//
// The world's ranks are cut in two: simulation ranks run a simulation code for
// parameters they sample, trainer ranks train a surrogate network (parameters
// -> simulation output) on those results while the simulations go on
// ("transformation": training on live simulation output, no files between
// them). The exchange is bulk-synchronous: each round every simulation rank
// runs `sims_per_round` simulations, one allgather over the world hands the
// round's samples to the trainers, and the trainers train on everything
// received so far while the simulation ranks compute the next round. The
// trainers then decide together whether to stop (validation error below the
// target or the round budget spent), and one broadcast tells every rank.
//
// Active learning (`acquire = variance`): the trainers keep an ensemble of K
// surrogates, each trained on its own bootstrap resample of the buffer, and
// after each round score a pool of random candidate parameters by the
// ensemble's disagreement (the variance of the members' predictions); the
// highest-scoring candidate of each of n disjoint chunks of the pool (plus a
// fraction of uniform draws for exploration) becomes the next parameters the
// simulation ranks run. They ride on the round's closing broadcast, so the
// overlap stays: the simulation ranks compute round r + 1 from parameters
// chosen after round r - 1 (rounds 0 and 1 are uniform draws).
//
// Checkpoints (`checkpoint_dir`): every `checkpoint_every` rounds the first
// trainer writes the surrogates, the optimizer state, the training buffer,
// the planned parameters of the rounds in flight, the round logs and the
// batch generator's state (train::CheckpointManager: safetensors + JSON
// sidecar, atomic); `resume` continues from the newest valid one and ends
// bitwise where the straight run would, at the same rank count.
//
// Asynchronous exchange (`exchange = async`): no round-wide collective. Each
// simulation rank sends every batch of `sims_per_round` results to the first
// trainer point-to-point as soon as it is done and goes on at once; the first
// trainer takes whatever has arrived before each round's steps (at least one
// batch), broadcasts it over the trainer communicator, and the trainers train
// on it. A simulation rank asks the first trainer for its next parameters
// (request/reply, one batch ahead; chosen then with active learning), and
// batch b is granted once the trainers have started round b - 1, so a fast
// rank keeps pace with training while a slow one falls behind without
// holding anyone up. At the end the first trainer sends each simulation
// rank a stop message and drains every result still in flight. Results then
// depend on the arrival order, which is recorded (OnlineResult::arrivals).
// Checkpoints in this mode drain first: at a checkpoint round the first
// trainer stops and drains every simulation rank as at the end, the drained
// results join the buffer (trained on from the next round), the checkpoint
// adds the per-rank counts and checksums, the arrival order and the ticket
// counter, and the exchange restarts; a resume continues each simulation
// rank at its next batch. Nothing is in flight, so nothing is lost or used
// twice; what follows a restart is timing-dependent as ever.
//
// After training, the surrogate stands in for the simulation
// ("augmentation": `surrogate_speedup` measures it) and steers a parameter
// sweep ("modulation": `steer_sweep` ranks many candidate parameters with the
// surrogate and checks the best few with the real simulation).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/nn/layers.h"

namespace hpdl::workflow {

// A simulation code: parameters in, a fixed-size output out. run() must be
// deterministic and safe to call from any rank.
class Simulation {
 public:
  virtual ~Simulation() = default;
  virtual std::string name() const = 0;
  virtual int64_t num_params() const = 0;
  virtual int64_t output_size() const = 0;
  // The box parameters are sampled from: low[i] <= p[i] <= high[i].
  virtual std::vector<double> low() const = 0;
  virtual std::vector<double> high() const = 0;
  // Writes output_size() values for `params` (num_params() values).
  virtual void run(const double* params, float* out) const = 0;
};

// 1-D heat equation u_t = nu u_xx on x in [0, 1] with u(0, t) = u(1, t) = 0 and
// u(x, 0) = a sin(pi x) + b sin(2 pi x), solved by explicit finite differences
// (forward Euler in time, central differences in space, a time step inside the
// stability limit dt <= dx^2 / (2 nu)) up to t_end; the output is u(x, t_end)
// at the `points` interior grid points. Parameters (nu, a, b) in
// [0.01, 0.1] x [0, 1] x [-1, 1]. The exact solution is
// a e^{-nu pi^2 t} sin(pi x) + b e^{-4 nu pi^2 t} sin(2 pi x).
class HeatEquation1d : public Simulation {
 public:
  explicit HeatEquation1d(int64_t points = 32, double t_end = 1.0, int64_t refine = 4);
  std::string name() const override { return "heat1d"; }
  int64_t num_params() const override { return 3; }
  int64_t output_size() const override { return points_; }
  std::vector<double> low() const override { return {0.01, 0.0, -1.0}; }
  std::vector<double> high() const override { return {0.1, 1.0, 1.0}; }
  void run(const double* params, float* out) const override;
  // The closed-form solution at the output points (for tests).
  std::vector<double> exact(const double* params) const;

 private:
  int64_t points_, refine_;
  double t_end_;
};

// How the simulation parameters of each round are chosen.
enum class Acquire {
  random,    // uniform draws from each simulation rank's own stream
  variance,  // the trainers pick where the ensemble disagrees most (needs ensemble >= 2)
};
// "random" / "variance"; parse_acquire throws naming the value and the choices.
const char* acquire_name(Acquire a);
Acquire parse_acquire(const std::string& s);

// How simulation results reach the trainers.
enum class Exchange {
  sync,   // one world allgather a round: every round waits for the slowest simulation rank; deterministic
  async,  // point-to-point as each batch is done; trainers take what has arrived; order-dependent
};
// "sync" / "async"; parse_exchange throws naming the value and the choices.
const char* exchange_name(Exchange e);
Exchange parse_exchange(const std::string& s);

struct OnlineOptions {
  int64_t sim_ranks = 1;          // the first sim_ranks ranks simulate; the rest train
  int64_t sims_per_round = 16;    // per simulation rank
  int64_t max_rounds = 50;
  int64_t steps_per_round = 50;   // optimizer steps per trainer round, batches from the buffer
  int64_t batch_size = 64;        // per trainer rank
  double lr = 3e-3;
  std::vector<int64_t> hidden = {64, 64};
  int64_t validation = 64;        // simulations held out to judge the surrogate (run by the trainers at start)
  double target_error = 0.0;      // stop when the validation relative L2 error falls below (0: never early)
  uint64_t seed = 0;
  // Active learning.
  Acquire acquire = Acquire::random;
  int64_t ensemble = 1;           // K surrogates on bootstrap resamples (K = 1: one surrogate on all data); predicts their mean
  int64_t pool = 2048;            // candidates scored per round (variance)
  double explore = 0.25;          // fraction of each round's picks drawn uniformly instead (variance)
  // Checkpoint/restart.
  std::string checkpoint_dir;     // empty: no checkpoints; else checkpoints go to DIR/checkpoints
  int64_t checkpoint_every = 0;   // rounds between checkpoints (0: none, except stop_after_round)
  int64_t stop_after_round = 0;   // end after this round with a checkpoint (0: run to max_rounds)
  bool resume = false;            // continue from the newest valid checkpoint in checkpoint_dir
  // Exchange.
  Exchange exchange = Exchange::sync;
  // Uneven simulation cost, to show what async exchange is for: simulation rank `slow_rank` sleeps
  // (slow_factor - 1) times the CPU time of each batch after computing it, as a node slow_factor times
  // slower would take (sleeping, so it takes no core from the other ranks). slow_factor = 1: no effect.
  int64_t slow_rank = -1;
  double slow_factor = 1.0;
};

// One batch of results as the first trainer received it (async exchange).
struct Arrival {
  int64_t round = 0;   // the round (1-based) whose steps first used it; rounds + 1: arrived in the final drain
  int64_t source = 0;  // the simulation rank
  int64_t batch = 0;   // that rank's batch number (0-based)
  int64_t count = 0;   // simulations in it
  int64_t ticket = 0;  // the order in which the first trainer granted its parameters (0, 1, ...)
};

struct RoundLog {
  int64_t round = 0;
  int64_t samples = 0;            // received by the trainers so far
  double train_loss = 0;          // mean over the round's steps
  double validation_error = 0;    // relative L2 over the held-out simulations
  double seconds = 0;             // since the start
};

struct OnlineResult {
  std::vector<RoundLog> rounds;   // every rank has them (after a resume, the checkpoint's too)
  int64_t simulations = 0;        // run by all simulation ranks together (validation excluded)
  double validation_error = 0;    // at the end
  // Trainer ranks: the trained surrogate (an Ensemble; inputs: parameters
  // scaled to [0, 1]); simulation ranks: null.
  std::shared_ptr<nn::Module> surrogate;
  bool trainer = false;
  // The parameters simulated in each round this call ran, all simulation
  // ranks' in rank order ([sim_ranks * sims_per_round * num_params]); every
  // rank has them. round_params[i] belongs to round first_round + i (0-based).
  // (Sync exchange only; empty with async, where `arrivals` records the order.)
  std::vector<std::vector<double>> round_params;
  int64_t first_round = 0;
  // Async exchange: every batch of results in the order the first trainer received it (every rank has it;
  // after a resume, the checkpoint's first).
  std::vector<Arrival> arrivals;
  // Simulations run by each simulation rank ([sim_ranks]; every rank has them; with sync, this call's only;
  // async, the whole run's).
  std::vector<int64_t> simulations_by_rank;
  // Order-independent checksum of simulation results (sum of record_checksum): a simulation rank's of the
  // results it produced in this call, a trainer's of its whole training buffer. Async: sum over the
  // simulation ranks (and over every call of a resumed run) equals every trainer's; sync, from round 0: likewise.
  uint64_t checksum = 0;
  int64_t sent = 0;               // simulation ranks: results this rank sent to the trainers (this call)
  double seconds = 0;             // wall time of train_online (async: the first trainer's, on every rank)
};

// The checksum of one simulation record: xxHash64 of its num_params doubles, then of its output floats.
uint64_t record_checksum(const double* params, int64_t num_params, const float* output, int64_t output_size);

// K surrogates whose forward is the mean of their predictions (K = 1: the
// member's own output). Members are children "0", "1", ...
class Ensemble : public nn::Module {
 public:
  void add(std::shared_ptr<nn::Module> member);
  int64_t size() const { return static_cast<int64_t>(members_.size()); }
  nn::Module& member(int64_t k) const;
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Ensemble"; }

 private:
  std::vector<std::shared_ptr<nn::Module>> members_;
};

// Ensemble disagreement of N candidates: member_predictions are K >= 2 tensors
// [N, M]; returns for each row the variance over the members (population
// variance, divided by K) averaged over the M outputs. Throws on K < 2 or
// mismatched shapes.
std::vector<double> ensemble_variance(const std::vector<Tensor>& member_predictions);

// Batch selection with diversity: splits the N scores into n contiguous
// chunks (sizes differ by at most one) and returns the index of the highest
// score of each chunk (the first on ties), in chunk order. 1 <= n <= N.
std::vector<int64_t> select_in_chunks(const std::vector<double>& scores, int64_t n);

// The variance acquisition of one round: scores `pool` uniform candidates
// (seed, stream 5000000 + round) by ensemble_variance, takes n - e of them by
// select_in_chunks and adds e = round(explore * n) uniform draws (stream
// 6000000 + round). Returns [n * num_params] unscaled parameters.
std::vector<double> acquire_params(Ensemble& ensemble, const Simulation& sim, int64_t n, int64_t pool,
                                   double explore, uint64_t seed, int64_t round);

// Runs the online training on every rank of `world` (at least 2 ranks, and
// 1 <= sim_ranks < world.size()). `on_round` (world rank 0 with sync exchange,
// the first trainer with async) sees each round's log. The trainer ranks end
// with identical surrogates. Async exchange: arrivals and simulations_by_rank
// cover the whole run (a checkpoint's included); sent and a simulation rank's
// checksum this call's only.
OnlineResult train_online(const Simulation& sim, const OnlineOptions& options, dist::Communicator& world,
                          const std::function<void(const RoundLog&)>& on_round = {});

// The surrogate's prediction for parameter rows [N, num_params] (unscaled).
Tensor predict(nn::Module& surrogate, const Simulation& sim, const std::vector<double>& params);

// Relative L2 error of the surrogate against the simulation over `n` fresh
// parameter draws (from `seed`), and the time per evaluation of each.
struct Speedup {
  double error = 0, simulation_s = 0, surrogate_s = 0;
};
Speedup surrogate_speedup(nn::Module& surrogate, const Simulation& sim, int64_t n, uint64_t seed);

// Modulation: scores `candidates` random parameter draws with the surrogate
// by `objective` (of an output, higher is better), runs the real simulation
// for the `verify` best, and returns them best first with both scores.
struct Steered {
  std::vector<double> params;
  double predicted = 0, simulated = 0;
};
std::vector<Steered> steer_sweep(nn::Module& surrogate, const Simulation& sim,
                                 const std::function<double(const float* output)>& objective, int64_t candidates,
                                 int64_t verify, uint64_t seed);

// Uniform parameter draws in the simulation's box, deterministic in `seed`
// and `stream` (a rank, say): [n * num_params] values.
std::vector<double> sample_params(const Simulation& sim, int64_t n, uint64_t seed, uint64_t stream);

}  // namespace hpdl::workflow
