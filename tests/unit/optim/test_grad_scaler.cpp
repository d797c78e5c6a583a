// GradScaler (dynamic loss scaling) on the CPU with float32 parameters: the
// scaled backward and exact unscale (powers of two), a step with an inf or
// NaN gradient (skipped: weights, momentum buffers and step counters
// untouched, scale halved), growth after growth_interval good steps, a fixed
// scale, option checks, and the state dict round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "hpdl/core/error.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optim.h"

namespace hpdl::optim {
namespace {

Tensor param(std::vector<float> v) {
  return Tensor::from_vector<float>(v, {static_cast<int64_t>(v.size())}).set_requires_grad();
}
void set_grad(Tensor& p, std::vector<float> g) { p.set_grad(Tensor::from_vector<float>(g, p.shape())); }

}  // namespace

TEST(GradScaler, ScaledBackwardUnscalesExactly) {
  Tensor w = param({1.0f, -2.0f, 0.5f});
  Tensor x = Tensor::from_vector<float>({3.0f, 1e-6f, -4.0f}, {3});
  GradScaler scaler;  // 2^16
  EXPECT_EQ(scaler.get_scale(), 65536.0);
  Tensor loss = sum(mul(w, x));
  Tensor scaled = scaler.scale(loss);
  EXPECT_FLOAT_EQ(static_cast<float>(scaled.item()), static_cast<float>(loss.item() * 65536.0));
  scaled.backward();
  EXPECT_EQ(w.grad().to_vector<float>(), (std::vector<float>{3.0f * 65536, 1e-6f * 65536, -4.0f * 65536}));
  EXPECT_TRUE(scaler.unscale_and_check({w}));
  EXPECT_EQ(w.grad().to_vector<float>(), (std::vector<float>{3.0f, 1e-6f, -4.0f}));  // power of two: exact
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 65536.0);
  EXPECT_EQ(scaler.growth_tracker(), 1);
}

TEST(GradScaler, NonFiniteGradientSkipsTheStepAndBacksOff) {
  for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    Tensor a = param({1.0f, 2.0f}), b = param({3.0f});
    SGD opt(param_specs({a, b}), {.lr = 0.1, .momentum = 0.9});
    GradScaler scaler;
    // One good step first, so momentum buffers and step counters exist.
    set_grad(a, {65536.0f, 65536.0f});
    set_grad(b, {-65536.0f});
    EXPECT_TRUE(scaler.step(opt));
    const auto wa = a.to_vector<float>(), wb = b.to_vector<float>();
    const auto state = opt.state_dict();
    EXPECT_EQ(opt.step_count(), 1);
    EXPECT_EQ(scaler.growth_tracker(), 1);

    set_grad(a, {1.0f, bad});
    set_grad(b, {2.0f});
    EXPECT_FALSE(scaler.step(opt)) << bad;
    EXPECT_FALSE(scaler.last_step_finite());
    EXPECT_EQ(a.to_vector<float>(), wa);
    EXPECT_EQ(b.to_vector<float>(), wb);
    EXPECT_EQ(opt.step_count(), 1);
    const auto after = opt.state_dict();
    ASSERT_EQ(after.size(), state.size());
    for (auto& [k, t] : state) EXPECT_EQ(after.at(k).to_vector<double>(), t.to_vector<double>()) << k;
    EXPECT_EQ(scaler.get_scale(), 32768.0);
    EXPECT_EQ(scaler.growth_tracker(), 0);
    EXPECT_EQ(scaler.skipped_steps(), 1);
  }
}

TEST(GradScaler, OverflowAfterUnscaleIsCaughtAndHugeFiniteSumsAreNot) {
  // Finite gradients whose sum of magnitudes would overflow float32 are still finite.
  Tensor w = param({3e38f, 3e38f, 3e38f});
  GradScaler scaler({.init_scale = 1.0});
  set_grad(w, {3e38f, 3e38f, -3e38f});
  EXPECT_TRUE(scaler.unscale_and_check({w}));
  scaler.update();
  // A scale below 1 makes unscaling overflow: inf after unscale is caught.
  GradScaler small({.init_scale = 0.25});
  set_grad(w, {3e38f, 1.0f, 1.0f});
  EXPECT_FALSE(small.unscale_and_check({w}));
  small.update();
  EXPECT_EQ(small.get_scale(), 0.125);
}

TEST(GradScaler, ParametersWithoutGradientAreIgnored) {
  Tensor a = param({1.0f}), b = param({2.0f});
  GradScaler scaler;
  set_grad(a, {2.0f});
  EXPECT_TRUE(scaler.unscale_and_check({a, b}));
  EXPECT_FALSE(b.grad().defined());
  scaler.update();
  EXPECT_TRUE(GradScaler().unscale_and_check(std::vector<Tensor>{b}));  // no gradient at all: a finite step
}

