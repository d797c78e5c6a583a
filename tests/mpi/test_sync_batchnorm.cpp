// Synchronized batch norm across real ranks: N ranks x batch B with sync BN
// must end with the same weights and running statistics as one process x
// batch N*B with plain BN, while per-rank BN must not (so the check can fail);
// with per-rank BN, DataParallel must leave rank 0's running statistics on every rank.
// The net is a small residual conv net with BatchNorm2d and BatchNorm1d.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/sync_batchnorm.h"
#include "hpdl/nn/layers.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

// conv-BN-ReLU, a residual conv-BN block, global pooling, linear-BN1d, linear.
class TinyResNet : public nn::Module {
 public:
  TinyResNet() {
    Generator g(7);
    stem = register_module("stem", std::make_shared<nn::Conv2d>(2, 4, nn::Conv2dOptions::k(3).p(1).no_bias(), g));
    bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(4));
    conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(4, 4, nn::Conv2dOptions::k(3).p(1).no_bias(), g));
    bn2 = register_module("bn2", std::make_shared<nn::BatchNorm2d>(4));
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(4, 6, true, g));
    bn3 = register_module("bn3", std::make_shared<nn::BatchNorm1d>(6));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(6, 3, true, g));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = relu(bn1->forward(stem->forward(x)));
    h = relu(add(h, bn2->forward(conv2->forward(h))));
    h = mean(h, {2, 3});  // [N, 4]
    return fc2->forward(relu(bn3->forward(fc1->forward(h))));
  }
  std::string type_name() const override { return "TinyResNet"; }
  std::shared_ptr<nn::Conv2d> stem, conv2;
  std::shared_ptr<nn::BatchNorm2d> bn1, bn2;
  std::shared_ptr<nn::BatchNorm1d> bn3;
  std::shared_ptr<nn::Linear> fc1, fc2;
};

// The global batch of step k, identical on every rank. A per-sample offset
// that grows with the sample index makes the ranks' shards differ in mean, so
// per-rank statistics differ visibly from the global ones.
std::pair<Tensor, Tensor> global_batch(int64_t n, int step) {
  Generator g(500 + step);
  Tensor x = Tensor::randn({n, 2, 5, 5}, g);
  std::vector<float> offset(n * 2 * 5 * 5);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < 50; ++j) offset[i * 50 + j] = 1.5f * static_cast<float>(i) / n;
  x = add(x, Tensor::from_vector(offset, {n, 2, 5, 5}));
  std::vector<int64_t> y(n);
  for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
  return {x, Tensor::from_vector(y, {n})};
}

// Parameters, then buffers (running statistics), flattened.
std::vector<double> flat_state(nn::Module& m) {
  std::vector<double> out;
  for (auto& [name, t] : m.named_parameters())
    for (double v : t.to_vector<double>()) out.push_back(v);
  for (auto& [name, t] : m.named_buffers())
    for (double v : t.to_vector<double>()) out.push_back(v);
  return out;
}

