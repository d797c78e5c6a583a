// Layers over the conv/pool/norm/dropout/embedding ops: output shapes,
// parameter shapes, BatchNorm running statistics, Dropout reproducibility,
// and the ResNet BasicBlock's two shortcut kinds.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/autograd/node.h"
#include "hpdl/nn/nn.h"
#include "hpdl/ops/ops.h"

namespace hpdl::nn {
namespace {

TEST(Layers, Conv2dShapesAndOptions) {
  Generator gen(1);
  Conv2d c(4, 8, Conv2dOptions::k(3).s(2).p(1).d(1).g(2), gen);
  EXPECT_EQ(c.weight.shape(), (Shape{8, 2, 3, 3}));
  EXPECT_EQ(c.bias.shape(), (Shape{8}));
  EXPECT_EQ(c.forward(Tensor::randn({2, 4, 9, 9}, gen)).shape(), (Shape{2, 8, 5, 5}));
  Conv2d dil(1, 2, Conv2dOptions::k(3).d(2).no_bias(), gen);
  EXPECT_FALSE(dil.bias.defined());
  EXPECT_EQ(dil.forward(Tensor::randn({1, 1, 9, 9}, gen)).shape(), (Shape{1, 2, 5, 5}));
  EXPECT_EQ(dil.output_size(9, 9), (std::pair<int64_t, int64_t>{5, 5}));
  EXPECT_THROW(Conv2d(3, 4, Conv2dOptions::k(3).g(2)), Error);   // 3 channels, 2 groups
  EXPECT_THROW(c.forward(Tensor::ones({2, 3, 9, 9})), Error);     // wrong channel count
}

TEST(Layers, PoolingShapes) {
  Generator gen(1);
  Tensor x = Tensor::randn({2, 3, 8, 8}, gen);
  EXPECT_EQ(MaxPool2d(2).forward(x).shape(), (Shape{2, 3, 4, 4}));
  EXPECT_EQ(MaxPool2d(3, 2, 1).forward(x).shape(), (Shape{2, 3, 4, 4}));
  EXPECT_EQ(AvgPool2d(2).forward(x).shape(), (Shape{2, 3, 4, 4}));
  Tensor g = AdaptiveAvgPool2d().forward(x);
  EXPECT_EQ(g.shape(), (Shape{2, 3, 1, 1}));
  EXPECT_NEAR(g.to_vector<float>()[0], mean(x.slice(0, 0, 1).slice(1, 0, 1)).item(), 1e-5);
}

TEST(Layers, BatchNorm2dRunningStatistics) {
  // Channel 0 holds {1, 2, 3, 4} (mean 2.5, unbiased var 5/3), channel 1 holds {0, 0, 2, 2} (mean 1, var 4/3).
  Tensor x = Tensor::from_vector<float>({1, 2, 0, 0, 3, 4, 2, 2}, {2, 2, 1, 2});
  BatchNorm2d bn(2, 1e-5, 0.1);
  EXPECT_EQ(bn.named_buffers().size(), 3u);
  Tensor y = bn.forward(x);
  auto rm = bn.running_mean.to_vector<float>(), rv = bn.running_var.to_vector<float>();
  EXPECT_NEAR(rm[0], 0.1 * 2.5, 1e-6);
  EXPECT_NEAR(rm[1], 0.1 * 1.0, 1e-6);
  EXPECT_NEAR(rv[0], 0.9 + 0.1 * 5.0 / 3.0, 1e-6);
  EXPECT_NEAR(rv[1], 0.9 + 0.1 * 4.0 / 3.0, 1e-6);
  EXPECT_EQ(bn.num_batches_tracked.item(), 1.0);
  // Training output uses the biased batch variance: (1 - 2.5) / sqrt(1.25 + eps).
  EXPECT_NEAR(y.to_vector<float>()[0], -1.5 / std::sqrt(1.25 + 1e-5), 1e-5);
  // Eval uses the running statistics and leaves them alone.
  bn.eval();
  Tensor z = bn.forward(x);
  EXPECT_NEAR(z.to_vector<float>()[0], (1 - rm[0]) / std::sqrt(rv[0] + 1e-5), 1e-5);
  EXPECT_EQ(bn.running_mean.to_vector<float>(), rm);
  EXPECT_EQ(bn.num_batches_tracked.item(), 1.0);
  EXPECT_THROW(bn.forward(Tensor::ones({2, 3, 1, 2})), Error);
}

TEST(Layers, BatchNorm1dAndLayerNorm) {
  Generator gen(2);
  BatchNorm1d bn(3);
  Tensor y = bn.forward(Tensor::randn({8, 3}, gen));
  EXPECT_EQ(y.shape(), (Shape{8, 3}));
  EXPECT_NEAR(mean(y.slice(1, 0, 1)).item(), 0.0, 1e-5);
  LayerNorm ln(4);
  Tensor z = ln.forward(Tensor::randn({2, 5, 4}, gen));
  EXPECT_EQ(z.shape(), (Shape{2, 5, 4}));
  EXPECT_NEAR(mean(z.select(0, 0).select(0, 0)).item(), 0.0, 1e-5);
}

TEST(Layers, DropoutIsReproducibleAndIdentityInEval) {
  Tensor x = Tensor::ones({1000});
  Dropout a(0.5, 42), b(0.5, 42), c(0.5, 43);
  auto ya = a.forward(x).to_vector<float>();
  EXPECT_EQ(ya, b.forward(x).to_vector<float>());
  EXPECT_NE(ya, c.forward(x).to_vector<float>());
  EXPECT_NE(ya, a.forward(x).to_vector<float>());  // the stream advances
  int zeros = 0;
  for (float v : ya) {
    EXPECT_TRUE(v == 0.0f || v == 2.0f);
    zeros += v == 0.0f;
  }
  EXPECT_GT(zeros, 400);
  EXPECT_LT(zeros, 600);
  a.eval();
  EXPECT_EQ(a.forward(x).to_vector<float>(), x.to_vector<float>());
  // The generator is reachable for checkpoints.
  Sequential s{std::make_shared<Dropout>(0.1, 1)};
  ASSERT_EQ(s.named_generators().size(), 1u);
  EXPECT_EQ(s.named_generators()[0].first, "0.generator");
}

TEST(Layers, Embedding) {
  Generator gen(3);
  Embedding e(10, 4, gen);
  Tensor idx = Tensor::from_vector<int64_t>({1, 9, 1}, {3});
  Tensor y = e.forward(idx);
  EXPECT_EQ(y.shape(), (Shape{3, 4}));
  EXPECT_EQ(y.select(0, 0).to_vector<float>(), y.select(0, 2).to_vector<float>());
  EXPECT_EQ(y.select(0, 1).to_vector<float>(), e.weight.select(0, 9).to_vector<float>());
}

TEST(Blocks, BasicBlockShortcuts) {
  Generator gen(4);
  BasicBlock same(8, 8, 1, gen);
  EXPECT_EQ(same.downsample, nullptr);
  EXPECT_EQ(same.num_parameters(), 2 * (8 * 8 * 9) + 2 * 16);
  BasicBlock down(8, 16, 2, gen);
  ASSERT_NE(down.downsample, nullptr);
  EXPECT_TRUE(down.state_dict().count("downsample.0.weight"));
  EXPECT_TRUE(down.state_dict().count("downsample.1.running_var"));
  Tensor x = Tensor::randn({2, 8, 7, 7}, gen);
  EXPECT_EQ(same.forward(x).shape(), (Shape{2, 8, 7, 7}));
  Tensor y = down.forward(x);
  EXPECT_EQ(y.shape(), (Shape{2, 16, 4, 4}));
  for (float v : y.to_vector<float>()) EXPECT_GE(v, 0.0f);  // ends in ReLU
  sum(y).backward();
  EXPECT_TRUE(down.downsample->parameters()[0].grad().defined());
}

// Standing statistics: each batch norm's running mean and variance become the plain average of
// the batch means and unbiased variances over the forwards, whatever they held before; the rest
// of the model (parameters, counters, momentum, every module's own mode) is as it was.
TEST(RecomputeBatchNormStatistics, AveragesTheBatchMomentsAndRestoresEverythingElse) {
  Generator gen(3);
  auto model = std::make_shared<Sequential>();
  auto lin = model->push_back(std::make_shared<Linear>(4, 3, true, gen));
  auto bn = model->push_back(std::make_shared<BatchNorm1d>(3, 1e-5, 0.25));
  auto inner = model->push_back(std::make_shared<Sequential>());
  auto bn2 = inner->push_back(std::make_shared<BatchNorm1d>(3));
  model->train(false);
  inner->train(false);
  bn->train(true);  // modes that differ between modules must come back as they were
  bn->running_mean.fill_(5.0);
  bn->running_var.fill_(7.0);
  bn->num_batches_tracked.fill_(11.0);
  std::vector<Tensor> inputs;
  for (int k = 0; k < 3; ++k) inputs.push_back(Tensor::randn({5, 4}, gen));
  const Tensor w_before = lin->weight.clone();
  size_t next = 0;
  recompute_batchnorm_statistics(*model, [&] { return inputs[next++]; }, 3);
  EXPECT_EQ(next, 3u);

  // By hand: h_k = linear(x_k); mean over k of the batch means and unbiased variances.
  std::vector<double> mean(3, 0), var(3, 0);
  for (const Tensor& x : inputs) {
    Tensor h;
    {
      NoGradGuard ng;
      h = lin->forward(x);
    }
    auto v = h.to_vector<double>();
    for (int c = 0; c < 3; ++c) {
      double m = 0, q = 0;
      for (int i = 0; i < 5; ++i) m += v[i * 3 + c] / 5;
      for (int i = 0; i < 5; ++i) q += (v[i * 3 + c] - m) * (v[i * 3 + c] - m) / 4;
      mean[c] += m / 3, var[c] += q / 3;
    }
  }
  auto rm = bn->running_mean.to_vector<double>(), rv = bn->running_var.to_vector<double>();
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(rm[c], mean[c], 1e-5) << "channel " << c;
    EXPECT_NEAR(rv[c], var[c], 1e-5) << "channel " << c;
  }
  // The inner batch norm (in eval mode before) was recomputed too: its input is the first one's
  // output, normalized with batch statistics (biased variance 1), so its unbiased running
  // variance is near 5/4, not the 1 it held.
  EXPECT_NEAR(bn2->running_var.to_vector<double>()[0], 1.25, 1e-3);
  EXPECT_EQ(bn->momentum, 0.25);
  EXPECT_EQ(bn->num_batches_tracked.item(), 11.0);
  EXPECT_EQ(max(abs(sub(lin->weight, w_before))).item(), 0.0);
  EXPECT_FALSE(model->is_training());
  EXPECT_TRUE(bn->is_training());
  EXPECT_FALSE(inner->is_training());
  EXPECT_FALSE(bn2->is_training());

  EXPECT_THROW(recompute_batchnorm_statistics(*model, [&] { return inputs[0]; }, 0), Error);
  Linear no_bn(2, 2, true, gen);
  try {
    recompute_batchnorm_statistics(no_bn, [&] { return Tensor::ones({2, 2}); }, 1);
    ADD_FAILURE() << "a model without batch norm was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no batch norm"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hpdl::nn
