// Model selection during `hpdl train`: the monitored metric (train.monitor), the best value seen
// so far, and the count of evaluations without improvement that ends a run early
// (train.early_stopping_patience). The trainer feeds it the metrics of each evaluation; its
// state travels in checkpoint sidecars so that a resumed run (train.stop_after_epoch chunks,
// --resume after a kill) decides exactly as one uninterrupted run would.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "hpdl/train/config.h"

namespace hpdl::train {

// Whether a smaller value of a monitored metric ("val_loss", "test_rmse", ...) is better: the
// losses, RMSE and MAE; accuracy and R^2 are better larger. `hpdl tune` ranks trials the same way.
bool metric_lower_is_better(const std::string& metric);

// train.monitor resolved: "auto" is val_loss with data.validation > 0, else test_loss.
// Throws naming train.monitor and the allowed values for a metric the objective does not report
// (accuracy with a regression loss, rmse with cross entropy) or val_* without data.validation.
std::string resolve_monitor(const Config& config, const std::string& source = "config");

class EarlyStopping {
 public:
  // `patience` 0: never stops (only tracks the best). min_delta >= 0: the least change that counts
  // as an improvement.
  EarlyStopping(std::string monitor, bool lower_is_better, double min_delta, int64_t patience);
  explicit EarlyStopping(const Config& config);  // from train.monitor, train.early_stopping_*

  // One evaluation's value of the monitored metric, after `epoch` epochs and `step` steps. Returns
  // true when it improves on the best so far by more than min_delta (the first finite value always
  // does) and records it as the best; otherwise counts one more evaluation without improvement.
  // NaN never improves.
  bool update(double value, int64_t epoch, int64_t step);
  // patience > 0 and the last `patience` evaluations did not improve.
  bool should_stop() const { return patience_ > 0 && bad_evaluations_ >= patience_; }

  const std::string& monitor() const { return monitor_; }
  bool lower_is_better() const { return lower_; }
  int64_t patience() const { return patience_; }
  bool has_best() const { return has_best_; }
  double best() const { return best_; }
  int64_t best_epoch() const { return best_epoch_; }
  int64_t best_step() const { return best_step_; }
  int64_t bad_evaluations() const { return bad_evaluations_; }

  // {"monitor", "best", "best_epoch", "best_step", "bad_evaluations"} ("best" null before the first
  // finite value), for a checkpoint sidecar's "extra".
  nlohmann::json state() const;
  // Restores state() written by a run that monitored the same metric and returns true; returns
  // false (and keeps a fresh state) when it monitored another one. Throws naming `source` when
  // the fields are malformed.
  bool load_state(const nlohmann::json& state, const std::string& source);

 private:
  std::string monitor_;
  bool lower_ = true;
  double min_delta_ = 0;
  int64_t patience_ = 0;
  bool has_best_ = false;
  double best_ = 0;
  int64_t best_epoch_ = 0, best_step_ = 0, bad_evaluations_ = 0;
};

}  // namespace hpdl::train
