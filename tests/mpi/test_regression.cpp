// Regression metrics across ranks: evaluate() shards a set of 13 samples (an
// odd count, so the sampler pads the last shard by wrapping) over the ranks,
// all-reduces the objective's sums, and must give the whole set's RMSE, MAE and
// R^2 as a two-pass hand computation over all 13 samples does, on every rank.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/core/random.h"
#include "hpdl/data/dataset.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/train/objective.h"
#include "hpdl/train/trainer.h"

namespace hpdl::train {
namespace {

TEST(RegressionMetrics, EvaluateIsExactOverTheWholeSetOnEveryRank) {
  auto& comm = dist::Communicator::world();
  const int64_t n = 13, k = 2, d = 3;
  // The same data and model on every rank (fixed seeds).
  Generator gen(11);
  auto x = Tensor::rand({n, d}, gen, -1, 1).to_vector<float>();
  auto noise = Tensor::rand({n, k}, gen, -0.3, 0.3).to_vector<float>();
  std::vector<float> y(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i) {
    y[i * k] = x[i * d] - 2 * x[i * d + 1] + noise[i * k];
    y[i * k + 1] = 0.5f * x[i * d + 2] + 3 + noise[i * k + 1];
  }
  auto ds = std::make_shared<data::InMemoryDataset>(Shape{1, 1, d}, x, std::vector<int64_t>(n));
  ds->set_targets(y, k);
  nn::ModulePtr model = nn::models::mlp(d, {4}, k, "relu", 0.0, /*seed=*/5);
  Config cfg;
  cfg.train.loss = "mse";
  cfg.model.num_classes = k;
  cfg.data.normalize = false;
  cfg.data.batch_size = 4;
  cfg.data.workers = 0;
  const Objective obj(cfg);
  EvalResult r = evaluate(*model, ds, cfg.data, &comm, &obj);

  // By hand, over all 13 samples: predictions from the same model, two-pass means.
  Tensor pred_t = model->forward(Tensor::from_vector(x, {n, 1, 1, d}));
  auto pred = pred_t.to_vector<double>();
  double se = 0, ae = 0, r2 = 0;
  for (int64_t j = 0; j < k; ++j) {
    double mean = 0, sse = 0, sst = 0;
    for (int64_t i = 0; i < n; ++i) mean += y[i * k + j];
    mean /= n;
    for (int64_t i = 0; i < n; ++i) {
      const double e = pred[i * k + j] - y[i * k + j], c = y[i * k + j] - mean;
      sse += e * e, sst += c * c, ae += std::abs(e);
    }
    se += sse, r2 += (1 - sse / sst) / k;
  }
  EXPECT_EQ(r.samples, n) << "rank " << comm.rank();
  EXPECT_NEAR(r.metrics.at("rmse"), std::sqrt(se / (n * k)), 1e-6) << "rank " << comm.rank();
  EXPECT_NEAR(r.metrics.at("mae"), ae / (n * k), 1e-6) << "rank " << comm.rank();
  EXPECT_NEAR(r.metrics.at("r2"), r2, 1e-6) << "rank " << comm.rank();
  EXPECT_NEAR(r.loss, se / (n * k), 1e-6) << "rank " << comm.rank();
}

}  // namespace
}  // namespace hpdl::train
