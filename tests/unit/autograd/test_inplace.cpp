// In-place modification of tensors saved for backward (design decision 73):
// every view of a storage shares one version counter, each in-place write
// bumps it, and a backward whose node saved the tensor refuses to run after a
// write, naming the node, the saved tensor and both versions. Inputs a node
// does not save (add's) stay writable, and the library's own in-place writes
// (batch norm's running statistics, activation checkpointing) raise nothing.
#include <gtest/gtest.h>

#include "../test_util.h"
#include "hpdl/autograd/engine.h"
#include "hpdl/ops/checkpoint.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl {
namespace {

using test::contains;
using test::error_of;

Tensor leaf(const std::vector<double>& v, const Shape& s) { return Tensor::from_vector(v, s).set_requires_grad(); }

TEST(InplaceVersion, SharedByEveryViewOfAStorage) {
  Tensor x = Tensor::zeros({2, 3});
  const uint64_t v0 = x.version();
  Tensor r = x.reshape({6}), d = x.detach(), s = x.slice(1, 0, 2);
  s.fill_(1.0);
  EXPECT_EQ(x.version(), v0 + 1);
  r.copy_(Tensor::ones({6}));
  EXPECT_EQ(d.version(), v0 + 2);
  x.zero_();
  EXPECT_EQ(s.version(), v0 + 3);
  // A copy has storage of its own.
  Tensor c = x.clone();
  const uint64_t cv = c.version();
  x.fill_(2.0);
  EXPECT_EQ(c.version(), cv);
}

TEST(InplaceVersion, WriteIntoSavedInputOfMulThrowsNamingNodeTensorAndVersions) {
  Tensor a = leaf({1, 2, 3}, {3}), b = leaf({4, 5, 6}, {3});
  Tensor y = sum(mul(a, b));
  const uint64_t saved = b.version();
  b.fill_(0.0);
  const std::string e = error_of([&] { y.backward(); });
  EXPECT_TRUE(contains(e, "mul: input 'b' [3] (float64)")) << e;
  EXPECT_TRUE(contains(e, fmt::format("saved at version {}, now at version {}", saved, saved + 1))) << e;
  EXPECT_TRUE(contains(e, "modified in place")) << e;
}

TEST(InplaceVersion, InputThatNoGradientReadsStaysWritable) {
  // add saves nothing: writing into its inputs after the forward is legal and the gradients are right.
  Tensor a = leaf({1, 2}, {2}), b = leaf({3, 4}, {2});
  Tensor y = sum(mul(add(a, b), 3.0));
  a.fill_(10.0);
  b.copy_(Tensor::from_vector<double>({7, 7}, {2}));
  y.backward();
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{3, 3}));
  EXPECT_EQ(b.grad().to_vector<double>(), (std::vector<double>{3, 3}));
  // mul with a constant b saves b only (a's gradient reads b, nothing reads a).
  Tensor p = leaf({1, 2}, {2});
  Tensor q = Tensor::from_vector<double>({5, 6}, {2});
  Tensor z = sum(mul(p, q));
  p.fill_(-1.0);
  z.backward();
  EXPECT_EQ(p.grad().to_vector<double>(), (std::vector<double>{5, 6}));
}

TEST(InplaceVersion, WriteThroughAViewIsSeen) {
  Tensor a = leaf({1, 2, 3, 4}, {2, 2}), w = leaf({1, 0, 0, 1}, {2, 2});
  Tensor y = sum(matmul(a, w));
  Tensor row = w.detach().select(0, 1);  // another view of w's storage
  row.fill_(3.0);
  const std::string e = error_of([&] { y.backward(); });
  EXPECT_TRUE(contains(e, "matmul: input 'b' [2, 2]")) << e;
}

TEST(InplaceVersion, SavedWeightOfLinearAndConvAndSavedOutputOfSigmoid) {
  Tensor x = leaf({1, 2, 3, 4, 5, 6}, {2, 3}), w = leaf({1, 1, 1, -1, 0, 2}, {2, 3});
  Tensor y = sum(linear(x, w, Tensor()));
  w.copy_(Tensor::zeros({2, 3}, DType::f64));
  EXPECT_TRUE(contains(error_of([&] { y.backward(); }), "linear: weight [2, 3]"));

  Tensor img = leaf(std::vector<double>(16, 0.5), {1, 1, 4, 4}), k = leaf(std::vector<double>(4, 0.25), {1, 1, 2, 2});
  Tensor c = sum(conv2d(img, k));
  img.fill_(1.0);
  EXPECT_TRUE(contains(error_of([&] { c.backward(); }), "conv2d: input 'x' [1, 1, 4, 4]"));

  // sigmoid saves its output: writing into it breaks the backward, even though the input is untouched.
  Tensor s_in = leaf({0.1, 0.2}, {2});
  Tensor s = sigmoid(s_in);
  Tensor l = sum(mul(s, 2.0));
  s.fill_(0.0);
  EXPECT_TRUE(contains(error_of([&] { l.backward(); }), "sigmoid: output [2]"));
}

