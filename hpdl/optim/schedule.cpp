// Learning-rate schedule formulas; see schedule.h for the math and sources.
#include "hpdl/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "hpdl/core/error.h"

namespace hpdl::optim {

namespace {

void check_t(int64_t t) { HPDL_CHECK(t >= 0, "schedule: step index must be >= 0, got {}", t); }
void check_lr(double lr, const char* what) {
  HPDL_CHECK(lr >= 0 && std::isfinite(lr), "schedule: {} must be finite and >= 0, got {}", what, lr);
}

}  // namespace

ConstantSchedule::ConstantSchedule(double lr) : lr_(lr) { check_lr(lr, "lr"); }
double ConstantSchedule::lr(int64_t t) const {
  check_t(t);
  return lr_;
}

StepDecay::StepDecay(double lr, double gamma, int64_t step_size) : lr_(lr), gamma_(gamma), step_size_(step_size) {
  check_lr(lr, "lr");
  HPDL_CHECK(gamma > 0, "StepDecay: gamma must be > 0, got {}", gamma);
  HPDL_CHECK(step_size > 0, "StepDecay: step_size must be > 0, got {}", step_size);
}

StepDecay::StepDecay(double lr, double gamma, std::vector<int64_t> milestones)
    : lr_(lr), gamma_(gamma), milestones_(std::move(milestones)) {
  check_lr(lr, "lr");
  HPDL_CHECK(gamma > 0, "StepDecay: gamma must be > 0, got {}", gamma);
  for (size_t i = 0; i < milestones_.size(); ++i)
    HPDL_CHECK(milestones_[i] > 0 && (i == 0 || milestones_[i] > milestones_[i - 1]),
               "StepDecay: milestones must be positive and strictly increasing (milestone {} is {})", i,
               milestones_[i]);
}

double StepDecay::lr(int64_t t) const {
  check_t(t);
  int64_t k = step_size_ > 0 ? t / step_size_
                             : std::upper_bound(milestones_.begin(), milestones_.end(), t) - milestones_.begin();
  return lr_ * std::pow(gamma_, static_cast<double>(k));
}

CosineDecay::CosineDecay(double lr, int64_t total, double final_lr) : lr_(lr), final_(final_lr), total_(total) {
  check_lr(lr, "lr");
  check_lr(final_lr, "final_lr");
  HPDL_CHECK(total > 0, "CosineDecay: total_steps must be > 0, got {}", total);
}

double CosineDecay::lr(int64_t t) const {
  check_t(t);
  if (t >= total_) return final_;
  const double x = static_cast<double>(t) / static_cast<double>(total_);
  return final_ + (lr_ - final_) * 0.5 * (1 + std::cos(std::numbers::pi * x));
}

PolynomialDecay::PolynomialDecay(double lr, int64_t total, double power, double final_lr)
    : lr_(lr), final_(final_lr), power_(power), total_(total) {
  check_lr(lr, "lr");
  check_lr(final_lr, "final_lr");
  HPDL_CHECK(total > 0, "PolynomialDecay: total_steps must be > 0, got {}", total);
  HPDL_CHECK(power > 0, "PolynomialDecay: power must be > 0, got {}", power);
}

double PolynomialDecay::lr(int64_t t) const {
  check_t(t);
  if (t >= total_) return final_;
  const double x = static_cast<double>(t) / static_cast<double>(total_);
  return final_ + (lr_ - final_) * std::pow(1 - x, power_);
}

Warmup::Warmup(SchedulePtr inner, int64_t warmup, double start_factor)
    : inner_(std::move(inner)), warmup_(warmup), start_factor_(start_factor) {
  HPDL_CHECK(inner_ != nullptr, "Warmup: inner schedule is null");
  HPDL_CHECK(warmup >= 0, "Warmup: warmup_steps must be >= 0, got {}", warmup);
  HPDL_CHECK(start_factor >= 0 && start_factor <= 1, "Warmup: start_factor must be in [0, 1], got {}", start_factor);
}

double Warmup::lr(int64_t t) const {
  check_t(t);
  if (t >= warmup_) return inner_->lr(t - warmup_);
  const double frac = static_cast<double>(t) / static_cast<double>(warmup_);
  return inner_->lr(0) * (start_factor_ + (1 - start_factor_) * frac);
}

double linear_scaled_lr(double base_lr, int64_t global_batch, int64_t base_batch) {
  HPDL_CHECK(global_batch > 0 && base_batch > 0, "linear_scaled_lr: batch sizes must be > 0, got {} and {}",
             global_batch, base_batch);
  return base_lr * static_cast<double>(global_batch) / static_cast<double>(base_batch);
}

}  // namespace hpdl::optim
