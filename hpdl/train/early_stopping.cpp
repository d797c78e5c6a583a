// Best-so-far tracking and early stopping (design decision 72).
#include "hpdl/train/early_stopping.h"

#include <cmath>
#include <utility>
#include <vector>

#include <fmt/ranges.h>

#include "hpdl/core/error.h"

namespace hpdl::train {

bool metric_lower_is_better(const std::string& metric) {
  const auto under = metric.rfind('_');
  const std::string m = under == std::string::npos ? metric : metric.substr(under + 1);
  return m == "loss" || m == "rmse" || m == "mae";
}

std::string resolve_monitor(const Config& c, const std::string& src) {
  const std::string& m = c.train.monitor;
  const bool validation = c.data.validation > 0;
  if (m == "auto") return validation ? "val_loss" : "test_loss";
  const bool regression = c.train.loss != "cross_entropy";
  std::vector<std::string> allowed;
  for (const char* split : {"val_", "test_"}) {
    allowed.push_back(std::string(split) + "loss");
    if (regression)
      for (const char* r : {"rmse", "mae", "r2"}) allowed.push_back(std::string(split) + r);
    else
      allowed.push_back(std::string(split) + "accuracy");
  }
  bool known = false;
  for (const auto& a : allowed) known = known || a == m;
  HPDL_CHECK(known, "{}: train.monitor = '{}' is not a metric train.loss = '{}' reports; use auto or one of {}", src,
             m, c.train.loss, fmt::join(allowed, ", "));
  HPDL_CHECK(validation || m.rfind("val_", 0) != 0, "{}: train.monitor = '{}' needs a validation split: set "
             "data.validation to the number of training samples to hold out, or monitor a test_ metric", src, m);
  return m;
}

EarlyStopping::EarlyStopping(std::string monitor, bool lower_is_better, double min_delta, int64_t patience)
    : monitor_(std::move(monitor)), lower_(lower_is_better), min_delta_(min_delta), patience_(patience) {
  HPDL_CHECK(min_delta >= 0 && std::isfinite(min_delta), "train.early_stopping_min_delta must be finite and >= 0, "
             "got {}", min_delta);
  HPDL_CHECK(patience >= 0, "train.early_stopping_patience must be >= 0, got {}", patience);
}

EarlyStopping::EarlyStopping(const Config& c)
    : EarlyStopping(resolve_monitor(c), metric_lower_is_better(resolve_monitor(c)), c.train.early_stopping_min_delta,
                    c.train.early_stopping_patience) {}

bool EarlyStopping::update(double value, int64_t epoch, int64_t step) {
  // A first finite value is the best so far; later ones must beat it by more than min_delta.
  // Every comparison with NaN is false, so a NaN counts as no improvement.
  const bool improved = std::isfinite(value) &&
                        (!has_best_ || (lower_ ? value < best_ - min_delta_ : value > best_ + min_delta_));
  if (improved) {
    has_best_ = true;
    best_ = value, best_epoch_ = epoch, best_step_ = step;
    bad_evaluations_ = 0;
  } else {
    ++bad_evaluations_;
  }
  return improved;
}

nlohmann::json EarlyStopping::state() const {
  return {{"monitor", monitor_},
          {"best", has_best_ ? nlohmann::json(best_) : nlohmann::json(nullptr)},
          {"best_epoch", best_epoch_},
          {"best_step", best_step_},
          {"bad_evaluations", bad_evaluations_}};
}

bool EarlyStopping::load_state(const nlohmann::json& s, const std::string& src) {
  try {
    if (s.at("monitor").get<std::string>() != monitor_) return false;
    has_best_ = !s.at("best").is_null();
    best_ = has_best_ ? s.at("best").get<double>() : 0.0;
    best_epoch_ = s.at("best_epoch").get<int64_t>();
    best_step_ = s.at("best_step").get<int64_t>();
    bad_evaluations_ = s.at("bad_evaluations").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    HPDL_FAIL("{}: the early-stopping state (extra.early_stopping) is malformed: {}", src, e.what());
  }
  HPDL_CHECK(bad_evaluations_ >= 0, "{}: extra.early_stopping.bad_evaluations = {} is negative", src,
             bad_evaluations_);
  return true;
}

}  // namespace hpdl::train
