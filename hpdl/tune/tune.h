// Hyperparameter search over MPI ranks: `hpdl tune SEARCH.toml`.
//
// A search file names a training config, the keys to vary and how (a search
// space), and a method:
//   random  `trials` configurations sampled from the space, each trained with
//           the full budget;
//   grid    every combination of the `choice` lists, each with the full budget;
//   sha     successive halving (Jamieson and Talwalkar 2016; the synchronous
//           form of ASHA, Li et al. 2020): `trials` sampled configurations are
//           trained for `min_resource`, the best 1/eta go on for eta times as
//           long (resuming from their checkpoints), and so on up to
//           `max_resource`.
//   asha    asynchronous successive halving (Li et al. 2020): the rungs of
//           sha, but a trial is promoted as soon as it is in the top 1/eta
//           of the results so far at its rung, and otherwise a new trial is
//           started at the bottom rung, so no group waits for a rung to
//           finish. World rank 0 hosts the scheduler (a thread) that the
//           groups ask for their next job; `trials` configurations are
//           started, then the search drains (see AshaScheduler).
//   hyperband  Hyperband (Li et al. 2018): several successive-halving
//           brackets, from many trials started at `min_resource` to a few
//           trained at `max_resource` from the start, so a search that halves
//           too early in one bracket is hedged by the others. The brackets'
//           sizes follow from min_resource, max_resource and eta (`trials` is
//           not used).
//   pbt     population-based training (Jaderberg et al. 2017): `trials`
//           members train side by side in generations of `interval`; after
//           each, the worst `quantile` of the population take over the
//           weights (checkpoint) of a member of the best `quantile`
//           (exploit) and that member's hyperparameters, each multiplied by
//           `perturb` or 1/perturb, or moved to a neighbouring choice, or
//           with probability `resample` drawn afresh (explore). The hyperparameters thus become a schedule over the run.
// The resource is epochs or optimizer steps. A trial trained part of the way
// keeps the learning-rate schedule of the whole budget (max_resource) and
// stops early (train.stop_after_epoch or train.max_steps), so a resumed trial
// is the run it would have been if trained straight through. The world's ranks are cut into
// groups of `ranks_per_trial` (a communicator each); a group trains its
// trials one after another, data-parallel within the group, and the groups
// run side by side. After each rung every group's results are all-reduced,
// so every rank ranks the trials identically and the next rung needs no
// coordinator (asha instead asks world rank 0's scheduler for each job).
//
// A trial is judged by `metric` on the validation set (data.validation
// training samples held out) when there is one, so the test set stays unseen
// until the best trial's final test accuracy is reported. A regression run
// (train.loss = mse, l1, huber) is judged by its RMSE, MAE, R^2 or loss
// instead of accuracy; `direction` says whether lower or higher wins.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "hpdl/dist/communicator.h"

namespace hpdl::tune {

struct Param {
  enum class Kind { uniform, log_uniform, int_uniform, choice };
  std::string key;  // a config key path, e.g. "optimizer.lr"
  Kind kind = Kind::uniform;
  double low = 0, high = 0;          // uniform, log_uniform, int_uniform (inclusive)
  std::vector<std::string> choices;  // choice: TOML value texts
};

struct SearchConfig {
  std::filesystem::path config;    // the training config (relative paths: to the search file)
  std::vector<std::string> set;    // overrides for every trial ("train.threads=1")
  std::string method = "random";   // random | grid | sha | asha | hyperband | pbt
  int64_t trials = 8;              // random, sha, asha (configurations started at the bottom rung)
  uint64_t seed = 0;               // sampling
  // {val,test}_{accuracy,loss} for classification; {val,test}_{loss,rmse,mae,r2} for a regression
  // loss. Not given in a search file: val_accuracy, or val_rmse for a regression loss.
  std::string metric = "val_accuracy";
  // minimize | maximize; empty: minimize the losses, RMSE and MAE, maximize accuracy and R^2
  // (load_search fills it in, so a loaded search always names its direction).
  std::string direction;
  std::string resource = "epochs";      // epochs | steps
  int64_t min_resource = 1, max_resource = 0;  // sha, asha: first rung's budget; every method: the full budget
  int64_t eta = 3;
  int64_t interval = 1;     // pbt: the budget of one generation
  double quantile = 0.25;   // pbt: the fraction of the population replaced (and copied from) each generation
  double perturb = 1.2;     // pbt: explore multiplies a value by perturb or 1/perturb
  double resample = 0.25;   // pbt: the probability that explore draws a value afresh from the space instead
  int64_t ranks_per_trial = 1;
  std::filesystem::path run_dir = "runs/tune";
  std::vector<Param> space;
};

// Reads and checks a search file; every key of [space] and `set` must be a
// config key (tried on the training config). Errors name the file and the key.
SearchConfig load_search(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});
SearchConfig parse_search(const std::string& toml_text, const std::filesystem::path& source,
                          const std::vector<std::string>& overrides = {});

