// Activation checkpointing wired into the zoo (models::enable_activation_checkpointing):
// each model cut into segments gives the plain model's loss, parameter
// gradients and batch-norm buffers bit for bit after a step, keeps its
// parameter names, and a model with nothing to cut is refused.
#include <gtest/gtest.h>

#include "hpdl/core/random.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/resnet50.h"
#include "hpdl/ops/ops.h"

namespace hpdl::nn::models {
namespace {

struct Step {
  float loss;
  std::vector<std::vector<float>> grads, buffers;
};

Step one_step(Module& m, const Tensor& x, const Tensor& y) {
  m.train();
  m.zero_grad();
  Tensor loss = cross_entropy(m.forward(x), y);
  loss.backward();
  Step s{static_cast<float>(loss.item()), {}, {}};
  for (auto& [name, p] : m.named_parameters()) {
    EXPECT_TRUE(p.grad().defined()) << name;
    s.grads.push_back(p.grad().defined() ? p.grad().to_vector<float>() : std::vector<float>{});
  }
  for (auto& [name, b] : m.named_buffers())
    if (b.dtype() == DType::f32) s.buffers.push_back(b.to_vector<float>());
  return s;
}

void expect_same_step(const std::string& name, const ModelConfig& mc, int64_t n) {
  SCOPED_TRACE(name);
  auto plain = make_model(name, mc), ckpt = make_model(name, mc);
  std::string what = enable_activation_checkpointing(*ckpt);
  EXPECT_NE(what.find("segments"), std::string::npos) << what;
  ASSERT_EQ(plain->state_dict().size(), ckpt->state_dict().size());
  auto names = ckpt->state_dict();
  for (auto& [k, _] : plain->state_dict()) EXPECT_TRUE(names.count(k)) << "name kept: " << k;
  Generator g(21);
  Tensor x = Tensor::randn({n, mc.in_channels, mc.height, mc.width}, g);
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (auto& v : labels) v = static_cast<int64_t>(g.next_u64() % static_cast<uint64_t>(mc.num_classes));
  Tensor y = Tensor::from_vector(labels, {n});
  for (int step = 0; step < 2; ++step) {  // twice: the second starts from the buffers the first left
    Step a = one_step(*plain, x, y), b = one_step(*ckpt, x, y);
    EXPECT_EQ(a.loss, b.loss);
    EXPECT_EQ(a.grads, b.grads);
    EXPECT_EQ(a.buffers, b.buffers);
  }
}

TEST(ActivationCheckpointingZoo, Resnet20SameStep) {
  ModelConfig mc;
  mc.in_channels = 1, mc.height = mc.width = 8;
  expect_same_step("resnet20", mc, 2);
}

TEST(ActivationCheckpointingZoo, BottleneckStageSameStep) {
  // resnet50's blocks (the whole model at its smallest input, 32x32, takes too long for CI): a
  // stage of two Bottlenecks, the first with a projection shortcut, cut as the zoo cuts it.
  auto stage = [] {
    Generator g(31);
    auto s = std::make_shared<Sequential>();
    s->push_back(std::make_shared<Bottleneck>(4, 2, 2, g));
    s->push_back(std::make_shared<Bottleneck>(8, 2, 1, g));
    return s;
  };
  auto plain = stage(), ckpt = stage();
  EXPECT_EQ(enable_activation_checkpointing(*ckpt).rfind("2 segments", 0), 0u);
  EXPECT_EQ(ckpt->checkpoint_chunk(), 1);
  Generator g(22);
  Tensor x = Tensor::randn({2, 4, 6, 6}, g);
  for (int step = 0; step < 2; ++step) {
    for (auto* m : {plain.get(), ckpt.get()}) m->zero_grad();
    Tensor w = Tensor::randn({2, 8, 3, 3}, g);
    sum(mul(plain->forward(x), w)).backward();
    sum(mul(ckpt->forward(x), w)).backward();
    auto pp = plain->parameters(), cp = ckpt->parameters();
    ASSERT_EQ(pp.size(), cp.size());
    for (size_t i = 0; i < pp.size(); ++i) EXPECT_EQ(pp[i].grad().to_vector<float>(), cp[i].grad().to_vector<float>());
    auto pb = plain->named_buffers(), cb = ckpt->named_buffers();
    for (size_t i = 0; i < pb.size(); ++i)
      if (pb[i].second.dtype() == DType::f32) {
        EXPECT_EQ(pb[i].second.to_vector<float>(), cb[i].second.to_vector<float>()) << pb[i].first;
      }
  }
}

TEST(ActivationCheckpointingZoo, VitSameStep) {
  ModelConfig mc;
  mc.in_channels = 1, mc.height = mc.width = 8;
  mc.patch_size = 4, mc.dim = 16, mc.depth = 2, mc.heads = 2;
  expect_same_step("vit", mc, 3);
}

TEST(ActivationCheckpointingZoo, FlatModelsSameStep) {
  ModelConfig mc;
  mc.in_channels = 1, mc.height = mc.width = 28;
  mc.hidden = {16, 8};
  mc.dropout = 0.25;  // the masks must be replayed
  expect_same_step("mlp", mc, 4);
  expect_same_step("lenet5", mc, 2);
}

TEST(ActivationCheckpointingZoo, SegmentsChosen) {
  ModelConfig mc;
  auto r20 = make_model("resnet20", mc);
  EXPECT_EQ(enable_activation_checkpointing(*r20).rfind("9 segments", 0), 0u);
  auto m = make_model("mlp", mc);  // flatten + 2 x (linear, relu) + linear: 6 layers, chunks of 3
  EXPECT_EQ(enable_activation_checkpointing(*m).rfind("2 segments of up to 3", 0), 0u);
  EXPECT_EQ(dynamic_cast<Sequential&>(*m).checkpoint_chunk(), 3);
  EXPECT_THROW(dynamic_cast<Sequential&>(*m).set_checkpoint_chunk(-1), Error);
  mc.hidden = {8};
  auto lstm = make_model("lstm", mc);
  try {
    enable_activation_checkpointing(*lstm);
    FAIL() << "an lstm has nothing to checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.activation_checkpointing"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hpdl::nn::models
