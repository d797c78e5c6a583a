// Name-to-object factories for optimizers and schedules.
#include "hpdl/optim/factory.h"

namespace hpdl::optim {

std::unique_ptr<Optimizer> make_optimizer(std::vector<ParamSpec> params, const OptimizerConfig& c) {
  if (c.name == "sgd")
    return std::make_unique<SGD>(std::move(params), SGDOptions{.lr = c.lr, .momentum = c.momentum,
                                                               .dampening = c.dampening,
                                                               .weight_decay = c.weight_decay,
                                                               .nesterov = c.nesterov});
  if (c.name == "adamw" || c.name == "adam")
    return std::make_unique<AdamW>(std::move(params),
                                   AdamWOptions{.lr = c.lr, .beta1 = c.beta1, .beta2 = c.beta2,
                                                .eps = c.eps < 0 ? 1e-8 : c.eps,
                                                .weight_decay = c.name == "adam" ? 0.0 : c.weight_decay});
  if (c.name == "lars")
    return std::make_unique<LARS>(std::move(params),
                                  LARSOptions{.lr = c.lr, .momentum = c.momentum, .weight_decay = c.weight_decay,
                                              .eta = c.eta, .eps = c.eps < 0 ? 0.0 : c.eps,
                                              .exclude_1d = c.exclude_1d});
  if (c.name == "lamb")
    return std::make_unique<LAMB>(std::move(params),
                                  LAMBOptions{.lr = c.lr, .beta1 = c.beta1, .beta2 = c.beta2,
                                              .eps = c.eps < 0 ? 1e-6 : c.eps, .weight_decay = c.weight_decay,
                                              .exclude_1d = c.exclude_1d});
  HPDL_FAIL("unknown optimizer '{}' (known: sgd, adam, adamw, lars, lamb)", c.name);
}

SchedulePtr make_schedule(const ScheduleConfig& c) {
  const int64_t w = c.warmup_steps;
  HPDL_CHECK(w >= 0, "schedule: warmup_steps must be >= 0, got {}", w);
  SchedulePtr inner;
  if (c.name == "constant") {
    inner = std::make_shared<ConstantSchedule>(c.lr);
  } else if (c.name == "step") {
    HPDL_CHECK(c.step_size > 0, "schedule 'step': step_size must be > 0, got {}", c.step_size);
    inner = std::make_shared<StepDecay>(c.lr, c.gamma, c.step_size);
  } else if (c.name == "multistep") {
    std::vector<int64_t> shifted;
    for (int64_t m : c.milestones) {
      HPDL_CHECK(m > w, "schedule 'multistep': milestone {} must come after warmup ({} steps)", m, w);
      shifted.push_back(m - w);
    }
    inner = std::make_shared<StepDecay>(c.lr, c.gamma, shifted);
  } else if (c.name == "cosine" || c.name == "polynomial") {
    HPDL_CHECK(c.total_steps > w, "schedule '{}': total_steps ({}) must exceed warmup_steps ({})", c.name,
               c.total_steps, w);
    if (c.name == "cosine")
      inner = std::make_shared<CosineDecay>(c.lr, c.total_steps - w, c.final_lr);
    else
      inner = std::make_shared<PolynomialDecay>(c.lr, c.total_steps - w, c.power, c.final_lr);
  } else {
    HPDL_FAIL("unknown schedule '{}' (known: constant, step, multistep, cosine, polynomial)", c.name);
  }
  if (w == 0) return inner;
  return std::make_shared<Warmup>(inner, w, c.warmup_start_factor);
}

}  // namespace hpdl::optim
