// Learning-rate schedules. A schedule maps the 0-based index of an optimizer
// step to a learning rate; the trainer calls optimizer.set_lr(schedule(t))
// before step t. Everything counts optimizer steps: to express epochs, multiply
// by steps per epoch (e.g. StepDecay(lr, 0.1, 30 * steps_per_epoch)).
// Large-batch recipes: linear scaling and gradual warmup (Goyal et al. 2017,
// "Accurate, Large Minibatch SGD"), polynomial decay (You et al. 2017, LARS),
// cosine decay (Loshchilov & Hutter 2017, SGDR, without restarts).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace hpdl::optim {

class Schedule {
 public:
  virtual ~Schedule() = default;
  // The learning rate for step t >= 0 (throws for t < 0).
  virtual double lr(int64_t t) const = 0;
  double operator()(int64_t t) const { return lr(t); }
};
using SchedulePtr = std::shared_ptr<const Schedule>;

class ConstantSchedule : public Schedule {
 public:
  explicit ConstantSchedule(double lr);
  double lr(int64_t t) const override;

 private:
  double lr_;
};

// lr * gamma^(number of milestones <= t). Milestones strictly increasing.
class StepDecay : public Schedule {
 public:
  // Every `step_size` steps: milestones step_size, 2 step_size, ...
  StepDecay(double lr, double gamma, int64_t step_size);
  // At the given milestones.
  StepDecay(double lr, double gamma, std::vector<int64_t> milestones);
  double lr(int64_t t) const override;

 private:
  double lr_, gamma_;
  int64_t step_size_ = 0;
  std::vector<int64_t> milestones_;
};

// final + (lr - final) * (1 + cos(pi * t / total)) / 2, and final for t >= total.
class CosineDecay : public Schedule {
 public:
  CosineDecay(double lr, int64_t total_steps, double final_lr = 0.0);
  double lr(int64_t t) const override;

 private:
  double lr_, final_;
  int64_t total_;
};

// final + (lr - final) * (1 - t / total)^power, and final for t >= total.
class PolynomialDecay : public Schedule {
 public:
  PolynomialDecay(double lr, int64_t total_steps, double power = 2.0, double final_lr = 0.0);
  double lr(int64_t t) const override;

 private:
  double lr_, final_, power_;
  int64_t total_;
};

// Linear warmup composed with any schedule: for t < warmup_steps,
//   lr = inner(0) * (start_factor + (1 - start_factor) * t / warmup_steps),
// and inner(t - warmup_steps) afterwards. The inner schedule starts when warmup
// ends, so give it total_steps - warmup_steps (and milestones counted from there).
class Warmup : public Schedule {
 public:
  Warmup(SchedulePtr inner, int64_t warmup_steps, double start_factor = 0.0);
  double lr(int64_t t) const override;

 private:
  SchedulePtr inner_;
  int64_t warmup_;
  double start_factor_;
};

// Linear scaling rule (Goyal et al. 2017): base_lr * global_batch / base_batch.
double linear_scaled_lr(double base_lr, int64_t global_batch, int64_t base_batch = 256);

}  // namespace hpdl::optim
