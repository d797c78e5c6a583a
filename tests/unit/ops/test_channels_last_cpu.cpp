// Channels-last activations on the CPU through the ops and whole networks
// (set_cpu_channels_last, design decision 75): convolutions hand NHWC
// activations to the ops after them, which keep the layout; parameters and
// their gradients stay row-major; a training step, inference and an input
// gradient give the row-major path's numbers up to float rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "hpdl/autograd/engine.h"
#include "hpdl/backend/cpu/onednn.h"
#include "hpdl/core/random.h"
#include "hpdl/gan/dcgan.h"
#include "hpdl/gan/wgan_gp.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/autocast.h"
#include "hpdl/ops/loss.h"
#include "hpdl/ops/ops.h"
#include "hpdl/ops/pool.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

// Turns the CPU channels-last layout on (or off) for one scope.
class ChannelsLast {
 public:
  explicit ChannelsLast(bool on) : before_(cpu_channels_last()) { set_cpu_channels_last(on); }
  ~ChannelsLast() { set_cpu_channels_last(before_); }

 private:
  bool before_;
};

bool is_nhwc(const Tensor& t) { return t.is_channels_last() && !t.is_contiguous(); }

Tensor rand_t(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return Tensor::rand(s, g, -1, 1);
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

// max |a - b| / max(1e-12, max |b|).
double rel_diff(const Tensor& a, const Tensor& b) {
  auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < av.size(); ++i) d = std::max(d, std::abs(av[i] - bv[i]));
  return d / std::max(1e-12, max_abs(b));
}

double l2(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector<double>()) s += v * v;
  return std::sqrt(s);
}

// ||a - b|| / max(floor, ||b||) in the L2 norm, for gradients: the two layouts run
// different kernels, and in a deep network a rounding difference can flip a ReLU's
// sign or a max pool's tie and move single elements' gradients (a norm bounds that
// better than the largest element); the floor keeps gradients that are zero up to
// rounding (a bias before a batch norm) from comparing rounding noise with itself.
double grad_diff(const Tensor& a, const Tensor& b, double floor) {
  auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < av.size(); ++i) s += (av[i] - bv[i]) * (av[i] - bv[i]);
  return std::sqrt(s) / std::max(floor, l2(b));
}

// 1% of the largest gradient norm of a model: the floor for grad_diff.
template <typename Named>
double grad_floor(const Named& grads) {
  double m = 0;
  for (const auto& [n, t] : grads) m = std::max(m, l2(t));
  return 1e-2 * m;
}

