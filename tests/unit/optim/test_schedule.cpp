// Learning-rate schedules at chosen steps, against the closed forms, and the
// optimizer/schedule factories.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "hpdl/core/error.h"
#include "hpdl/optim/factory.h"
#include "hpdl/optim/schedule.h"

namespace hpdl::optim {
namespace {

TEST(Schedule, ConstantAndStep) {
  EXPECT_EQ(ConstantSchedule(0.3)(1000), 0.3);
  StepDecay every(1.0, 0.1, 30);
  EXPECT_DOUBLE_EQ(every(0), 1.0);
  EXPECT_DOUBLE_EQ(every(29), 1.0);
  EXPECT_DOUBLE_EQ(every(30), 0.1);
  EXPECT_NEAR(every(60), 0.01, 1e-15);
  StepDecay at(1.0, 0.5, std::vector<int64_t>{10, 20});
  EXPECT_DOUBLE_EQ(at(9), 1.0);
  EXPECT_DOUBLE_EQ(at(10), 0.5);
  EXPECT_DOUBLE_EQ(at(25), 0.25);
  EXPECT_THROW(StepDecay(1.0, 0.5, std::vector<int64_t>{20, 10}), Error);
  EXPECT_THROW(every(-1), Error);
}

TEST(Schedule, Cosine) {
  CosineDecay c(1.0, 100, 0.1);
  EXPECT_DOUBLE_EQ(c(0), 1.0);
  EXPECT_NEAR(c(50), 0.1 + 0.9 * 0.5, 1e-15);
  EXPECT_NEAR(c(25), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-15);  // 0.8681980...
  EXPECT_DOUBLE_EQ(c(100), 0.1);
  EXPECT_DOUBLE_EQ(c(500), 0.1);
}

TEST(Schedule, Polynomial) {
  PolynomialDecay p(2.0, 100, 2.0);
  EXPECT_DOUBLE_EQ(p(0), 2.0);
  EXPECT_DOUBLE_EQ(p(50), 0.5);   // 2 * 0.5^2
  EXPECT_DOUBLE_EQ(p(90), 2.0 * 0.1 * 0.1);
  EXPECT_DOUBLE_EQ(p(100), 0.0);
  PolynomialDecay lin(1.0, 10, 1.0, 0.5);
  EXPECT_DOUBLE_EQ(lin(5), 0.75);
}

TEST(Schedule, WarmupComposesWithAnyInner) {
  auto inner = std::make_shared<CosineDecay>(1.0, 100);
  Warmup w(inner, 10, 0.1);
  EXPECT_DOUBLE_EQ(w(0), 0.1);
  EXPECT_DOUBLE_EQ(w(5), 0.1 + 0.9 * 0.5);
  EXPECT_DOUBLE_EQ(w(10), 1.0);       // inner(0)
  EXPECT_NEAR(w(60), 0.5, 1e-15);     // inner(50)
  Warmup from_zero(std::make_shared<StepDecay>(0.4, 0.1, 100), 4);
  EXPECT_DOUBLE_EQ(from_zero(0), 0.0);
  EXPECT_DOUBLE_EQ(from_zero(2), 0.2);
  EXPECT_NEAR(from_zero(104), 0.04, 1e-15);
  EXPECT_THROW(Warmup(nullptr, 4), Error);
}

TEST(Schedule, LinearScalingRule) {
  EXPECT_DOUBLE_EQ(linear_scaled_lr(0.1, 8192, 256), 3.2);  // Goyal et al.: 0.1 per 256 images
  EXPECT_DOUBLE_EQ(linear_scaled_lr(0.1, 256), 0.1);
  EXPECT_THROW(linear_scaled_lr(0.1, 0), Error);
}


TEST(Factory, SchedulesFromConfig) {
  // Cosine over 110 steps with 10 warmup steps: reaches final_lr exactly at 110.
  ScheduleConfig c;
  c.name = "cosine", c.lr = 1.0, c.total_steps = 110, c.warmup_steps = 10;
  auto s = make_schedule(c);
  EXPECT_DOUBLE_EQ((*s)(0), 0.0);
  EXPECT_DOUBLE_EQ((*s)(10), 1.0);
  EXPECT_NEAR((*s)(60), 0.5, 1e-15);
  EXPECT_DOUBLE_EQ((*s)(110), 0.0);
  // Goyal et al.: warmup 5, then x0.1 at 30, 60, 80 counted from the start.
  auto m = make_schedule({.name = "multistep", .lr = 3.2, .gamma = 0.1, .milestones = {30, 60, 80},
                          .warmup_steps = 5});
  EXPECT_DOUBLE_EQ((*m)(29), 3.2);
  EXPECT_NEAR((*m)(30), 0.32, 1e-15);
  EXPECT_NEAR((*m)(85), 0.0032, 1e-15);
  c.total_steps = 5;
  EXPECT_THROW(make_schedule(c), Error);  // total_steps must exceed warmup
  c.name = "cyclic";
  EXPECT_THROW(make_schedule(c), Error);
}

TEST(Factory, OptimizersByName) {
  Tensor w = Tensor::ones({2, 2}).set_requires_grad();
  const std::vector<std::pair<std::string, std::string>> names = {
      {"sgd", "SGD"}, {"adam", "AdamW"}, {"adamw", "AdamW"}, {"lars", "LARS"}, {"lamb", "LAMB"}};
  for (const auto& [config_name, type] : names)
    EXPECT_EQ(make_optimizer(param_specs({w}), {.name = config_name})->name(), type);
  EXPECT_THROW(make_optimizer(param_specs({w}), {.name = "rmsprop"}), Error);
}

}  // namespace
}  // namespace hpdl::optim