TEST(InplaceVersion, OptimizerStepBeforeBackwardThrows) {
  Tensor x = Tensor::from_vector<double>({1, 2, 3}, {1, 3});
  Tensor w = leaf({0.1, 0.2, 0.3}, {1, 3});
  optim::SGD opt(optim::param_specs({w}), optim::SGDOptions{});
  sum(linear(x, w, Tensor())).backward();  // a gradient for the step to use
  Tensor x2 = leaf({1, 2, 3}, {1, 3});
  Tensor loss = sum(linear(x2, w, Tensor()));  // saves w for x2's gradient
  opt.step();  // writes w in place
  const std::string e = error_of([&] { loss.backward(); });
  EXPECT_TRUE(contains(e, "linear: weight [1, 3]")) << e;
  // In the right order (backward, then step) nothing is raised.
  Tensor loss2 = sum(linear(x2, w, Tensor()));
  loss2.backward();
  opt.step();
}

TEST(InplaceVersion, RetainedGraphSeesAWriteBetweenTwoBackwards) {
  Tensor x = leaf({0.5, -0.5}, {2});
  Tensor y = sum(sin(x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward(Tensor(), /*retain_graph=*/true);  // unchanged: fine
  x.detach().fill_(2.0);
  EXPECT_TRUE(contains(error_of([&] { y.backward(); }), "sin: input 'x' [2]"));
  // tanh's plain backward reads its saved output, not its input: writing the input is legal there.
  Tensor z = leaf({0.5, -0.5}, {2});
  Tensor t = sum(tanh(z));
  z.detach().fill_(2.0);
  t.backward();
  EXPECT_TRUE(z.grad().defined());
}

TEST(InplaceVersion, BatchNormRunningStatisticsUpdatesDoNotBreakTraining) {
  // Two training-mode forwards update the running statistics in place between the first
  // forward and the backward; training mode does not save them, so the backward runs.
  Tensor x = leaf({1, 2, 3, 4, 5, 6, 7, 9}, {4, 2});
  Tensor g = leaf({1, 1}, {2}), b = leaf({0, 0}, {2});
  Tensor rm = Tensor::zeros({2}, DType::f64), rv = Tensor::ones({2}, DType::f64);
  const uint64_t v0 = rm.version();
  Tensor y1 = batch_norm(x, g, b, rm, rv, /*training=*/true);
  Tensor y2 = batch_norm(mul(x, 2.0), g, b, rm, rv, /*training=*/true);
  EXPECT_EQ(rm.version(), v0 + 2);
  sum(mul(add(y1, y2), y1)).backward();
  EXPECT_TRUE(x.grad().defined());
  // Evaluation mode saves the running mean for gamma's gradient: a training-mode update in between is seen.
  Tensor ye = sum(mul(batch_norm(x, g, b, rm, rv, /*training=*/false), x));
  batch_norm(x.detach(), g.detach(), b.detach(), rm, rv, /*training=*/true);
  EXPECT_TRUE(contains(error_of([&] { ye.backward(); }), "batch_norm_eval: running_mean [1, 2]"));
}

TEST(InplaceVersion, CheckpointRecomputesAndChecksItsInputs) {
  Tensor w = leaf({0.5, -1.0, 2.0}, {3});
  auto segment = [&](const Tensor& t) { return tanh(mul(t, w)); };
  Tensor x = leaf({0.1, 0.2, 0.3}, {3});
  sum(checkpoint(segment, x)).backward();
  std::vector<double> gx = x.grad().to_vector<double>();
  x.zero_grad();
  w.zero_grad();
  sum(segment(x)).backward();  // the same without checkpointing
  std::vector<double> ref = x.grad().to_vector<double>();
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(gx[i], ref[i], 1e-12);
  // An input written between the forward and the backward is caught by the checkpoint node.
  Tensor x2 = leaf({0.1, 0.2, 0.3}, {3});
  Tensor y = sum(checkpoint(segment, x2));
  x2.fill_(1.0);
  const std::string e = error_of([&] { y.backward(); });
  EXPECT_TRUE(contains(e, "checkpoint: input 0 [3]")) << e;
}

TEST(InplaceVersion, CreateGraphSecondDerivativesStillWork) {
  // u = x^3: du/dx = 3x^2, d2u/dx2 = 6x, through saved inputs unpacked twice.
  Tensor x = leaf({0.5, 2.0}, {2});
  Tensor u = mul(mul(x, x), x);
  Tensor du = grad({sum(u)}, {x}, {}, false, /*create_graph=*/true)[0];
  Tensor d2u = grad({sum(du)}, {x})[0];
  const std::vector<double> d2 = d2u.to_vector<double>();
  EXPECT_NEAR(d2[0], 3.0, 1e-12);
  EXPECT_NEAR(d2[1], 12.0, 1e-12);
}

}  // namespace
}  // namespace hpdl