TEST(ChannelsLastOps, ConvolutionOutputsAndTheOpsAfterThemAreChannelsLast) {
  ChannelsLast on(true);
  ASSERT_TRUE(cpu_channels_last()) << "the oneDNN CPU backend reads channels-last";
  Tensor x = rand_t({2, 8, 8, 8}, 1), w = rand_t({16, 8, 3, 3}, 2).set_requires_grad(true);
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  Tensor y = conv2d(x, w, Tensor(), p);
  EXPECT_TRUE(is_nhwc(y));
  // Fewer than 8 input channels (an image's first layer) stay row-major: faster there.
  EXPECT_TRUE(conv2d(rand_t({2, 3, 8, 8}, 3), rand_t({16, 3, 3, 3}, 4), Tensor(), p).is_contiguous());
  // Except one channel (the same memory in either layout) into 16 or more filters, whose NHWC
  // output spares the next layer a copy; a LeNet-sized first layer (6 filters) stays row-major.
  EXPECT_TRUE(is_nhwc(conv2d(rand_t({2, 1, 8, 8}, 3), rand_t({16, 1, 3, 3}, 4), Tensor(), p)));
  EXPECT_TRUE(conv2d(rand_t({2, 1, 8, 8}, 3), rand_t({6, 1, 3, 3}, 4), Tensor(), p).is_contiguous());
  Tensor bn = batch_norm(y, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
  EXPECT_TRUE(is_nhwc(bn));
  Tensor r = relu(bn);
  EXPECT_TRUE(is_nhwc(r));
  Pool2dParams pp;
  pp.kernel_h = pp.kernel_w = pp.stride_h = pp.stride_w = 2;
  Tensor m = max_pool2d(r, pp);
  EXPECT_TRUE(is_nhwc(m));
  Tensor s = add(m, m);
  EXPECT_TRUE(is_nhwc(s));
  sum(s).backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(w.grad().is_contiguous()) << "parameter gradients stay row-major";
}

TEST(ChannelsLastOps, OffMeansRowMajor) {
  ChannelsLast off(false);
  EXPECT_FALSE(cpu_channels_last());
  Tensor x = rand_t({2, 3, 8, 8}, 1), w = rand_t({4, 3, 3, 3}, 2);
  EXPECT_TRUE(conv2d(x, w, Tensor(), Conv2dParams{}).is_contiguous());
}

struct StepResult {
  Tensor loss, logits_eval, input_grad;
  std::vector<std::pair<std::string, Tensor>> grads, buffers;
};

// One training step (forward, cross entropy, backward) of a fresh model, then an
// evaluation-mode forward without a graph and one with an input gradient (as
// `hpdl explain` runs it).
StepResult run_model(const std::string& name, const nn::models::ModelConfig& cfg, const Tensor& x,
                     const Tensor& labels, bool channels_last, bool batch_stats) {
  ChannelsLast layout(channels_last);
  auto model = nn::models::make_model(name, cfg);
  model->train(batch_stats);
  StepResult r;
  r.loss = cross_entropy(model->forward(x), labels);
  r.loss.backward();
  for (auto& [n, t] : model->named_parameters()) {
    EXPECT_TRUE(t.grad().is_contiguous()) << name << " " << n;
    r.grads.emplace_back(n, t.grad());
  }
  for (auto& [n, t] : model->named_buffers()) r.buffers.emplace_back(n, t.clone());
  model->eval();
  {
    NoGradGuard ng;
    r.logits_eval = model->forward(x);
  }
  Tensor xi = x.clone().set_requires_grad(true);
  sum(model->forward(xi)).backward();
  r.input_grad = xi.grad();
  return r;
}

// batch_stats = false: the training step with the batch norms in evaluation mode (running
// statistics). A deep network whose last stage normalizes over a handful of values per channel
// (ResNet-18 at 32x32, batch 2: two) amplifies rounding differences in its batch statistics into
// percent-level gradient differences whatever the layout (a 1e-5 change of the input alone
// moved ResNet-18's first-layer gradient by 0.15%); the training-mode kernels are checked on
// the shallower networks here and against the row-major kernels in tests/unit/backend.
void check_model(const std::string& name, nn::models::ModelConfig cfg, const Shape& xs, bool batch_stats = true) {
  cfg.seed = 5;
  Tensor x = rand_t(xs, 7);
  std::vector<int64_t> lv(xs[0]);
  for (int64_t i = 0; i < xs[0]; ++i) lv[i] = i % cfg.num_classes;
  Tensor labels = Tensor::from_vector(lv, {xs[0]});
  StepResult a = run_model(name, cfg, x, labels, false, batch_stats);
  StepResult b = run_model(name, cfg, x, labels, true, batch_stats);
  EXPECT_LT(rel_diff(b.loss, a.loss), 1e-5) << name << " loss";
  ASSERT_EQ(a.grads.size(), b.grads.size());
  const double floor = grad_floor(a.grads);
  for (size_t i = 0; i < a.grads.size(); ++i)
    EXPECT_LT(grad_diff(b.grads[i].second, a.grads[i].second, floor), 1e-3) << name << " gradient of " << a.grads[i].first;
  for (size_t i = 0; i < a.buffers.size(); ++i)
    EXPECT_LT(rel_diff(b.buffers[i].second, a.buffers[i].second), 1e-4) << name << " buffer " << a.buffers[i].first;
  EXPECT_LT(rel_diff(b.logits_eval, a.logits_eval), 1e-4) << name << " evaluation logits";
  EXPECT_LT(grad_diff(b.input_grad, a.input_grad, 0), 1e-3) << name << " input gradient";
}

TEST(ChannelsLastOps, ResNet20StepMatchesRowMajor) {
  check_model("resnet20", {}, {4, 1, 28, 28});
}

TEST(ChannelsLastOps, AlexNetBnStepMatchesRowMajor) {
  nn::models::ModelConfig cfg;
  cfg.dropout = 0.0;
  check_model("alexnet_bn", cfg, {4, 1, 28, 28});
}

TEST(ChannelsLastOps, ResNet18WithItsPaddedStemPoolMatchesRowMajor) {
  nn::models::ModelConfig cfg;
  cfg.in_channels = 3, cfg.height = cfg.width = 32;
  check_model("resnet18", cfg, {2, 3, 32, 32}, false);
}

TEST(ChannelsLastOps, VggWithDropoutMatchesRowMajor) {
  nn::models::ModelConfig cfg;
  cfg.in_channels = 3, cfg.height = cfg.width = 32, cfg.dropout = 0.0;
  check_model("vgg11_bn", cfg, {2, 3, 32, 32});
}

TEST(ChannelsLastOps, ResNet20Bf16StepMatchesRowMajor) {
  // CPU bf16 (decision 69): the convolutions round NHWC operands to bfloat16 inside oneDNN (each
  // kernel against row-major: ChannelsLastCpu.ConvolutionMatchesRowMajor). Through a whole network
  // bfloat16 rounding makes the gradients chaotic at this batch size: a 1e-6 change of the input
  // moves them by 10-20% in row-major alone, so the layouts are compared against that spread.
  if (!cpu::onednn_bf16_supported()) GTEST_SKIP() << "no AVX512_BF16/AMX on this CPU (oneDNN ISA " << cpu::onednn_isa() << ")";
  auto run = [](bool cl, double input_scale) {
    ChannelsLast layout(cl);
    nn::models::ModelConfig cfg;
    cfg.seed = 5;
    auto model = nn::models::make_model("resnet20", cfg);
    model->train();
    Tensor x = mul(rand_t({4, 1, 28, 28}, 7), input_scale);
    Tensor labels = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3}, {4});
    Tensor loss;
    {
      AutocastScope ac(DType::bf16);
      loss = cross_entropy(model->forward(x), labels);
    }
    loss.backward();
    std::vector<std::pair<std::string, Tensor>> r{{"loss", loss.detach()}};
    for (auto& [n, t] : model->named_parameters()) r.emplace_back(n, t.grad());
    return r;
  };
  auto a = run(false, 1.0), b = run(true, 1.0), c = run(false, 1.0 + 1e-6);
  const double floor = grad_floor(a);
  EXPECT_LT(rel_diff(b[0].second, a[0].second), 1e-3) << "loss";
  for (size_t i = 1; i < a.size(); ++i) {
    const double spread = grad_diff(c[i].second, a[i].second, floor);
    EXPECT_LT(grad_diff(b[i].second, a[i].second, floor), std::max(2e-2, 2 * spread))
        << a[i].first << " (a 1e-6 input change moves it by " << spread << ")";
  }
}

