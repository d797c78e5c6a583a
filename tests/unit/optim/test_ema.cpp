// ModelEma against the averages computed by hand, with and without warmup; batch-norm
// statistics averaged and its counter copied; swapping in and back exactly; state round
// trips and the errors that name what is wrong.
#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"
#include "hpdl/autograd/node.h"
#include "hpdl/nn/nn.h"
#include "hpdl/optim/ema.h"

namespace hpdl::optim {
namespace {

// A Linear(2, 1): weight "0.weight" [1, 2], bias "0.bias" [1].
std::shared_ptr<nn::Sequential> tiny() {
  Generator gen(7);
  return std::make_shared<nn::Sequential>(
      std::initializer_list<nn::ModulePtr>{std::make_shared<nn::Linear>(2, 1, true, gen)});
}

void set(const Tensor& t, std::vector<float> v) {
  NoGradGuard g;
  Tensor(t).detach().copy_(Tensor::from_vector<float>(v, t.shape()));
}

std::vector<float> values(const Tensor& t) { return t.detach().contiguous().to_vector<float>(); }

TEST(ModelEma, AveragesByHandWithoutWarmup) {
  auto net = tiny();
  Tensor w = net->named_parameters()[0].second;  // "0.weight" [1, 2]
  set(w, {1, -2});
  ModelEma ema(*net, {.decay = 0.9, .warmup = false});
  set(w, {3, 0});
  ema.update();  // 1 + 0.1 (3 - 1) = 1.2;  -2 + 0.1 (0 + 2) = -1.8
  EXPECT_NEAR(ema.state_dict().at("0.weight").to_vector<float>()[0], 1.2f, 1e-6);
  EXPECT_NEAR(ema.state_dict().at("0.weight").to_vector<float>()[1], -1.8f, 1e-6);
  set(w, {1.2f, 2});
  ema.update();  // 0.9 * 1.2 + 0.1 * 1.2 = 1.2;  0.9 * -1.8 + 0.1 * 2 = -1.42
  auto a = ema.state_dict().at("0.weight").to_vector<float>();
  EXPECT_NEAR(a[0], 1.2f, 1e-6);
  EXPECT_NEAR(a[1], -1.42f, 1e-6);
  EXPECT_EQ(ema.updates(), 2);
  EXPECT_EQ(values(w), (std::vector<float>{1.2f, 2}));  // the model is untouched
}

TEST(ModelEma, WarmupDecayIsOnePlusNOverTenPlusN) {
  auto net = tiny();
  Tensor w = net->named_parameters()[0].second;
  set(w, {0, 0});
  ModelEma ema(*net, {.decay = 0.999, .warmup = true});
  EXPECT_NEAR(ema.next_decay(), 2.0 / 11.0, 1e-15);
  set(w, {11, 22});
  ema.update();  // d = 2/11: avg = (1 - 2/11) * [11, 22] = [9, 18]
  auto a = ema.state_dict().at("0.weight").to_vector<float>();
  EXPECT_NEAR(a[0], 9.0f, 1e-5);
  EXPECT_NEAR(a[1], 18.0f, 1e-5);
  EXPECT_NEAR(ema.next_decay(), 3.0 / 12.0, 1e-15);
  ModelEma capped(*net, {.decay = 0.5, .warmup = true});
  for (int i = 0; i < 5; ++i) capped.update();
  EXPECT_EQ(capped.next_decay(), 7.0 / 16.0);  // update 6: (1 + 6) / (10 + 6) < 0.5
  for (int i = 0; i < 3; ++i) capped.update();
  EXPECT_EQ(capped.next_decay(), 0.5);  // update 9: 10 / 19 > 0.5, so the configured decay caps it
  EXPECT_NE(test::error_of([&] { ModelEma(*net, {.decay = 1.0}); }).find("decay 1 is not in [0, 1)"), std::string::npos);
}

TEST(ModelEma, BatchNormStatisticsAveragedAndCounterCopied) {
  auto bn = std::make_shared<nn::BatchNorm2d>(1);
  ModelEma ema(*bn, {.decay = 0.5, .warmup = false});
  bn->train();
  bn->forward(Tensor::from_vector<float>({2, 4, 6, 8}, {4, 1, 1, 1}));  // batch mean 5, momentum 0.1
  const float running = values(bn->running_mean)[0];
  EXPECT_NEAR(running, 0.5f, 1e-6);
  ema.update();
  auto s = ema.state_dict();
  EXPECT_NEAR(s.at("running_mean").to_vector<float>()[0], 0.25f, 1e-6);  // 0 + 0.5 (0.5 - 0)
  EXPECT_EQ(s.at("num_batches_tracked").to_vector<int64_t>()[0], 1);      // copied, not averaged
}

TEST(ModelEma, AppliedSwapsTheAveragesInAndRestoresTheLiveWeightsExactly) {
  auto net = tiny();
  Tensor w = net->named_parameters()[0].second;
  set(w, {1, 1});
  ModelEma ema(*net, {.decay = 0.75, .warmup = false});
  set(w, {0.3f, -7.1f});
  ema.update();  // 1 + 0.25 (0.3 - 1) = 0.825;  1 + 0.25 (-7.1 - 1) = -1.025
  const auto live = values(w), avg = ema.state_dict().at("0.weight").to_vector<float>();
  Tensor x = Tensor::from_vector<float>({1, 0}, {1, 2});
  {
    ModelEma::Applied applied(&ema);
    EXPECT_EQ(values(w), avg);
    NoGradGuard g;
    const float b = values(net->named_parameters()[1].second)[0];
    EXPECT_NEAR(net->forward(x).to_vector<float>()[0], avg[0] + b, 1e-6);
  }
  EXPECT_EQ(values(w), live);
  EXPECT_EQ(ema.state_dict().at("0.weight").to_vector<float>(), avg);
  { ModelEma::Applied none(nullptr); }  // no EMA: nothing happens
  EXPECT_EQ(values(w), live);
}

TEST(ModelEma, StateRoundTripAndClearErrors) {
  auto net = tiny();
  ModelEma ema(*net, {.decay = 0.9, .warmup = true});
  set(net->named_parameters()[0].second, {5, 6});
  ema.update(), ema.update();
  auto saved = ema.state_dict();
  auto other = tiny();
  ModelEma restored(*other, {.decay = 0.9, .warmup = true});
  restored.load_state_dict(saved, ema.updates());
  EXPECT_EQ(restored.updates(), 2);
  EXPECT_EQ(restored.next_decay(), ema.next_decay());
  for (auto& [k, v] : saved) EXPECT_EQ(restored.state_dict().at(k).to_vector<float>(), v.to_vector<float>()) << k;

  auto missing = saved;
  missing.erase("0.bias");
  EXPECT_NE(test::error_of([&] { restored.load_state_dict(missing, 2); }).find("no '0.bias'"), std::string::npos);
  auto extra = saved;
  extra["9.weight"] = Tensor::zeros({1});
  EXPECT_NE(test::error_of([&] { restored.load_state_dict(extra, 2); }).find("'9.weight'"), std::string::npos);
  auto reshaped = saved;
  reshaped["0.weight"] = Tensor::zeros({2, 1});
  const std::string e = test::error_of([&] { restored.load_state_dict(reshaped, 2); });
  EXPECT_NE(e.find("'0.weight' is saved as [2, 1], the model's is [1, 2]"), std::string::npos) << e;
}

}  // namespace
}  // namespace hpdl::optim
