// Local SGD (periodic model averaging, train.local_sgd_steps) across real
// ranks: with one local step and SGD (with or without momentum) it is
// synchronous data parallel up to float rounding; with more, the replicas
// drift apart between averaging points and DataParallel::average_state makes
// them bitwise equal again, to the mean of what the ranks held (batch norm
// running statistics included).
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

// A small net with a batch norm layer, so the averaging covers float buffers too.
nn::ModulePtr make_net() {
  Generator g(7);
  auto seq = std::make_shared<nn::Sequential>();
  seq->push_back(std::make_shared<nn::Linear>(8, 16, true, g));
  seq->push_back(std::make_shared<nn::BatchNorm1d>(16));
  seq->push_back(std::make_shared<nn::ReLU>());
  seq->push_back(std::make_shared<nn::Linear>(16, 3, true, g));
  return seq;
}

// Step k's global batch, the same on every rank; rank r takes its slice.
std::pair<Tensor, Tensor> rank_batch(int64_t per_rank, int step, int rank, int ranks) {
  Generator g(500 + step);
  const int64_t n = per_rank * ranks;
  Tensor x = Tensor::randn({n, 8}, g);
  std::vector<int64_t> y(n);
  for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
  Tensor ys = Tensor::from_vector(y, {n});
  return {x.slice(0, rank * per_rank, (rank + 1) * per_rank), ys.slice(0, rank * per_rank, (rank + 1) * per_rank)};
}

// Parameters and buffers in state_dict order.
std::vector<float> flat_state(nn::Module& m) {
  std::vector<float> out;
  for (auto& [name, t] : m.state_dict())
    if (t.dtype() == DType::f32) {
      auto v = t.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
  return out;
}

// Every rank's copy of `v`, in rank order.
std::vector<std::vector<float>> gather(const std::vector<float>& v) {
  auto all = W().allgather(Tensor::from_vector(v, {static_cast<int64_t>(v.size())})).to_vector<float>();
  std::vector<std::vector<float>> out;
  for (int r = 0; r < W().size(); ++r) out.emplace_back(all.begin() + r * v.size(), all.begin() + (r + 1) * v.size());
  return out;
}

// One optimizer step on this rank's own gradients (the hooks held back), as the Trainer does it.
void local_step(nn::Module& model, DataParallel& dp, optim::Optimizer& opt, int k) {
  auto [x, y] = rank_batch(6, k, W().rank(), W().size());
  dp.zero_grad();
  dp.set_accumulating(true);
  cross_entropy(model.forward(x), y).backward();
  EXPECT_EQ(dp.launched_during_backward(), 0) << "a gradient bucket went out during a local step";
  opt.step();
}

// Local SGD with H = 1 and plain SGD: w - lr * mean_r(g_r) either way; the only difference
// is where the rounding happens (mean of gradients vs mean of updated weights). With heavy-ball
// momentum too: the update is linear in the gradient, so the mean of the per-rank momentum
// buffers follows the synchronous one. Batch norm running statistics: the mean over ranks vs
// rank 0's (broadcast), so only the parameters are compared. Tolerance 1e-5 over 6 steps at lr 0.1.
TEST(LocalSgd, OneLocalStepWithSgdIsSynchronousDataParallel) {
  for (double momentum : {0.0, 0.9}) {
    auto sync_model = make_net(), local_model = make_net();
    optim::SGDOptions o;
    o.lr = 0.1;
    o.momentum = momentum;
    {
      DataParallel dp_sync(*sync_model, W()), dp_local(*local_model, W());
      optim::SGD opt_sync(optim::param_specs(*sync_model), o), opt_local(optim::param_specs(*local_model), o);
      const int64_t sync_calls_before = dp_sync.sync_allreduces();
      for (int k = 0; k < 6; ++k) {
        auto [x, y] = rank_batch(6, k, W().rank(), W().size());
        dp_sync.zero_grad();
        cross_entropy(sync_model->forward(x), y).backward();
        dp_sync.finish();
        opt_sync.step();
        local_step(*local_model, dp_local, opt_local, k);
        dp_local.average_state();
      }
      EXPECT_EQ(dp_local.sync_allreduces(), 6) << "one averaging allreduce per step";
      EXPECT_EQ(dp_sync.sync_allreduces() - sync_calls_before, 6 * dp_sync.num_buckets());
    }
    double max_diff = 0, max_moved = 0;
    auto init = make_net();
    auto p0 = init->parameters(), ps = sync_model->parameters(), pl = local_model->parameters();
    ASSERT_EQ(ps.size(), pl.size());
    for (size_t i = 0; i < ps.size(); ++i) {
      auto a = ps[i].to_vector<float>(), b = pl[i].to_vector<float>(), c = p0[i].to_vector<float>();
      for (size_t j = 0; j < a.size(); ++j) {
        max_diff = std::max(max_diff, double(std::abs(a[j] - b[j])));
        max_moved = std::max(max_moved, double(std::abs(a[j] - c[j])));
      }
    }
    EXPECT_LT(max_diff, 1e-5) << "rank " << W().rank() << ", momentum " << momentum;
    EXPECT_GT(max_moved, 1e-2) << "training did not move the weights: the comparison would be empty";
  }
}

TEST(LocalSgd, ReplicasDriftBetweenAveragingPointsAndAgreeBitwiseAfter) {
  const int H = 3, n = W().size();
  auto model = make_net();
  DataParallel dp(*model, W());
  optim::SGDOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  optim::SGD opt(optim::param_specs(*model), o);
  for (int k = 0; k < 2 * H; ++k) {
    local_step(*model, dp, opt, k);
    auto before = gather(flat_state(*model));
    EXPECT_NE(before[0], before[1]) << "step " << k << ": different data must give different replicas";
    if ((k + 1) % H != 0) continue;
    dp.average_state();
    auto after = gather(flat_state(*model));
    for (int r = 1; r < n; ++r) ASSERT_EQ(after[r], after[0]) << "rank " << r << " differs after averaging";
    // The mean of what the ranks held (exact at 2 ranks: one rounding of the sum, times 0.5).
    for (size_t i = 0; i < after[0].size(); ++i) {
      double mean = 0;
      for (int r = 0; r < n; ++r) mean += before[r][i];
      mean /= n;
      ASSERT_NEAR(after[0][i], mean, 1e-6 * (1 + std::abs(mean))) << "entry " << i;
    }
  }
}

TEST(LocalSgd, ExtraTensorsAreAveragedAndBadOnesNamed) {
  auto model = make_net();
  DataParallel dp(*model, W());
  Tensor extra = Tensor::full({4}, static_cast<double>(W().rank()), DType::f32);
  dp.average_state({extra});
  for (float v : extra.to_vector<float>()) EXPECT_FLOAT_EQ(v, (W().size() - 1) / 2.0f);
  const int64_t calls = dp.sync_allreduces();
  Tensor bad = Tensor::zeros({2}, DType::f64);
  try {
    dp.average_state({extra, bad});
    ADD_FAILURE() << "a float64 extra tensor was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("average_state: extra tensor 1 must be contiguous float32"),
              std::string::npos) << e.what();
  }
  EXPECT_EQ(dp.sync_allreduces(), calls) << "nothing was sent for the refused call";
}

}  // namespace
}  // namespace hpdl::dist
