// DataParallel across real ranks: N ranks x batch B must end with the same
// weights as one process x batch N*B (float tolerance), every rank must hold
// identical weights, buckets must launch during backward, and bf16 on the
// wire must stay close to the float32 result.
#include <gtest/gtest.h>

#include <map>

#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

nn::ModulePtr make_net() { return nn::models::mlp(8, {32, 16}, 3, "tanh", 0.0, /*seed=*/42); }

// The global batch of step k: identical on every rank (same seed).
std::pair<Tensor, Tensor> global_batch(int64_t n, int step) {
  Generator g(1000 + step);
  Tensor x = Tensor::randn({n, 8}, g);
  std::vector<int64_t> y(n);
  for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
  return {x, Tensor::from_vector(y, {n})};
}

std::vector<float> flat_weights(nn::Module& m) {
  std::vector<float> out;
  for (auto& p : m.parameters()) {
    auto v = p.to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

void train(nn::Module& model, DataParallel* dp, int steps, int64_t per_rank, int rank, int ranks) {
  optim::SGDOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  optim::SGD opt(optim::param_specs(model), o);
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

TEST(DataParallel, MatchesOneProcessWithTheGlobalBatch) {
  const int n = W().size(), r = W().rank();
  ASSERT_GE(n, 2);
  const int64_t B = 6;
  auto reference = make_net();
  train(*reference, nullptr, 5, B * n, 0, 1);  // one process, batch n*B
  auto model = make_net();
  DataParallelOptions opts;
  opts.bucket_bytes = 1024;  // several buckets for this small net
  {
    DataParallel dp(*model, W(), opts);
    EXPECT_GT(dp.num_buckets(), 2);
    train(*model, &dp, 5, B, r, n);
    EXPECT_EQ(dp.launched_during_backward(), dp.num_buckets()) << "every bucket fills during backward";
  }
  auto a = flat_weights(*reference), b = flat_weights(*model);
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, double(std::abs(a[i] - b[i])));
  EXPECT_LT(max_diff, 2e-5) << "rank " << r;
  // Identical on every rank, bit for bit.
  Tensor w = Tensor::from_vector(b, {int64_t(b.size())});
  Tensor all = W().allgather(w);
  auto v = all.to_vector<float>();
  for (int q = 1; q < n; ++q)
    for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(v[i], v[q * b.size() + i]) << "rank " << q << " differs at " << i;
}

// Gradient accumulation: two half batches per step, the first with the hooks held back,
// match one process with the global batch like the plain run; nothing is sent for the
// first half, and every bucket goes out during the second half's backward.
TEST(DataParallel, AccumulatedMicroBatchesMatchTheGlobalBatch) {
  const int n = W().size(), r = W().rank();
  const int64_t B = 6, half = B / 2;
  auto reference = make_net();
  train(*reference, nullptr, 5, B * n, 0, 1);
  auto model = make_net();
  DataParallelOptions opts;
  opts.bucket_bytes = 1024;
  {
    DataParallel dp(*model, W(), opts);
    optim::SGDOptions o;
    o.lr = 0.1;
    o.momentum = 0.9;
    optim::SGD opt(optim::param_specs(*model), o);
    for (int k = 0; k < 5; ++k) {
      auto [x, y] = global_batch(B * n, k);
      dp.zero_grad();
      for (int m = 0; m < 2; ++m) {
        const int64_t lo = r * B + m * half;
        dp.set_accumulating(m == 0);
        mul(cross_entropy(model->forward(x.slice(0, lo, lo + half)), y.slice(0, lo, lo + half)), 0.5).backward();
        if (m == 0) {
          EXPECT_EQ(dp.launched_during_backward(), 0) << "a bucket went out while accumulating";
          EXPECT_THROW(dp.finish(), Error);
        }
      }
      EXPECT_EQ(dp.launched_during_backward(), dp.num_buckets());
      dp.finish();
      opt.step();
    }
  }
  auto a = flat_weights(*reference), b = flat_weights(*model);
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, double(std::abs(a[i] - b[i])));
  EXPECT_LT(max_diff, 2e-5) << "rank " << r;
}

// Two layers registered in the opposite order of their use: backward fills the buckets of the
// first-registered layer (the highest bucket indices) first. The buckets must still go out in
// index order, as every rank queues them (the communication thread runs them first come, first
// served, so the spans' starts follow the launch order), and the average must be exact.
class Reversed : public nn::Module {
 public:
  Reversed() {
    Generator g(9);
    late_ = register_module("late", std::make_shared<nn::Linear>(16, 3, true, g));
    early_ = register_module("early", std::make_shared<nn::Linear>(8, 16, true, g));
  }
  Tensor forward(const Tensor& x) override { return late_->forward(tanh(early_->forward(x))); }
  std::string type_name() const override { return "Reversed"; }

 private:
  std::shared_ptr<nn::Linear> late_, early_;
};

TEST(DataParallel, BucketsLaunchInIndexOrderWhateverOrderBackwardFillsThem) {
  const int n = W().size(), r = W().rank();
  const int64_t per_rank = 4;
  Reversed reference;
  auto [x, y] = global_batch(per_rank * n, 0);
  cross_entropy(reference.forward(x), y).backward();
  Reversed model;
  DataParallelOptions o;
  o.bucket_bytes = 1;  // one bucket per parameter
  DataParallel dp(model, W(), o);
  ASSERT_EQ(dp.num_buckets(), 4);
  dp.zero_grad();
  cross_entropy(model.forward(x.slice(0, r * per_rank, (r + 1) * per_rank)),
                y.slice(0, r * per_rank, (r + 1) * per_rank)).backward();
  dp.finish();
  EXPECT_EQ(dp.launched_during_backward(), 4);
  const auto spans = dp.last_spans();
  for (size_t i = 1; i < spans.size(); ++i)
    EXPECT_LE(spans[i - 1].begin_us, spans[i].begin_us) << "bucket " << i << " started before bucket " << i - 1;
  std::map<std::string, Tensor> want;
  for (auto& [name, p] : reference.named_parameters()) want[name] = p.grad();
  for (auto& [name, p] : model.named_parameters()) {
    auto a = p.grad().to_vector<float>(), b = want.at(name).to_vector<float>();
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-6) << name << " element " << i;
  }
}

TEST(DataParallel, InitialWeightsComeFromRankZero) {
  auto model = nn::models::mlp(4, {5}, 2, "relu", 0.0, /*seed=*/100 + W().rank());
  DataParallel dp(*model, W());
  auto ref = nn::models::mlp(4, {5}, 2, "relu", 0.0, 100);
  EXPECT_EQ(flat_weights(*model), flat_weights(*ref));
}

TEST(DataParallel, Bf16WireStaysCloseToFloat32) {
  const int n = W().size(), r = W().rank();
  auto m32 = make_net(), m16 = make_net();
  DataParallelOptions o16;
  o16.bf16_wire = true;
  {
    DataParallel d32(*m32, W()), d16(*m16, W(), o16);
    train(*m32, &d32, 3, 4, r, n);
    train(*m16, &d16, 3, 4, r, n);
  }
  auto a = flat_weights(*m32), b = flat_weights(*m16);
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, double(std::abs(a[i] - b[i])));
  EXPECT_LT(max_diff, 2e-2);
  EXPECT_GT(max_diff, 0.0) << "bf16 rounding should change something";
}

}  // namespace
}  // namespace hpdl::dist
