// End to end: a small MLP learns the two-class spiral to 100% training
// accuracy. Data from a fixed seed, full-batch Adam, a bounded number of
// steps, so the test is deterministic and takes well under a second.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <numbers>

#include "hpdl/autograd/node.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optim.h"

namespace hpdl {
namespace {

// Two interleaved arms, 200 points each: radius r in (0, 1], angle 4 r + class * pi, plus small noise.
void make_spiral(Tensor& x, Tensor& y, int per_class = 200) {
  Generator gen(1234);
  std::vector<float> xs;
  std::vector<int64_t> ys;
  for (int c = 0; c < 2; ++c) {
    for (int i = 0; i < per_class; ++i) {
      const double r = (i + 1.0) / per_class;
      const double t = 4.0 * r + c * std::numbers::pi + 0.1 * (gen.next_uniform() - 0.5);
      xs.push_back(static_cast<float>(r * std::sin(t)));
      xs.push_back(static_cast<float>(r * std::cos(t)));
      ys.push_back(c);
    }
  }
  x = Tensor::from_vector<float>(xs, {2 * per_class, 2});
  y = Tensor::from_vector<int64_t>(ys, {2 * per_class});
}

// Cross-entropy from elementary ops (log-sum-exp minus the target logit), used
// to check the training loop independently of the fused loss.
Tensor composed_cross_entropy(const Tensor& logits, const Tensor& targets) {
  Tensor m = max(logits, {1}, true).detach();
  Tensor lse = add(log(sum(exp(sub(logits, m)), {1}, true)), m);
  auto t = targets.to_vector<int64_t>();
  std::vector<float> onehot(t.size() * 2, 0.0f);
  for (size_t i = 0; i < t.size(); ++i) onehot[i * 2 + static_cast<size_t>(t[i])] = 1.0f;
  Tensor target_logit = sum(mul(logits, Tensor::from_vector<float>(onehot, logits.shape())), {1}, true);
  return mean(sub(lse, target_logit));
}

double accuracy(const Tensor& logits, const Tensor& y) {
  auto pred = argmax(logits, 1).to_vector<int64_t>();
  auto want = y.to_vector<int64_t>();
  int right = 0;
  for (size_t i = 0; i < pred.size(); ++i) right += pred[i] == want[i];
  return static_cast<double>(right) / static_cast<double>(pred.size());
}

// Returns the number of steps needed to reach 100% (or -1).
int train_spiral(const std::function<Tensor(const Tensor&, const Tensor&)>& loss_fn) {
  Tensor x, y;
  make_spiral(x, y);
  auto model = nn::models::mlp(2, {64, 64}, 2, "tanh", 0.0, /*seed=*/7);
  optim::AdamW opt(optim::param_specs(*model), {.lr = 0.01, .weight_decay = 0.0});
  for (int step = 1; step <= 3000; ++step) {
    Tensor logits = model->forward(x);
    Tensor loss = loss_fn(logits, y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step % 50 == 0) {
      NoGradGuard ng;
      if (accuracy(model->forward(x), y) == 1.0) return step;
    }
  }
  return -1;
}

TEST(EndToEnd, MlpLearnsSpiralWithCrossEntropy) {
  int steps = train_spiral([](const Tensor& l, const Tensor& y) { return cross_entropy(l, y); });
  EXPECT_GT(steps, 0) << "did not reach 100% training accuracy in 3000 steps";
}

TEST(EndToEnd, MlpLearnsSpiralWithComposedLoss) {
  int steps = train_spiral(composed_cross_entropy);
  EXPECT_GT(steps, 0) << "did not reach 100% training accuracy in 3000 steps";
}

}  // namespace
}  // namespace hpdl
