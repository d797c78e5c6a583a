// PowerSGD across real ranks: exact for gradients of rank <= r, nothing lost
// by error feedback (the sum of what was applied plus the ranks' mean error
// is the sum of the true mean gradients), the same result on every rank to
// the bit, and inside DataParallel: replicas equal, fewer bytes, the plain
// path untouched before the start step.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/powersgd.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

std::vector<float> values(const Tensor& t) { return t.to_vector<float>(); }

// Every rank's copy of v, stacked.
std::vector<float> gather(const std::vector<float>& v) {
  return W().allgather(Tensor::from_vector(v, {static_cast<int64_t>(v.size())})).to_vector<float>();
}

TEST(PowerSgd, CompressibleShapesAndOrthogonalColumns) {
  EXPECT_FALSE(powersgd_compressible({64}, 4));
  EXPECT_FALSE(powersgd_compressible({64, 1}, 1));
  EXPECT_TRUE(powersgd_compressible({64, 32}, 4));      // (64 + 32) 4 < 2048
  EXPECT_TRUE(powersgd_compressible({16, 3, 3, 3}, 4));  // a convolution: [16, 27]
  EXPECT_FALSE(powersgd_compressible({4, 4}, 2));        // 16 is not < 16
  EXPECT_FALSE(powersgd_compressible({64, 32}, 0));

  Generator g(3);
  Tensor p = Tensor::randn({20, 3}, g);
  float* d = p.data<float>();
  for (int64_t a = 0; a < 20; ++a) d[a * 3 + 2] = 2.0f * d[a * 3 + 0] - d[a * 3 + 1];  // dependent column
  orthogonalize_columns(d, 20, 3);
  for (int j = 0; j < 2; ++j)
    for (int k = 0; k < 2; ++k) {
      double dot = 0;
      for (int64_t a = 0; a < 20; ++a) dot += double(d[a * 3 + j]) * d[a * 3 + k];
      EXPECT_NEAR(dot, j == k ? 1.0 : 0.0, 1e-6) << j << "," << k;
    }
  double left = 0;
  for (int64_t a = 0; a < 20; ++a) left = std::max(left, double(std::abs(d[a * 3 + 2])));
  EXPECT_LT(left, 1e-3) << "a dependent column leaves (almost) nothing";
}

// Gradients u v_rank^T (one column space on every rank) are rank 1: rank-1
// PowerSGD averages them exactly; a bias goes whole. Each rank's error is
// its gradient minus the mean (what the mean lacks of it), so the ranks'
// errors sum to zero: nothing of the mean is left to carry.
TEST(PowerSgd, LowRankGradientsAreAveragedExactly) {
  const int n = W().size(), r = W().rank();
  const int64_t rows = 12, cols = 9;
  Tensor w = Tensor::empty({rows, cols}), b = Tensor::empty({rows});
  std::vector<double> mean_w(rows * cols, 0.0), mean_b(rows, 0.0);
  for (int q = 0; q < n; ++q)
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const float v = static_cast<float>((i + 1) * std::sin(0.3 * (j + 1) * (q + 2)));
        mean_w[i * cols + j] += v / n;
        if (q == r) w.data<float>()[i * cols + j] = v;
      }
      mean_b[i] += double(q + i) / n;
      if (q == r) b.data<float>()[i] = static_cast<float>(q + i);
    }
  PowerSgd psgd({w, b}, /*rank=*/1, /*seed=*/9);
  EXPECT_EQ(psgd.compressed_count(), 1);
  EXPECT_EQ(psgd.wire_elements(), rows + (rows + cols));
  const int64_t bytes = psgd.reduce(W());
  EXPECT_EQ(bytes, psgd.wire_elements() * 4);
  double scale = 0, worst = 0;
  for (double v : mean_w) scale = std::max(scale, std::abs(v));
  for (int64_t i = 0; i < rows * cols; ++i) worst = std::max(worst, std::abs(w.data<float>()[i] - mean_w[i]));
  EXPECT_LT(worst, 1e-5 * scale) << "rank " << r;
  for (int64_t i = 0; i < rows; ++i) EXPECT_NEAR(b.data<float>()[i], mean_b[i], 1e-5);
  const auto errs = gather(psgd.error(0));
  double err = 0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    double sum = 0;
    for (int q = 0; q < n; ++q) sum += errs[q * rows * cols + i];
    err = std::max(err, std::abs(sum));
  }
  EXPECT_LT(err, 1e-5 * scale);
}