TEST(ChannelsLastOps, TransposedConvolutionsKeepTheLayoutAndMatchRowMajor) {
  // conv_transpose2d is conv2d's data gradient: NHWC when that conv2d's input (the transposed
  // convolution's output) has 8 or more channels, or one channel from 16 or more (a generator's
  // last layer). Values, input and weight gradients as row-major, with and without a bias.
  struct Case {
    Shape x, w;
    int64_t stride, pad, out_pad;
    bool bias, nhwc_out;
  };
  for (const Case& c : {Case{{3, 16, 5, 5}, {16, 8, 4, 4}, 2, 1, 0, true, true},
                        Case{{2, 24, 4, 6}, {24, 12, 3, 3}, 2, 1, 1, false, true},
                        Case{{2, 16, 7, 7}, {16, 1, 4, 4}, 2, 1, 0, true, true},
                        Case{{2, 16, 6, 6}, {16, 4, 3, 3}, 1, 1, 0, false, false}}) {
    ConvTranspose2dParams p;
    p.stride_h = p.stride_w = c.stride, p.pad_h = p.pad_w = c.pad, p.output_pad_h = p.output_pad_w = c.out_pad;
    auto run = [&](bool cl) {
      ChannelsLast layout(cl);
      Tensor x = rand_t(c.x, 11);
      if (cl) {  // an NHWC input, as a batch norm before the layer hands it on
        Tensor c = Tensor::empty_channels_last(x.shape());
        c.copy_(x);
        x = c;
      }
      x.set_requires_grad(true);
      Tensor w = rand_t(c.w, 12).set_requires_grad(true);
      Tensor b = c.bias ? rand_t({c.w[1]}, 13).set_requires_grad(true) : Tensor();
      Tensor y = conv_transpose2d(x, w, b, p);
      if (cl && c.nhwc_out) {
        EXPECT_TRUE(y.is_channels_last()) << shape_str(c.x) << " -> " << shape_str(y.shape());
      } else {
        EXPECT_TRUE(y.is_contiguous()) << shape_str(c.x) << " -> " << shape_str(y.shape());
      }
      sum(mul(y, rand_t(y.shape(), 14))).backward();
      EXPECT_TRUE(w.grad().is_contiguous()) << "weight gradients stay row-major";
      std::vector<Tensor> r{y.detach(), x.grad(), w.grad()};
      if (c.bias) r.push_back(b.grad());
      return r;
    };
    auto a = run(false), b = run(true);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_LT(rel_diff(b[i], a[i]), 1e-5) << shape_str(c.x) << " result " << i << " (y, dx, dw, db)";
  }
}