struct Rung {
  int64_t budget;  // epochs or steps to have trained by the rung's end
  int64_t trials;  // how many trials train to it
};
// Successive halving's rungs: budgets min, min*eta, ... capped at max (the
// last rung is max); trials n, n/eta, ... (at least 1). pbt: every member at
// interval, 2*interval, ... max (the generations). random and grid: one rung
// of every trial at max. hyperband: see brackets(). asha: sha's rungs (its
// trial counts are those sha would train; asha's depend on the order of completion).
std::vector<Rung> rungs(const SearchConfig& search, int64_t trials);

// A search is one or more brackets run one after another; a bracket's trials
// are trial ids first_trial ... first_trial + trials - 1. Hyperband's bracket
// s (s_max down to 0, s_max = floor(log_eta(max/min))) starts
// ceil((s_max+1)/(s+1) * eta^s) trials at max/eta^s; every other method is one bracket.
struct Bracket {
  int64_t first_trial = 0, trials = 0;
  std::vector<Rung> rungs;
};
std::vector<Bracket> brackets(const SearchConfig& search);

// The configurations to try, as override lists ("optimizer.lr=0.0123"): as
// many samples as the brackets hold trials (deterministic in the seed) or,
// for grid, the product of the choice lists in the order given.
std::vector<std::vector<std::string>> trial_overrides(const SearchConfig& search);

// pbt's explore step: each [space] key of `overrides` drawn afresh from the
// space with probability `resample`, else multiplied by perturb or 1/perturb
// (int_uniform: rounded, and moved by at least 1; choice: the neighbouring
// choice), kept within the space's bounds. Deterministic in `seed`.
std::vector<std::string> perturb_overrides(const SearchConfig& search, const std::vector<std::string>& overrides,
                                           uint64_t seed);

inline constexpr double kNoValue = std::numeric_limits<double>::quiet_NaN();
struct Outcome {
  bool ok = true;
  std::string error;           // when !ok
  double val_accuracy = -1, val_loss = -1, test_accuracy = -1, test_loss = -1;
  // Regression runs only (NaN otherwise, and for a set not evaluated).
  double val_rmse = kNoValue, val_mae = kNoValue, val_r2 = kNoValue;
  double test_rmse = kNoValue, test_mae = kNoValue, test_r2 = kNoValue;
  double seconds = 0;
};
struct Record {
  int64_t trial = 0, rung = 0, budget = 0;
  int64_t bracket = 0;  // hyperband's bracket (0 for other methods)
  int64_t parent = -1;  // pbt: the member whose weights this trial took over before this generation; -1: none
  int64_t group = -1;   // asha: the rank group that trained this job
  std::vector<std::string> overrides;
  Outcome outcome;
  double metric = 0;  // the search's metric (NaN when failed)
};
struct SearchResult {
  std::vector<Record> records;  // every trial at every rung it reached, in rung order (asha: in order of completion)
  int64_t best_trial = -1;      // by the metric at the last rung (of any bracket)
  Record best;
};

// Trains `trial` (its overrides) up to `budget` on the ranks of `group`
// (resuming when `resume`), and evaluates it. Must not throw for a failure of
// the trial itself (a diverging loss): return !ok instead.
using TrialRunner = std::function<Outcome(int64_t trial, const std::vector<std::string>& overrides, int64_t budget,
                                          bool resume, dist::Communicator& group)>;

// pbt's exploit step: trial `to` continues from trial `from`'s state (its
// newest checkpoint) with new overrides. Called on world rank 0 only, between
// generations; the other ranks wait at a barrier.
using TrialCloner = std::function<void(int64_t from, int64_t to, const std::vector<std::string>& new_overrides)>;