TEST(GradScaler, GrowsAfterGrowthIntervalGoodSteps) {
  Tensor w = param({1.0f});
  GradScaler scaler({.init_scale = 8.0, .growth_interval = 3});
  auto good = [&] {
    set_grad(w, {1.0f});
    EXPECT_TRUE(scaler.unscale_and_check({w}));
    scaler.update();
  };
  good();
  good();
  EXPECT_EQ(scaler.get_scale(), 8.0);
  good();
  EXPECT_EQ(scaler.get_scale(), 16.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
  good();
  good();
  // A bad step resets the count: three more good ones are needed.
  set_grad(w, {std::numeric_limits<float>::infinity()});
  EXPECT_FALSE(scaler.unscale_and_check({w}));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 8.0);
  good();
  good();
  EXPECT_EQ(scaler.get_scale(), 8.0);
  good();
  EXPECT_EQ(scaler.get_scale(), 16.0);
}

TEST(GradScaler, NeverGrowsToInfinity) {
  Tensor w = param({1.0f});
  GradScaler scaler({.init_scale = std::ldexp(1.0, 1023), .growth_interval = 1});
  set_grad(w, {1.0f});
  EXPECT_TRUE(scaler.unscale_and_check({w}));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), std::ldexp(1.0, 1023));
}

TEST(GradScaler, FixedScaleNeverChangesButStillSkips) {
  Tensor w = param({1.0f});
  SGD opt(param_specs({w}), {.lr = 1.0});
  GradScaler scaler({.init_scale = 128.0, .growth_interval = 1, .dynamic = false});
  set_grad(w, {256.0f});
  EXPECT_TRUE(scaler.step(opt));
  EXPECT_EQ(w.to_vector<float>(), std::vector<float>{-1.0f});  // 1 - 1.0 * (256 / 128)
  EXPECT_EQ(scaler.get_scale(), 128.0);
  set_grad(w, {std::numeric_limits<float>::quiet_NaN()});
  EXPECT_FALSE(scaler.step(opt));
  EXPECT_EQ(w.to_vector<float>(), std::vector<float>{-1.0f});
  EXPECT_EQ(scaler.get_scale(), 128.0);
  EXPECT_EQ(scaler.skipped_steps(), 1);
}

TEST(GradScaler, RejectsBadOptionsAndMisuse) {
  EXPECT_THROW(GradScaler({.init_scale = 0}), Error);
  EXPECT_THROW(GradScaler({.init_scale = std::numeric_limits<double>::infinity()}), Error);
  EXPECT_THROW(GradScaler({.growth_factor = 1.0}), Error);
  EXPECT_THROW(GradScaler({.backoff_factor = 1.0}), Error);
  EXPECT_THROW(GradScaler({.backoff_factor = 0.0}), Error);
  EXPECT_THROW(GradScaler({.growth_interval = 0}), Error);
  GradScaler s;
  EXPECT_THROW(s.update(), Error);  // update() without unscale_and_check()
}

TEST(GradScaler, StateDictRoundTrip) {
  Tensor w = param({1.0f});
  GradScaler a({.init_scale = 1024.0, .growth_interval = 5});
  for (int i = 0; i < 3; ++i) {
    set_grad(w, {1.0f});
    a.unscale_and_check({w});
    a.update();
  }
  set_grad(w, {std::numeric_limits<float>::infinity()});
  a.unscale_and_check({w});
  a.update();
  set_grad(w, {1.0f});
  a.unscale_and_check({w});
  a.update();
  auto st = a.state_dict();
  ASSERT_EQ(st.size(), 3u);
  EXPECT_EQ(st.at("scale").dtype(), DType::f64);
  EXPECT_EQ(st.at("scale").item(), 512.0);
  EXPECT_EQ(st.at("growth_tracker").item(), 1.0);
  EXPECT_EQ(st.at("skipped_steps").item(), 1.0);

  GradScaler b({.init_scale = 1024.0, .growth_interval = 5});
  b.load_state_dict(st);
  EXPECT_EQ(b.get_scale(), a.get_scale());
  EXPECT_EQ(b.growth_tracker(), a.growth_tracker());
  EXPECT_EQ(b.skipped_steps(), a.skipped_steps());
  // Both continue identically: four more good steps grow both to 1024.
  for (GradScaler* s : {&a, &b})
    for (int i = 0; i < 4; ++i) {
      set_grad(w, {1.0f});
      s->unscale_and_check({w});
      s->update();
    }
  EXPECT_EQ(a.get_scale(), 1024.0);
  EXPECT_EQ(b.get_scale(), 1024.0);

  auto bad = st;
  bad.erase("growth_tracker");
  EXPECT_THROW(b.load_state_dict(bad), Error);
  bad = st;
  bad["extra"] = Tensor::scalar(1.0);
  EXPECT_THROW(b.load_state_dict(bad), Error);
  bad = st;
  bad["scale"] = Tensor::scalar(-2.0, DType::f64);
  EXPECT_THROW(b.load_state_dict(bad), Error);
  EXPECT_EQ(b.get_scale(), 1024.0);  // a failed load changes nothing
}

}  // namespace hpdl::optim