void train(nn::Module& model, DataParallel* dp, int steps, int64_t per_rank, int rank, int ranks) {
  optim::SGDOptions o;
  o.lr = 0.05;
  o.momentum = 0.9;
  optim::SGD opt(optim::param_specs(model), o);
  model.train();
  for (int k = 0; k < steps; ++k) {
    auto [x, y] = global_batch(per_rank * ranks, k);
    Tensor xs = x.slice(0, rank * per_rank, (rank + 1) * per_rank);
    Tensor ys = y.slice(0, rank * per_rank, (rank + 1) * per_rank);
    if (dp) dp->zero_grad(); else model.zero_grad();
    cross_entropy(model.forward(xs), ys).backward();
    if (dp) dp->finish();
    opt.step();
  }
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

constexpr int kSteps = 6;
constexpr int64_t kB = 4;

TEST(SyncBatchNorm, MatchesOneProcessWithTheGlobalBatch) {
  const int n = W().size(), r = W().rank();
  ASSERT_GE(n, 2);
  auto reference = std::make_shared<TinyResNet>();
  train(*reference, nullptr, kSteps, kB * n, 0, 1);  // one process, batch n*B, plain BN

  auto model = std::make_shared<TinyResNet>();
  EXPECT_EQ(convert_sync_batchnorm(*model, W()), 3);
  DataParallelOptions opts;
  opts.bucket_bytes = 256;  // several buckets: their allreduces interleave with BN's during backward
  {
    DataParallel dp(*model, W(), opts);
    EXPECT_GT(dp.num_buckets(), 2);
    train(*model, &dp, kSteps, kB, r, n);
  }
  const double d = max_abs_diff(flat_state(*reference), flat_state(*model));
  EXPECT_LT(d, 1e-4) << "rank " << r << ": sync BN over " << n << " ranks differs from one process";
  EXPECT_EQ(model->bn1->num_batches_tracked.item(), kSteps);
}

TEST(SyncBatchNorm, PerRankBatchNormDiffers) {
  const int n = W().size(), r = W().rank();
  auto reference = std::make_shared<TinyResNet>();
  train(*reference, nullptr, kSteps, kB * n, 0, 1);
  auto model = std::make_shared<TinyResNet>();
  {
    DataParallel dp(*model, W());
    train(*model, &dp, kSteps, kB, r, n);
  }
  const double d = max_abs_diff(flat_state(*reference), flat_state(*model));
  EXPECT_GT(d, 1e-2) << "per-rank BN should differ from global-batch BN (else the sync test proves nothing)";
  // DataParallel's broadcast_buffers leaves rank 0's running statistics on every rank.
  std::vector<double> mine = flat_state(*model);
  Tensor all = W().allgather(Tensor::from_vector(mine, {static_cast<int64_t>(mine.size())})).to(DType::f64);
  auto v = all.to_vector<double>();
  for (int q = 1; q < n; ++q)
    for (size_t i = 0; i < mine.size(); ++i) ASSERT_EQ(v[i], v[q * mine.size() + i]) << "rank " << q << " entry " << i;
}

TEST(SyncBatchNorm, OneSamplePerRankIsEnoughGlobally) {
  // Per-rank BN cannot train on one sample; synchronized BN sees n samples.
  auto bn = std::make_shared<nn::BatchNorm1d>(3);
  convert_sync_batchnorm(*bn, W());
  bn->train();
  Tensor x = Tensor::full({1, 3}, static_cast<double>(W().rank()));
  Tensor y = bn->forward(x);
  // Global mean of ranks 0..n-1 is (n-1)/2 for every channel.
  const double n = W().size();
  EXPECT_NEAR(bn->running_mean.to_vector<double>()[0], 0.1 * (n - 1) / 2, 1e-6);
  EXPECT_EQ(revert_sync_batchnorm(*bn), 1);
  EXPECT_THROW(bn->forward(x), Error);
}

// BN groups: with group_size g, rank r normalizes over ranks [r/g*g, r/g*g + g) only. Forward,
// running statistics and the input gradient must equal plain BN on that group's batch; and
// with groups smaller than the world they must differ from the global batch (else the check
// proves nothing: the global batch's samples differ in mean along the index).
TEST(SyncBatchNorm, GroupsNormalizeOverTheirOwnRanksOnly) {
  const int n = W().size(), r = W().rank();
  auto [x, y] = global_batch(kB * n, 0);
  Generator gw(77);
  Tensor wsum = Tensor::randn(x.shape(), gw);  // loss = sum(w * bn(x)): a non-uniform dy
  std::vector<int> sizes = {1, n};
  if (n % 2 == 0 && n > 2) sizes.push_back(2);
  for (int g : sizes) {
    auto bn = std::make_shared<nn::BatchNorm2d>(2);
    EXPECT_EQ(convert_sync_batchnorm(*bn, W(), g), 1);
    bn->train();
    Tensor xs = x.slice(0, r * kB, (r + 1) * kB).contiguous();
    xs.set_requires_grad(true);
    Tensor out = bn->forward(xs);
    sum(mul(out, wsum.slice(0, r * kB, (r + 1) * kB).contiguous())).backward();

    const int first = r / g * g;
    auto ref = std::make_shared<nn::BatchNorm2d>(2);
    ref->train();
    Tensor xg = x.slice(0, first * kB, (first + g) * kB).contiguous();
    xg.set_requires_grad(true);
    Tensor rout = ref->forward(xg);
    sum(mul(rout, wsum.slice(0, first * kB, (first + g) * kB).contiguous())).backward();
    const int64_t lo = (r - first) * kB, hi = lo + kB;
    auto diff = [](const Tensor& a, const Tensor& b) {
      return max_abs_diff(a.to_vector<double>(), b.contiguous().to_vector<double>());
    };
    EXPECT_LT(diff(out, rout.slice(0, lo, hi)), 1e-5) << "group " << g << " rank " << r;
    EXPECT_LT(diff(xs.grad(), xg.grad().slice(0, lo, hi)), 1e-5) << "group " << g << " rank " << r;
    EXPECT_LT(diff(bn->running_mean, ref->running_mean), 1e-6) << "group " << g;
    EXPECT_LT(diff(bn->running_var, ref->running_var), 1e-6) << "group " << g;
    if (g < n) {
      auto all = std::make_shared<nn::BatchNorm2d>(2);
      all->train();
      Tensor global = all->forward(x).slice(0, r * kB, (r + 1) * kB);
      EXPECT_GT(diff(out, global), 1e-2) << "group " << g << " should not see the global batch";
    }
  }
  EXPECT_THROW(convert_sync_batchnorm(*std::make_shared<nn::BatchNorm1d>(3), W(), n + 1), Error);
  if (n > 2) EXPECT_THROW(convert_sync_batchnorm(*std::make_shared<nn::BatchNorm1d>(3), W(), n - 1), Error);
}

}  // namespace
}  // namespace hpdl::dist