// ASHA's decision rule (Li et al. 2020, Algorithm 2), apart from MPI and
// time, so that it can be tested on any order of completions. Rungs are
// sha's: budgets min_resource * eta^k, the last one max_resource.
// next() gives a job to an idle worker:
//   1. for rung k from the second highest down to 0: the best trial of the
//      top floor(n_k / eta) of the n_k results so far at rung k (failed
//      trials excluded) that has not been promoted yet goes on to rung k+1
//      (resumed from its checkpoint);
//   2. else, while fewer than `trials` configurations have started, the next
//      one starts at rung 0 (trial ids 0, 1, ... in order: trial_overrides);
//   3. else, while jobs are running, wait: a completion may make a promotion;
//   4. else (the drain's end), if no successful result has reached the top
//      rung, the best unpromoted successful trial of the highest rung that
//      has one is promoted, so that one trial reaches max_resource, as in sha
//      (the paper's ASHA never stops; this budget ends it);
//   5. else done.
// Given the same sequence of next() and report() calls, the decisions are
// the same: only the order of completion, which depends on timing, varies.
// Ranking ties go to the lower trial id. Not thread-safe.
class AshaScheduler {
 public:
  struct Job {
    enum class Kind { run, wait, done };
    Kind kind = Kind::done;
    int64_t trial = -1, rung = 0, budget = 0;  // run only; a job at rung > 0 resumes the trial
  };
  explicit AshaScheduler(const SearchConfig& search);

  Job next();
  // The outcome of a job next() gave (run): its record. Throws if `job` is
  // not running.
  Record report(const Job& job, const Outcome& outcome, int64_t group = -1);

  const std::vector<Record>& records() const { return records_; }  // in order of report()
  const std::vector<int64_t>& budgets() const { return budgets_; }
  int64_t started() const { return started_; }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  // The best record at the highest rung that has any (ties to the lower id,
  // failed last); nullopt before the first report.
  std::optional<Record> best() const;

 private:
  struct Result {
    int64_t trial;
    double metric;  // NaN: failed
  };
  // Rung k's results, best first; only successful ones.
  std::vector<Result> ranked(size_t k) const;
  Job run(int64_t trial, size_t rung);

  SearchConfig search_;
  std::vector<std::vector<std::string>> overrides_;
  std::vector<int64_t> budgets_;
  std::vector<std::vector<Result>> results_;  // per rung, in order of report
  std::vector<std::set<int64_t>> promoted_;   // per rung: trials sent on to the next rung
  std::set<std::pair<int64_t, int64_t>> running_;  // (trial, rung)
  std::vector<Record> records_;
  int64_t started_ = 0;
};

// Runs the search on every rank of `world`. `on_record` (rank 0 only) sees
// each record as its rung completes (asha: as each job completes, on rank
// 0's scheduler thread when there are several groups). Every rank returns
// the same result. pbt needs `clone`. asha with several groups needs MPI at
// MPI_THREAD_SERIALIZED or above (rank 0 trains and schedules at once).
SearchResult run_search(const SearchConfig& search, const TrialRunner& runner, dist::Communicator& world,
                        const std::function<void(const Record&)>& on_record = {}, const TrialCloner& clone = {});

// The real runner: the training config plus `set`, the trial's overrides, the
// budget, train.run_dir = RUN_DIR/trial-NNN and no per-epoch evaluation; then
// the final weights evaluated on the validation set (if any) and, at the full
// budget or when the metric is test_*, on the test set. The
// group's first rank writes the trial's progress to RUN_DIR/trial-NNN/train.log.
TrialRunner training_runner(const SearchConfig& search);

// The real cloner: replaces RUN_DIR/trial-TO/checkpoints by a copy of the
// newest valid checkpoint of trial-FROM (tensors first, then the sidecar that
// commits it, each written under a temporary name and renamed) and notes the
// takeover in trial-TO's train.log.
TrialCloner checkpoint_cloner(const SearchConfig& search);

// Lower is better for the losses, RMSE and MAE; higher for the accuracies and R^2.
bool metric_is_loss(const std::string& metric);
// Whether the search minimizes its metric: `direction` when set, else metric_is_loss(metric).
bool lower_is_better(const SearchConfig& search);
// The search's metric of an outcome; NaN when the trial failed or the metric is absent.
double metric_value(const SearchConfig& search, const Outcome& outcome);

}  // namespace hpdl::tune