// Full-rank gradients G_rank, the same each step, at rank 2: what reaches
// the model over T steps plus the ranks' mean remaining error is T times the
// mean gradient. Every rank applies the same values, to the bit.
TEST(PowerSgd, ErrorFeedbackLosesNothingAndEveryRankAgrees) {
  const int n = W().size(), r = W().rank();
  const int64_t rows = 10, cols = 14, T = 6;
  Generator g(100 + r);
  const Tensor G = Tensor::randn({rows, cols}, g);
  Tensor grad = Tensor::empty({rows, cols});
  PowerSgd psgd({grad}, /*rank=*/2, /*seed=*/4);
  std::vector<double> applied(rows * cols, 0.0);
  for (int t = 0; t < T; ++t) {
    grad.copy_(G);
    psgd.reduce(W());
    const auto v = values(grad);
    for (size_t i = 0; i < v.size(); ++i) applied[i] += v[i];
    const auto all = gather(v);
    for (int q = 1; q < n; ++q)
      for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(all[i], all[q * v.size() + i]) << "step " << t << " rank " << q;
  }
  const auto gs = gather(values(G));
  const auto es = gather(psgd.error(0));
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    double mean_g = 0, mean_e = 0;
    for (int q = 0; q < n; ++q) mean_g += gs[q * rows * cols + i] / n, mean_e += es[q * rows * cols + i] / n;
    worst = std::max(worst, std::abs(applied[i] + mean_e - T * mean_g));
    scale = std::max(scale, std::abs(T * mean_g));
  }
  EXPECT_LT(worst, 1e-5 * scale);
  double e = 0;
  for (float x : psgd.error(0)) e = std::max(e, double(std::abs(x)));
  EXPECT_GT(e, 1e-3) << "a full-rank gradient at rank 2 must leave an error to carry";
}

nn::ModulePtr make_net() { return nn::models::mlp(16, {64, 32}, 4, "tanh", 0.0, /*seed=*/5); }

// Returns the weights after `steps` SGD steps on this rank's share of a batch.
std::vector<float> train(DataParallelOptions o, int steps) {
  const int n = W().size(), r = W().rank();
  auto model = make_net();
  DataParallel dp(*model, W(), o);
  optim::SGDOptions so;
  so.lr = 0.05;
  optim::SGD opt(optim::param_specs(*model), so);
  for (int k = 0; k < steps; ++k) {
    Generator g(500 + k);
    Tensor x = Tensor::randn({8 * n, 16}, g);
    std::vector<int64_t> y(8 * n);
    for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 4);
    Tensor ys = Tensor::from_vector(y, {8 * n});
    dp.zero_grad();
    cross_entropy(model->forward(x.slice(0, r * 8, (r + 1) * 8)), ys.slice(0, r * 8, (r + 1) * 8)).backward();
    dp.finish();
    opt.step();
  }
  std::vector<float> out;
  for (auto& p : model->parameters()) {
    auto v = p.to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  // Bytes: the compressed run sends less than the plain one would.
  if (o.powersgd_rank > 0 && o.powersgd_start_step == 0) {
    EXPECT_EQ(dp.powersgd_compressed_matrices(), 3);  // the three weight matrices
    EXPECT_LT(dp.powersgd_wire_elements() * 4, model->num_parameters() * 4 / 3);
    EXPECT_EQ(dp.sync_allreduce_bytes(), dp.powersgd_wire_elements() * 4 * steps);
  }
  return out;
}

TEST(PowerSgd, DataParallelKeepsReplicasEqualAndStartsWhenTold) {
  DataParallelOptions plain, compressed, later;
  plain.bucket_bytes = compressed.bucket_bytes = later.bucket_bytes = 4096;
  compressed.powersgd_rank = later.powersgd_rank = 2;
  later.powersgd_start_step = 100;
  const auto a = train(plain, 5), b = train(compressed, 5), c = train(later, 5);
  EXPECT_EQ(a, c) << "before powersgd_start_step the buckets are all-reduced as usual";
  const auto all = gather(b);
  for (int q = 1; q < W().size(); ++q)
    for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(all[i], all[q * b.size() + i]) << "replica " << q << " at " << i;
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, double(std::abs(a[i] - b[i])));
  EXPECT_GT(diff, 0.0) << "rank-2 compression changes the steps";
  EXPECT_LT(diff, 0.05) << "but stays close to them over 5 small steps";
}

}  // namespace
}  // namespace hpdl::dist
