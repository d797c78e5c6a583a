// Optimizer steps against values computed by hand from each paper's formulas
// (2-element float64 tensors, gradients set directly so every number can be
// followed), plus 1-D exclusion, state-dict round trips and clipping.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/optim/optim.h"

namespace hpdl::optim {
namespace {

Tensor param(std::vector<double> v, Shape shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
  return Tensor::from_vector<double>(v, shape).set_requires_grad();
}

void set_grad(Tensor& p, std::vector<double> g) { p.set_grad(Tensor::from_vector<double>(g, p.shape())); }

void expect_near(const Tensor& t, std::vector<double> want, double tol = 1e-12) {
  auto got = t.to_vector<double>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

TEST(SGD, PlainStepIsLrTimesGrad) {
  Tensor w = param({1.0, -2.0});
  SGD opt(param_specs({w}), {.lr = 0.5});
  set_grad(w, {0.2, -0.4});
  opt.step();
  expect_near(w, {0.9, -1.8});
}

TEST(SGD, MomentumNesterovWeightDecayTwoSteps) {
  // lr 0.1, momentum 0.9, weight decay 0.1, Nesterov. w0 = [1, -2].
  // step 1, g1 = [0.5, 1]:  g' = g1 + 0.1 w0 = [0.6, 0.8]; buf = g' = [0.6, 0.8]
  //   update = g' + 0.9 buf = [1.14, 1.52];  w1 = w0 - 0.1 update = [0.886, -2.152]
  // step 2, g2 = [-0.5, 2]: g' = g2 + 0.1 w1 = [-0.4114, 1.7848]
  //   buf = 0.9 [0.6, 0.8] + g' = [0.1286, 2.5048]
  //   update = g' + 0.9 buf = [-0.29566, 4.03912];  w2 = w1 - 0.1 update = [0.915566, -2.555912]
  Tensor w = param({1.0, -2.0});
  SGD opt(param_specs({w}), {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1, .nesterov = true});
  set_grad(w, {0.5, 1.0});
  opt.step();
  expect_near(w, {0.886, -2.152});
  set_grad(w, {-0.5, 2.0});
  opt.step();
  expect_near(w, {0.915566, -2.555912});
  EXPECT_EQ(opt.step_count(), 2);
}

TEST(SGD, RejectsBadOptions) {
  Tensor w = param({1.0});
  EXPECT_THROW(SGD(param_specs({w}), {.lr = 0.1, .nesterov = true}), Error);  // Nesterov needs momentum
  EXPECT_THROW(SGD(param_specs({w}), {.lr = -1}), Error);
  EXPECT_THROW(SGD(param_specs(std::vector<Tensor>{}), {}), Error);
  Tensor frozen = Tensor::ones({2}, DType::f64);
  EXPECT_THROW(SGD(param_specs({frozen}), {}), Error);
}

TEST(SGD, SkipsParametersWithoutGradient) {
  Tensor a = param({1.0}), b = param({2.0});
  SGD opt(param_specs({a, b}), {.lr = 1.0});
  set_grad(a, {0.5});
  opt.step();
  expect_near(a, {0.5});
  expect_near(b, {2.0});
}

TEST(AdamW, TwoStepsMatchTheFormula) {
  // lr 0.1, betas (0.9, 0.999), eps 1e-8, decoupled weight decay 0.1. w0 = [1, -2].
  // step 1, g1 = [0.5, 1]: w <- 0.99 w0 = [0.99, -1.98]; m = 0.1 g1, v = 0.001 g1^2,
  //   so m^ = g1 and v^ = g1^2: the step is lr * g1/(|g1| + eps) ~ 0.1 sign(g1)
  //   w1 = [0.99 - 0.1*0.5/(0.5+1e-8), -1.98 - 0.1*1/(1+1e-8)] = [0.890000002, -2.079999999]
  // step 2, g2 = [-0.5, 2]: w <- 0.99 w1; m = 0.9 m + 0.1 g2 = [-0.005, 0.29];
  //   v = 0.999 v + 0.001 g2^2 = [0.00049975, 0.004999]; m^ = m/0.19; v^ = v/0.001999
  //   w2 = 0.99 w1 - 0.1 m^/(sqrt(v^) + eps)
  Tensor w = param({1.0, -2.0});
  AdamW opt(param_specs({w}), {.lr = 0.1, .eps = 1e-8, .weight_decay = 0.1});
  set_grad(w, {0.5, 1.0});
  opt.step();
  expect_near(w, {0.99 - 0.1 * 0.5 / (0.5 + 1e-8), -1.98 - 0.1 / (1 + 1e-8)});
  expect_near(w, {0.890000002, -2.079999999}, 1e-9);
  set_grad(w, {-0.5, 2.0});
  opt.step();
  const double m_hat[2] = {-0.005 / 0.19, 0.29 / 0.19};
  const double v_hat[2] = {0.00049975 / 0.001999, 0.004999 / 0.001999};
  const double w1[2] = {0.99 - 0.1 * 0.5 / (0.5 + 1e-8), -1.98 - 0.1 / (1 + 1e-8)};
  expect_near(w, {0.99 * w1[0] - 0.1 * m_hat[0] / (std::sqrt(v_hat[0]) + 1e-8),
                  0.99 * w1[1] - 0.1 * m_hat[1] / (std::sqrt(v_hat[1]) + 1e-8)});
  expect_near(w, {0.8863631597694736, -2.1557182009818336}, 1e-12);
}

TEST(AdamW, NoWeightDecayOptionSkipsDecay) {
  Tensor w = param({1.0, 1.0});
  auto specs = param_specs({w});
  specs[0].no_weight_decay = true;
  AdamW opt(specs, {.lr = 0.1, .weight_decay = 0.5});
  set_grad(w, {1.0, -1.0});
  opt.step();  // pure Adam: w -= 0.1 * sign(g)
  expect_near(w, {0.9, 1.1}, 1e-7);
}

TEST(LARS, TrustRatioStepByHand) {
  // w = [[3, 4]] (||w|| = 5), g = [[0.6, 0.8]] (||g|| = 1); eta 0.001, wd 0.01, lr 0.5, momentum 0.9.
  // step 1: local = 0.001 * 5 / (1 + 0.01 * 5) = 0.005 / 1.05 = 0.00476190...
  //   g + wd w = [0.63, 0.84]; d = 0.5 * local * [0.63, 0.84] = [0.63, 0.84] / 420 = [0.0015, 0.002]
  //   buf = d; w1 = [2.9985, 3.998]
  // step 2 (same g): ||w1|| = sqrt(2.9985^2 + 3.998^2) = 4.99750..., local = 0.001 ||w1|| / (1 + 0.01 ||w1||)
  //   d = 0.5 local (g + 0.01 w1); buf = 0.9 buf + d; w2 = w1 - buf = [2.99565075, 3.994201]
  Tensor w = param({3.0, 4.0}, {1, 2});
  LARS opt(param_specs({w}), {.lr = 0.5, .momentum = 0.9, .weight_decay = 0.01, .eta = 0.001});
  set_grad(w, {0.6, 0.8});
  opt.step();
  EXPECT_NEAR(opt.last_trust_ratios()[0], 0.005 / 1.05, 1e-15);
  expect_near(w, {2.9985, 3.998});
  set_grad(w, {0.6, 0.8});
  opt.step();
  const double n1 = std::sqrt(2.9985 * 2.9985 + 3.998 * 3.998);
  const double local = 0.001 * n1 / (1 + 0.01 * n1);
  EXPECT_NEAR(opt.last_trust_ratios()[0], local, 1e-15);
  expect_near(w, {2.9985 - (0.9 * 0.0015 + 0.5 * local * (0.6 + 0.01 * 2.9985)),
                  3.998 - (0.9 * 0.002 + 0.5 * local * (0.8 + 0.01 * 3.998))});
  expect_near(w, {2.99565075, 3.994201}, 1e-9);
}

TEST(LARS, OneDimensionalParametersAreExcludedByDefault) {
  // A bias [2]: no adaptation and no decay, so it is plain momentum SGD: w -= lr g on step 1.
  Tensor weight = param({3.0, 4.0}, {1, 2});
  Tensor bias = param({0.1, 0.2});
  LARS opt(param_specs({weight, bias}), {.lr = 0.5, .momentum = 0.9, .weight_decay = 0.01});
  EXPECT_FALSE(opt.params()[0].no_adaptation);
  EXPECT_TRUE(opt.params()[1].no_adaptation);
  EXPECT_TRUE(opt.params()[1].no_weight_decay);
  set_grad(weight, {0.6, 0.8});
  set_grad(bias, {1.0, -1.0});
  opt.step();
  expect_near(bias, {0.1 - 0.5, 0.2 + 0.5});
  EXPECT_EQ(opt.last_trust_ratios()[1], 1.0);
  // With exclusion off, the bias is adapted: local = 0.001 * ||b|| / (||g|| + 0.01 ||b||).
  Tensor bias2 = param({0.1, 0.2});
  LARS opt2(param_specs({bias2}), {.lr = 0.5, .momentum = 0.9, .weight_decay = 0.01, .exclude_1d = false});
  set_grad(bias2, {1.0, -1.0});
  opt2.step();
  const double bn = std::sqrt(0.05), gn = std::sqrt(2.0);
  EXPECT_NEAR(opt2.last_trust_ratios()[0], 0.001 * bn / (gn + 0.01 * bn), 1e-15);
}

TEST(LAMB, OneStepByHand) {
  // w = [[3, 4]], g = [[0.6, -0.8]]; lr 0.1, eps 1e-6, wd 0.01. After one step m^ = g, v^ = g^2:
  //   r = g / (|g| + eps) + wd w = [0.6/0.600001 + 0.03, -0.8/0.800001 + 0.04] = [1.0299983.., -0.9599987..]
  //   ratio = ||w|| / ||r|| = 5 / 1.40799.. = 3.55110934..;  w1 = w - 0.1 * ratio * r = [2.63423.., 4.34090..]
  // The bias [2] (g = [1, -1]) is excluded: r = sign(g), ratio 1, no decay: b1 = b - 0.1 r.
  Tensor w = param({3.0, 4.0}, {1, 2});
  Tensor b = param({0.5, 0.5});
  LAMB opt(param_specs({w, b}), {.lr = 0.1, .eps = 1e-6, .weight_decay = 0.01});
  set_grad(w, {0.6, -0.8});
  set_grad(b, {1.0, -1.0});
  opt.step();
  const double r0 = 0.6 / 0.600001 + 0.03, r1 = -0.8 / 0.800001 + 0.04;
  const double ratio = 5.0 / std::sqrt(r0 * r0 + r1 * r1);
  EXPECT_NEAR(opt.last_trust_ratios()[0], ratio, 1e-12);
  EXPECT_NEAR(ratio, 3.5511093455490768, 1e-12);
  expect_near(w, {3 - 0.1 * ratio * r0, 4 - 0.1 * ratio * r1});
  expect_near(w, {2.634236329259016, 4.340906053284598}, 1e-12);
  EXPECT_EQ(opt.last_trust_ratios()[1], 1.0);
  expect_near(b, {0.5 - 0.1 / (1 + 1e-6), 0.5 + 0.1 / (1 + 1e-6)});
}

TEST(LAMB, ZeroWeightGivesTrustRatioOne) {
  Tensor w = param({0.0, 0.0}, {1, 2});
  LAMB opt(param_specs({w}), {.lr = 0.1, .weight_decay = 0.0});
  set_grad(w, {1.0, 1.0});
  opt.step();
  EXPECT_EQ(opt.last_trust_ratios()[0], 1.0);
  expect_near(w, {-0.1 / (1 + 1e-6), -0.1 / (1 + 1e-6)});
}

// N steps straight equal N/2 steps, a state_dict save, a fresh optimizer, load, N/2 steps.
template <typename Opt, typename Options>
void check_resume(const Options& o) {
  auto grads = [](int t) { return std::vector<double>{0.1 * t - 0.3, 0.5 - 0.05 * t}; };
  Tensor a = param({1.0, -1.0}, {1, 2});
  Opt straight(param_specs({a}), o);
  for (int t = 0; t < 4; ++t) {
    set_grad(a, grads(t));
    straight.step();
  }
  Tensor b = param({1.0, -1.0}, {1, 2});
  std::map<std::string, Tensor> saved;
  {
    Opt first(param_specs({b}), o);
    for (int t = 0; t < 2; ++t) {
      set_grad(b, grads(t));
      first.step();
    }
    saved = first.state_dict();
  }
  Opt second(param_specs({b}), o);
  second.load_state_dict(saved);
  EXPECT_EQ(second.step_count(), 2);
  for (int t = 2; t < 4; ++t) {
    set_grad(b, grads(t));
    second.step();
  }
  EXPECT_EQ(a.to_vector<double>(), b.to_vector<double>());
}

TEST(OptimizerState, ResumeIsExact) {
  check_resume<SGD>(SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true});
  check_resume<AdamW>(AdamWOptions{.lr = 0.1});
  check_resume<LARS>(LARSOptions{.lr = 0.1, .weight_decay = 0.01});
  check_resume<LAMB>(LAMBOptions{.lr = 0.1});
}

TEST(OptimizerState, StateDictNamesAndErrors) {
  Tensor w = param({1.0, 2.0});
  AdamW opt({{"fc.weight", w}}, {.lr = 0.1});
  set_grad(w, {1.0, 1.0});
  opt.step();
  auto sd = opt.state_dict();
  ASSERT_TRUE(sd.count("fc.weight.exp_avg"));
  ASSERT_TRUE(sd.count("fc.weight.exp_avg_sq"));
  EXPECT_EQ(sd.at("fc.weight.step").item(), 1.0);
  EXPECT_EQ(sd.at("step").item(), 1.0);

  auto bad_shape = sd;
  bad_shape["fc.weight.exp_avg"] = Tensor::zeros({3}, DType::f64);
  try {
    opt.load_state_dict(bad_shape);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("fc.weight.exp_avg"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("[3]"), std::string::npos) << e.message();
  }
  auto unknown = sd;
  unknown["conv.weight.exp_avg"] = Tensor::zeros({2}, DType::f64);
  EXPECT_THROW(opt.load_state_dict(unknown), Error);
  auto bad_buffer = sd;
  bad_buffer["fc.weight.momentum_buffer"] = Tensor::zeros({2}, DType::f64);
  EXPECT_THROW(opt.load_state_dict(bad_buffer), Error);
  EXPECT_THROW(opt.param("nope"), Error);
}

TEST(ClipGradNorm, ScalesToMaxNormAndReturnsTheNorm) {
  Tensor a = param({0.0, 0.0}), b = param({0.0});
  set_grad(a, {3.0, 4.0});
  set_grad(b, {12.0});  // global norm sqrt(9 + 16 + 144) = 13
  EXPECT_DOUBLE_EQ(clip_grad_norm({a, b}, 6.5), 13.0);
  const double c = 6.5 / (13.0 + 1e-6);
  expect_near(a.grad(), {3 * c, 4 * c});
  expect_near(b.grad(), {12 * c});
  // Below the limit: unchanged.
  EXPECT_NEAR(clip_grad_norm({a, b}, 100.0), 6.5, 1e-6);
  expect_near(b.grad(), {12 * c});
  EXPECT_THROW(clip_grad_norm({a}, 0.0), Error);
}

}  // namespace
}  // namespace hpdl::optim
