// Optimizers and schedules by name, from flat configs: what the trainer, the
// CLI and the tuner build from a TOML [optimizer] / [schedule] table.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hpdl/optim/optimizers.h"
#include "hpdl/optim/schedule.h"

namespace hpdl::optim {

// Fields a given optimizer does not use are ignored.
struct OptimizerConfig {
  std::string name = "sgd";  // sgd, adamw (adam = adamw with weight_decay 0), lars, lamb
  double lr = 0.1;
  double momentum = 0.9;      // sgd, lars
  double dampening = 0.0;     // sgd
  bool nesterov = false;      // sgd
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = -1;            // < 0: the optimizer's default (adamw 1e-8, lamb 1e-6, lars 0)
  double eta = 0.001;         // lars trust coefficient
  bool exclude_1d = true;     // lars, lamb
};
// Throws for an unknown name, listing the known ones.
std::unique_ptr<Optimizer> make_optimizer(std::vector<ParamSpec> params, const OptimizerConfig& config);

struct ScheduleConfig {
  std::string name = "constant";  // constant, step, multistep, cosine, polynomial
  double lr = 0.1;
  int64_t total_steps = 0;        // cosine, polynomial (including warmup)
  double final_lr = 0.0;          // cosine, polynomial
  double gamma = 0.1;             // step, multistep
  int64_t step_size = 0;          // step
  std::vector<int64_t> milestones;  // multistep (counted from the start, warmup included)
  double power = 2.0;             // polynomial
  int64_t warmup_steps = 0;       // linear warmup before the schedule (0: none)
  double warmup_start_factor = 0.0;
};
// The decay counts from the end of warmup: total_steps and milestones are
// given from step 0 and shifted by warmup_steps here, so a cosine schedule
// reaches final_lr exactly at total_steps. Throws naming the bad field.
SchedulePtr make_schedule(const ScheduleConfig& config);

}  // namespace hpdl::optim
