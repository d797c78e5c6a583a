// Module contract: dotted names, train/eval propagation, zero_grad, dtype
// moves that keep handles valid, state-dict round trips and their errors;
// init functions; layers that need only the ops already on main (Linear, MLP,
// activations, Sequential).
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/autograd/node.h"
#include "hpdl/nn/nn.h"
#include "hpdl/ops/ops.h"

namespace hpdl::nn {
namespace {

std::shared_ptr<Sequential> tiny(uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
      std::make_shared<Linear>(2, 3, true, gen), std::make_shared<Tanh>(), std::make_shared<Linear>(3, 1, true, gen)});
}

std::vector<std::string> names(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> out;
  for (auto& [n, _] : v) out.push_back(n);
  return out;
}

TEST(Module, DottedNamesInRegistrationOrder) {
  auto net = tiny(1);
  EXPECT_EQ(names(net->named_parameters()), (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
  EXPECT_EQ(net->num_parameters(), 2 * 3 + 3 + 3 + 1);
  for (auto& p : net->parameters()) EXPECT_TRUE(p.requires_grad());
  auto outer = std::make_shared<Sequential>(std::initializer_list<ModulePtr>{net, std::make_shared<ReLU>()});
  EXPECT_EQ(outer->named_parameters()[0].first, "0.0.weight");
  auto mods = outer->named_modules();
  ASSERT_EQ(mods.size(), 6u);
  EXPECT_EQ(mods[2].first, "0.0");
  EXPECT_EQ(mods[2].second->type_name(), "Linear");
}

TEST(Module, TrainEvalIsRecursive) {
  auto net = tiny(1);
  auto outer = std::make_shared<Sequential>(std::initializer_list<ModulePtr>{net});
  outer->eval();
  EXPECT_FALSE((*net)[0].is_training());
  outer->train();
  EXPECT_TRUE((*net)[2].is_training());
}

TEST(Module, ZeroGradDropsOrZeroes) {
  auto net = tiny(1);
  Tensor x = Tensor::ones({4, 2});
  sum(net->forward(x)).backward();
  for (auto& p : net->parameters()) ASSERT_TRUE(p.grad().defined());
  net->zero_grad(false);
  for (auto& p : net->parameters())
    for (float v : p.grad().to_vector<float>()) EXPECT_EQ(v, 0.0f);
  net->zero_grad();
  for (auto& p : net->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(Module, ToDTypeKeepsHandles) {
  auto lin = std::make_shared<Linear>(2, 2);
  Tensor handle = lin->named_parameters()[0].second;
  lin->to(DType::f64);
  EXPECT_EQ(lin->weight.dtype(), DType::f64);
  EXPECT_EQ(handle.dtype(), DType::f64);
  EXPECT_TRUE(lin->weight.requires_grad());
  Tensor y = lin->forward(Tensor::ones({1, 2}, DType::f64));
  EXPECT_EQ(y.dtype(), DType::f64);
  EXPECT_THROW(lin->to(DType::i64), Error);
}

TEST(Module, StateDictRoundTrip) {
  auto a = tiny(1), b = tiny(2);
  Tensor x = Tensor::from_vector<float>({0.5f, -1.0f, 2.0f, 0.25f}, {2, 2});
  NoGradGuard ng;
  EXPECT_NE(a->forward(x).to_vector<float>(), b->forward(x).to_vector<float>());
  b->load_state_dict(a->state_dict());
  EXPECT_EQ(a->forward(x).to_vector<float>(), b->forward(x).to_vector<float>());
  // Values were copied, not aliased.
  Tensor w = a->state_dict().at("0.weight");
  w.fill_(0);
  EXPECT_NE(b->state_dict().at("0.weight").to_vector<float>()[0], 0.0f);
}

TEST(Module, LoadStateDictErrorsNameTheKey) {
  auto net = tiny(1);
  auto sd = net->state_dict();
  auto expect_error = [&](const std::map<std::string, Tensor>& s, const std::vector<std::string>& parts, bool strict) {
    try {
      net->load_state_dict(s, strict);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(e.message().find(p), std::string::npos) << e.message();
    }
  };
  auto wrong = sd;
  wrong["2.weight"] = Tensor::zeros({3, 1});
  expect_error(wrong, {"2.weight", "[3, 1]", "[1, 3]"}, true);
  expect_error(wrong, {"2.weight"}, false);  // shapes are checked even when not strict
  auto missing = sd;
  missing.erase("0.bias");
  expect_error(missing, {"missing", "0.bias"}, true);
  auto extra = sd;
  extra["5.weight"] = Tensor::zeros({1});
  expect_error(extra, {"unexpected", "5.weight"}, true);
  EXPECT_NO_THROW(net->load_state_dict(missing, false));
  EXPECT_NO_THROW(net->load_state_dict(extra, false));
}

TEST(Module, DuplicateOrDottedNamesAreRejected) {
  struct Bad : Module {
    Bad() {
      register_parameter("w", Tensor::zeros({1}));
      EXPECT_THROW(register_parameter("w", Tensor::zeros({1})), Error);
      EXPECT_THROW(register_buffer("a.b", Tensor::zeros({1})), Error);
    }
    Tensor forward(const Tensor& x) override { return x; }
    std::string type_name() const override { return "Bad"; }
  };
  Bad b;
  EXPECT_EQ(b.num_parameters(), 1);
}

TEST(Init, DefaultLinearInitBoundsAndDeterminism) {
  Generator g1(7), g2(7);
  Linear a(100, 50, true, g1), b(100, 50, true, g2);
  EXPECT_EQ(a.weight.to_vector<float>(), b.weight.to_vector<float>());
  const float bound = 1.0f / 10.0f;  // 1/sqrt(fan_in)
  float lo = 1, hi = -1;
  for (float v : a.weight.to_vector<float>()) {
    EXPECT_LE(std::abs(v), bound);
    lo = std::min(lo, v), hi = std::max(hi, v);
  }
  EXPECT_LT(lo, -0.09f);  // the range is used
  EXPECT_GT(hi, 0.09f);
  for (float v : a.bias.to_vector<float>()) EXPECT_LE(std::abs(v), bound);
}

TEST(Init, KaimingAndXavierStatistics) {
  Generator gen(3);
  Tensor w = Tensor::empty({256, 64, 3, 3});  // fan_in 576, fan_out 2304
  auto stddev = [](const Tensor& t) {
    double s = 0, s2 = 0;
    auto v = t.to_vector<double>();
    for (double x : v) s += x, s2 += x * x;
    double m = s / static_cast<double>(v.size());
    return std::sqrt(s2 / static_cast<double>(v.size()) - m * m);
  };
  init::kaiming_normal_(w, gen, 0, init::FanMode::fan_in, "relu");
  EXPECT_NEAR(stddev(w), std::sqrt(2.0 / 576), 0.01 * std::sqrt(2.0 / 576) + 1e-4);
  init::kaiming_uniform_(w, gen, 0, init::FanMode::fan_out, "relu");
  EXPECT_NEAR(stddev(w), std::sqrt(2.0 / 2304), 0.02 * std::sqrt(2.0 / 2304));
  init::xavier_uniform_(w, gen);
  EXPECT_NEAR(stddev(w), std::sqrt(2.0 / (576 + 2304)), 0.02 * std::sqrt(2.0 / 2880));
  init::xavier_normal_(w, gen, init::calculate_gain("tanh"));
  EXPECT_NEAR(stddev(w), 5.0 / 3.0 * std::sqrt(2.0 / 2880), 0.02 * std::sqrt(2.0 / 2880) * 5 / 3);
  EXPECT_DOUBLE_EQ(init::calculate_gain("leaky_relu", 0.2), std::sqrt(2.0 / 1.04));
  EXPECT_THROW(init::calculate_gain("swish"), Error);
  Tensor b = Tensor::empty({4});
  EXPECT_THROW(init::kaiming_uniform_(b, gen), Error);
}

TEST(Layers, LinearAndActivations) {
  Linear lin(2, 1);
  NoGradGuard ng;
  lin.weight.copy_(Tensor::from_vector<float>({2.0f, -1.0f}, {1, 2}));
  lin.bias.fill_(0.5f);
  Tensor x = Tensor::from_vector<float>({1.0f, 1.0f, -1.0f, 3.0f}, {2, 2});
  Tensor y = lin.forward(x);  // [2 - 1 + 0.5, -2 - 3 + 0.5]
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{1.5f, -4.5f}));
  EXPECT_THROW(lin.forward(Tensor::ones({2, 3})), Error);
  EXPECT_EQ(ReLU().forward(y).to_vector<float>(), (std::vector<float>{1.5f, 0.0f}));
  EXPECT_NEAR(LeakyReLU(0.1).forward(y).to_vector<float>()[1], -0.45f, 1e-6);
  EXPECT_NEAR(Tanh().forward(y).to_vector<float>()[0], std::tanh(1.5f), 1e-6);
  EXPECT_NEAR(Sigmoid().forward(y).to_vector<float>()[0], 1 / (1 + std::exp(-1.5f)), 1e-6);
  EXPECT_NEAR(GELU().forward(y).to_vector<float>()[0], 1.5 * 0.5 * (1 + std::erf(1.5 / std::sqrt(2.0))), 1e-5);
  EXPECT_EQ(Identity().forward(y).to_vector<float>(), y.to_vector<float>());
  EXPECT_EQ(Flatten().forward(Tensor::ones({2, 3, 4})).shape(), (Shape{2, 12}));
  EXPECT_THROW(make_activation("swish"), Error);
}

}  // namespace
}  // namespace hpdl::nn