TEST(ChannelsLastOps, DcganTransposedConvolutionsMatchRowMajor) {
  // The generator's transposed convolutions feed batch norms and the discriminator's
  // convolutions: mixed layouts meet in one graph.
  auto run = [](bool cl) {
    ChannelsLast layout(cl);
    gan::DcganOptions o;
    o.g_features = 8, o.d_features = 8, o.latent_dim = 4, o.seed = 3;
    Generator gen(3);
    gan::DcganGenerator g(o, gen);
    gan::DcganDiscriminator d(o, gen);
    Tensor z = rand_t({4, 4}, 9);
    Tensor out = d.forward(g.forward(z));
    sum(out).backward();
    std::vector<std::pair<std::string, Tensor>> r{{"output", out.detach()}};
    for (auto& [n, t] : g.named_parameters()) r.emplace_back("generator " + n, t.grad());
    for (auto& [n, t] : d.named_parameters()) r.emplace_back("discriminator " + n, t.grad());
    return r;
  };
  auto a = run(false), b = run(true);
  ASSERT_EQ(a.size(), b.size());
  const double floor = grad_floor(a);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(grad_diff(b[i].second, a[i].second, floor), 1e-3) << a[i].first;
}

TEST(ChannelsLastOps, WganGradientPenaltyDoubleBackwardMatchesRowMajor) {
  // The penalty differentiates the critic's input gradient in its weights: recorded convolution
  // backwards (conv_transpose2d, conv2d_weight) on NHWC activations, with and without the group
  // norm, which runs on row-major copies.
  for (const char* norm : {"none", "group"}) {
    auto run = [&](bool cl) {
      ChannelsLast layout(cl);
      gan::WganGpOptions o;
      o.d_features = 8, o.critic_norm = norm, o.critic_groups = 4, o.seed = 4;
      Generator gen(4);
      gan::WganCritic critic(o, gen);
      Tensor real = rand_t({3, 1, 28, 28}, 20), fake = rand_t({3, 1, 28, 28}, 21);
      Tensor eps = Tensor::from_vector(std::vector<float>{0.2f, 0.5f, 0.9f}, {3});
      gan::GradientPenalty gp = gan::gradient_penalty([&](const Tensor& x) { return critic.forward(x); }, real,
                                                      fake, eps, 10.0);
      gp.penalty.backward();
      std::vector<std::pair<std::string, Tensor>> r{{"penalty", gp.penalty.detach()}, {"norms", gp.grad_norms}};
      // The last layer's bias does not move the input gradient: no gradient from the penalty.
      for (auto& [n, t] : critic.named_parameters())
        if (t.grad().defined()) r.emplace_back(n, t.grad());
      return r;
    };
    auto a = run(false), b = run(true);
    ASSERT_GE(a.size(), 5u) << "the penalty reaches the critic's weights";
    ASSERT_EQ(a.size(), b.size());
    const double floor = grad_floor(a);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_LT(grad_diff(b[i].second, a[i].second, floor), 1e-4) << norm << " " << a[i].first;
  }
}

}  // namespace
}  // namespace hpdl
