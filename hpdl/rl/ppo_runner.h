// PpoRunner: the PPO training loop as an object that owns everything a run
// carries from one iteration to the next (the environment copies' states and
// current observations, the reset counter, running episode returns, the
// discounted returns of return normalisation, the finished-episode history),
// so that a run can be checkpointed between iterations and resumed bit for
// bit, and run data-parallel over MPI ranks.
//
// Data parallel (a Communicator of P ranks): every rank steps its own K
// environment copies with its own reset seeds and action stream, computes the
// PPO loss on its own rollout, and the gradients are averaged over the ranks
// (one allreduce of all gradients per minibatch step) before the norm clip
// and Adam, so all ranks keep identical parameters. Each iteration the
// observation and return statistics gathered by every rank are merged into
// one (Chan et al.'s parallel update, in rank order), and advantages are
// normalised with the mean and standard deviation of all ranks' rollouts.
#pragma once

#include <deque>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/rl/normalize.h"
#include "hpdl/rl/ppo.h"

namespace hpdl::dist {
class Communicator;
}

namespace hpdl::rl {

class PpoRunner {
 public:
  // envs: K >= 1 copies with the agent's sizes (kept by reference; they must outlive the runner).
  // comm: nullptr for one process; otherwise the ranks to train over (every rank calls every method
  // in the same order, with the same options and K). Resets every copy (seeds from options.env_seed,
  // rank r > 0 offset by r 2^40; rank r > 0 also re-seeds the agent's action and minibatch streams).
  // Throws as train_ppo on mismatched environments or options.
  PpoRunner(Ppo& agent, std::vector<std::unique_ptr<Env>>& envs, const PpoTrainOptions& options,
            dist::Communicator* comm = nullptr);
  ~PpoRunner();
  PpoRunner(const PpoRunner&) = delete;
  PpoRunner& operator=(const PpoRunner&) = delete;

  // One iteration: a rollout of rollout_steps on every copy, then the epochs of minibatch updates.
  // With a communicator, the log's episodes, mean return, moving average and total_steps are over
  // all ranks (identical on every rank); the losses are this rank's.
  PpoIterationLog iterate();
  // Iterations done (0 before the first).
  int64_t iteration() const { return iteration_; }
  // True after options.iterations, or once solved with stop_when_solved.
  bool finished() const;
  const PpoTrainResult& result() const { return result_; }

  // Writes the whole state (parameters, Adam state, normaliser statistics, environment states and
  // observations, generators, counters, episode history) as one checkpoint, a safetensors file and
  // its JSON sidecar, both atomic, in DIR/checkpoints/step-<iteration> (train::CheckpointManager,
  // keeping the newest `keep`). DIR is run_dir, or run_dir/rank-R with more than one rank.
  // Returns the sidecar's path.
  std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, int keep = 2);
  // Restores the newest valid checkpoint of save_checkpoint(run_dir) into this runner and its agent.
  // Returns false when there is none. Throws hpdl::Error naming the file and the field when the
  // checkpoint belongs to a different task, network, option set or number of copies.
  //
  // The checkpoint may come from a run of another rank count A (this run has B ranks). Rank 0
  // picks it (the newest valid of run_dir/checkpoints and run_dir/rank-0/checkpoints, so a run
  // resumed at another count continues from its own newer saves) and tells the others its
  // iteration. The shared state (parameters, Adam state, merged normaliser statistics, the init
  // generator, the update and iteration counts, the global step and episode counts) is the same
  // on every saving rank and is restored exactly on every rank. The per-rank state (environment
  // states and observations, running returns, action and minibatch generators, reset counter,
  // that rank's episode history) follows one rule: rank r < min(A, B) continues rank r's saved
  // state; rank r >= A starts fresh (envs reset with seeds env_seed + r 2^40 + iteration 2^20 + j,
  // action and minibatch streams seeded from (seed, r, iteration), an empty episode history);
  // the saved state of ranks >= B is dropped. Every rank keeps the K copies it was built with.
  // At A == B this is the bitwise-exact resume of before. At A != B, resume_note() holds one line
  // saying this, which rank 0 also prints as a warning; the continued run is then not the run
  // that A ranks would have made (new rollouts), only its shared state is exact.
  bool resume(const std::filesystem::path& run_dir);
  // Empty, or the line describing a resume at another rank count (which ranks continue, which start fresh).
  const std::string& resume_note() const { return resume_note_; }
  // Restores one checkpoint given by its sidecar (step-N.json), written by this rank at this rank count.
  void load_checkpoint(const std::filesystem::path& sidecar);

 private:
  void check_setup() const;
  // own_state: restore this rank's environments, generators and history from the file (written by
  // the same rank of a run of saved_ranks ranks); otherwise only the shared state, then start_fresh.
  void load(const std::filesystem::path& sidecar, int saved_ranks, bool own_state);
  void start_fresh(int64_t iteration);
  void average_gradients(const std::vector<Tensor>& params);
  void merge_statistics(RunningMeanStd& stats, RunningMeanStd& base, const RunningMeanStd& delta);
  uint64_t reset_seed() { return options_.env_seed + rank_offset_ + resets_++; }

  Ppo& agent_;
  std::vector<std::unique_ptr<Env>>& envs_;
  PpoTrainOptions options_;
  dist::Communicator* comm_;
  int rank_ = 0, ranks_ = 1;
  uint64_t rank_offset_ = 0;
  int64_t iteration_ = 0;
  uint64_t resets_ = 0;
  std::vector<Observation> obs_;
  std::vector<double> running_;     // undiscounted return of each copy's current episode (logs)
  std::vector<double> discounted_;  // G <- gamma G + r of each copy's episode (return normalisation)
  std::deque<double> window_;
  double window_sum_ = 0;
  PpoTrainResult result_;
  // Statistics at the start of the iteration (merged over ranks) and this rank's additions since.
  RunningMeanStd obs_base_, ret_base_, obs_delta_, ret_delta_;
  std::string resume_note_;
};

}  // namespace hpdl::rl
