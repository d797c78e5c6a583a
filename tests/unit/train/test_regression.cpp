// Regression in the Trainer (train.loss = mse, l1, huber): the objective's
// metric sums give RMSE, MAE and R^2 exactly (against a two-pass hand
// computation), float targets travel from npy and csv files through the
// DataLoader as [B, k] float32, a run learns a linear function to near-zero
// error and reports it in metrics.jsonl and summary.json, and what does not fit
// (label smoothing, class labels with a regression loss, float labels with
// cross entropy, a target count unlike the model's outputs) is refused by name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "hpdl/autograd/node.h"
#include "hpdl/data/dataloader.h"
#include "hpdl/data/readers.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/config.h"
#include "hpdl/train/objective.h"
#include "hpdl/train/trainer.h"
#include "tests/unit/test_util.h"
#include "tests/unit/train/train_util.h"

namespace fs = std::filesystem;
using namespace hpdl;
using namespace hpdl::train;
using hpdl::test::error_of;

namespace {

// y = 2 x0 - x1 + 0.5 x2 + 0.3 (and, with k = 2, a second output -x0 + 0.2 x2 - 1), x in [-1, 1].
void write_linear_npy(const fs::path& dir, const std::string& split, int64_t n, int64_t k, uint32_t seed,
                      DType y_dtype = DType::f32) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n * 3)), y(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n; ++i) {
    float* xi = &x[static_cast<size_t>(i * 3)];
    for (int j = 0; j < 3; ++j) xi[j] = u(gen);
    y[static_cast<size_t>(i * k)] = 2 * xi[0] - xi[1] + 0.5f * xi[2] + 0.3f;
    if (k == 2) y[static_cast<size_t>(i * k + 1)] = -xi[0] + 0.2f * xi[2] - 1.0f;
  }
  data::write_npy(dir / (split + "_x.npy"), DType::f32, {n, 3}, x.data());
  if (y_dtype == DType::i64) {
    std::vector<int64_t> labels(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = i % 3;
    data::write_npy(dir / (split + "_y.npy"), DType::i64, {n}, labels.data());
  } else {
    data::write_npy(dir / (split + "_y.npy"), DType::f32, k == 1 ? Shape{n} : Shape{n, k}, y.data());
  }
}

Config regression_run(const fs::path& data, const fs::path& run_dir, const std::vector<std::string>& overrides = {}) {
  return parse_config(fmt::format(R"(
[data]
dataset = "npy"
path = "{}"
batch_size = 16
workers = 1
normalize = false
[model]
name = "mlp"
num_classes = 1
hidden = []
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[train]
loss = "mse"
epochs = 8
seed = 3
threads = 1
run_dir = "{}"
checkpoint_every_epochs = 1
log_every = 10
)", data.string(), run_dir.string()), "regression.toml", overrides);
}

// RMSE, MAE and R^2 (mean over outputs of 1 - SSE/SST, SST about the two-pass mean) by hand.
struct Hand {
  double rmse = 0, mae = 0, r2 = 0;
};
Hand hand_metrics(const std::vector<double>& pred, const std::vector<double>& y, int64_t k) {
  const int64_t n = static_cast<int64_t>(y.size()) / k;
  Hand h;
  double se = 0, ae = 0;
  for (int64_t j = 0; j < k; ++j) {
    double mean = 0, sse = 0, sst = 0;
    for (int64_t i = 0; i < n; ++i) mean += y[i * k + j];
    mean /= static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) {
      const double e = pred[i * k + j] - y[i * k + j], d = y[i * k + j] - mean;
      sse += e * e, sst += d * d, ae += std::abs(e);
    }
    se += sse;
    h.r2 += (1 - sse / sst) / static_cast<double>(k);
  }
  h.rmse = std::sqrt(se / static_cast<double>(n * k));
  h.mae = ae / static_cast<double>(n * k);
  return h;
}

class Regression : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("regression");
    fs::create_directories(dir_ / "data");
    write_linear_npy(dir_ / "data", "train", 512, 1, 1);
    write_linear_npy(dir_ / "data", "test", 100, 1, 2);
  }
  fs::path dir_;
};

}  // namespace

// Sums added batch by batch give the whole set's metrics (R^2 needs the whole set's mean).
TEST(RegressionMetrics, SumsOverBatchesGiveTheExactWholeSetValues) {
  Config cfg;
  cfg.train.loss = "huber";
  cfg.model.num_classes = 2;
  const Objective obj(cfg);
  ASSERT_TRUE(obj.regression());
  EXPECT_EQ(obj.targets(), 2);
  EXPECT_EQ(obj.metric_names(), (std::vector<std::string>{"rmse", "mae", "r2"}));
  const std::vector<double> y{1.0, 10.0, 2.0, 12.0, 4.0, 9.0, 3.5, 11.0, 0.5, 14.0, 2.5, 8.0, 3.0, 10.5};
  const std::vector<double> p{1.5, 9.0, 2.0, 12.5, 3.0, 9.5, 3.0, 11.0, 1.5, 12.0, 2.0, 8.5, 3.25, 10.0};
  const int64_t n = 7;
  Tensor yt = Tensor::from_vector(y, {n, 2}), pt = Tensor::from_vector(p, {n, 2});
  // Batches of 3, 3 and 1 rows, float32 as the trainer has them.
  Tensor total;
  for (int64_t b = 0; b < n; b += 3) {
    const int64_t e = std::min<int64_t>(n, b + 3);
    Tensor s = obj.metric_sums(pt.slice(0, b, e).to(DType::f32), yt.slice(0, b, e).to(DType::f32));
    total = total.defined() ? add(total, s) : s;
  }
  ASSERT_EQ(static_cast<size_t>(total.numel()), obj.metric_sums_size());
  auto m = obj.metrics(total.to_vector<double>(), static_cast<double>(n));
  const Hand h = hand_metrics(p, y, 2);
  EXPECT_NEAR(m["rmse"], h.rmse, 1e-12);
  EXPECT_NEAR(m["mae"], h.mae, 1e-12);
  EXPECT_NEAR(m["r2"], h.r2, 1e-12);
  EXPECT_GT(h.r2, 0.5);  // a meaningful fit, not a degenerate case
  EXPECT_LT(h.r2, 0.99);
  // A perfect prediction: RMSE 0, R^2 1; a constant output column has no R^2 term.
  auto perfect = obj.metrics(obj.metric_sums(yt, yt).to_vector<double>(), static_cast<double>(n));
  EXPECT_EQ(perfect["rmse"], 0.0);
  EXPECT_NEAR(perfect["r2"], 1.0, 1e-12);
  Tensor flat = Tensor::full({n, 2}, 3.0, DType::f64);
  auto nan = obj.metrics(obj.metric_sums(flat, flat).to_vector<double>(), static_cast<double>(n));
  EXPECT_TRUE(std::isnan(nan["r2"]));
  // Classification keeps accuracy.
  const Objective ce;
  EXPECT_EQ(ce.metric_names(), std::vector<std::string>{"accuracy"});
  Tensor logits = Tensor::from_vector<double>({0, 1, 1, 0, 2, 3}, {3, 2});
  auto acc = ce.metrics(ce.metric_sums(logits, Tensor::from_vector<int64_t>({1, 1, 1}, {3})).to_vector<double>(), 3);
  EXPECT_NEAR(acc["accuracy"], 2.0 / 3.0, 1e-12);
}

// The loss each kind trains with: mse, l1, huber (with its delta) on the same batch.
TEST(RegressionMetrics, TrainAndEvalLossesFollowTrainLoss) {
  Tensor out = Tensor::from_vector<double>({0.0, 2.0, -3.0, 1.0}, {2, 2});
  Tensor y = Tensor::from_vector<double>({0.5, 0.0, 0.0, 1.0}, {2, 2});  // r = -0.5, 2, -3, 0
  Config cfg;
  cfg.model.num_classes = 2;
  const std::vector<std::pair<std::string, double>> expect{
      {"mse", (0.25 + 4 + 9) / 4}, {"l1", (0.5 + 2 + 3) / 4}, {"huber", (0.125 + 1.5 * (2 - 0.75) + 1.5 * (3 - 0.75)) / 4}};
  for (const auto& [loss, value] : expect) {
    cfg.train.loss = loss;
    cfg.train.huber_delta = 1.5;
    const Objective obj(cfg);
    EXPECT_NEAR(obj.train_loss(out, y).item(), value, 1e-12) << loss;
    EXPECT_NEAR(obj.eval_loss_sum(out, y).item(), value * 2, 1e-12) << loss;  // per sample: mean over 2 outputs
  }
}

TEST_F(Regression, DataLoaderCollatesFloatTargets) {
  write_linear_npy(dir_ / "data", "train", 20, 2, 7);
  auto ds = data::open_dataset("npy", dir_ / "data", true, {}, 2);
  ASSERT_EQ(ds->target_size(), 2);
  auto sampler = std::make_shared<data::DistributedSampler>(ds->size(), 1, 0, false, 0, false);
  data::DataLoaderOptions o;
  o.batch_size = 8;
  o.workers = 2;
  data::DataLoader loader(ds, sampler, o);
  loader.start_epoch(0);
  data::Batch b;
  int64_t seen = 0;
  while (loader.next(b)) {
    ASSERT_EQ(b.labels.dtype(), DType::f32);
    ASSERT_EQ(b.labels.dim(1), 2);
    auto v = b.labels.to_vector<float>();
    auto x = b.images.to_vector<float>();
    for (int64_t i = 0; i < b.size(); ++i) {
      EXPECT_FLOAT_EQ(v[i * 2], 2 * x[i * 3] - x[i * 3 + 1] + 0.5f * x[i * 3 + 2] + 0.3f);
      EXPECT_FLOAT_EQ(v[i * 2 + 1], -x[i * 3] + 0.2f * x[i * 3 + 2] - 1.0f);
    }
    seen += b.size();
  }
  EXPECT_EQ(seen, 20);
}

// A linear model learns y = 2 x0 - x1 + 0.5 x2 + 0.3 to near-zero error; the summary's test
// metrics equal a hand computation from the checkpoint's predictions on the test set.
TEST_F(Regression, TrainerLearnsALinearFunctionAndReportsExactMetrics) {
  const fs::path run = dir_ / "run";
  TrainSummary s = test::train_quietly(regression_run(dir_ / "data", run));
  ASSERT_EQ(s.epochs_done, 8);
  EXPECT_LT(s.test_metrics.at("rmse"), 1e-3);
  EXPECT_GT(s.test_metrics.at("r2"), 0.99999);
  EXPECT_LT(s.final_train_loss, 1e-5);
  EXPECT_LT(s.test_accuracy, 0);  // no accuracy for a regression loss

  auto summary = nlohmann::json::parse(test::read_text(run / "summary.json"));
  EXPECT_EQ(summary["loss"], "mse");
  EXPECT_FALSE(summary.contains("test_accuracy"));
  for (const char* key : {"test_loss", "test_rmse", "test_mae", "test_r2"}) EXPECT_TRUE(summary.contains(key)) << key;
  auto epochs = test::metrics_records(run, "epoch");
  ASSERT_EQ(epochs.size(), 8u);
  for (const char* key : {"train_loss", "train_rmse", "train_mae", "train_r2", "test_rmse", "test_r2"})
    EXPECT_TRUE(epochs.back().contains(key)) << key;
  EXPECT_GT(epochs.front()["train_rmse"].get<double>(), epochs.back()["train_rmse"].get<double>());
  auto steps = test::metrics_records(run, "step");
  ASSERT_FALSE(steps.empty());
  EXPECT_TRUE(steps.front().contains("rmse"));
  EXPECT_FALSE(steps.front().contains("accuracy"));

  // The same metrics by hand, from the trained weights. The test targets are not all equal,
  // and the model is good but not perfect, so R^2 and RMSE both say something.
  Config cfg = regression_run(dir_ / "data", run);
  auto ds = load_datasets(cfg.data, 1);
  auto model = build_model(cfg, ds.test->sample_shape());
  load_model_weights(*model, run);
  model->eval();
  NoGradGuard ng;
  auto xs = data::read_npy(dir_ / "data" / "test_x.npy");
  Tensor x = Tensor::empty({100, 1, 1, 3}, DType::f32);
  std::memcpy(x.raw_data(), xs.bytes.data(), xs.bytes.size());
  auto pred = model->forward(x).to_vector<double>();
  auto ys = data::read_npy(dir_ / "data" / "test_y.npy");
  std::vector<double> y(100);
  for (size_t i = 0; i < y.size(); ++i) {
    float f;
    std::memcpy(&f, ys.bytes.data() + 4 * i, 4);
    y[i] = f;
  }
  const Hand h = hand_metrics(pred, y, 1);
  EXPECT_NEAR(summary["test_rmse"].get<double>(), h.rmse, 1e-6 + 1e-4 * h.rmse);
  EXPECT_NEAR(summary["test_mae"].get<double>(), h.mae, 1e-6 + 1e-4 * h.mae);
  EXPECT_NEAR(summary["test_r2"].get<double>(), h.r2, 1e-9);
  EXPECT_NEAR(summary["test_loss"].get<double>(), h.rmse * h.rmse, 1e-6 + 1e-4 * h.rmse * h.rmse);
  // evaluate() over the test set agrees with the run's last evaluation.
  const Objective obj(cfg);
  EvalResult ev = evaluate(*model, ds.test, cfg.data, nullptr, &obj);
  EXPECT_EQ(ev.samples, 100);
  EXPECT_NEAR(ev.metrics.at("r2"), h.r2, 1e-9);
}

// Two outputs from a CSV file whose last two columns are the targets, trained with l1 and huber.
TEST_F(Regression, CsvTargetsAreTheLastColumnsAndL1AndHuberTrain) {
  const fs::path csv = dir_ / "csv";
  fs::create_directories(csv);
  for (auto [split, n, seed] : {std::tuple{"train", 400, 5u}, std::tuple{"test", 80, 6u}}) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> u(-1, 1);
    std::string text = "a,b,c,y0,y1\n";
    for (int i = 0; i < n; ++i) {
      const double a = u(gen), b = u(gen), c = u(gen);
      text += fmt::format("{:.6f},{:.6f},{:.6f},{:.6f},{:.6f}\n", a, b, c, a + b - c, 0.5 * a - 2 * c + 1);
    }
    test::write_text(csv / (std::string(split) + ".csv"), text);
  }
  for (const char* loss : {"l1", "huber"}) {
    TrainSummary s = test::train_quietly(regression_run(
        csv, dir_ / (std::string("run_") + loss),
        {"data.dataset=csv", "model.num_classes=2", fmt::format("train.loss={}", loss), "train.huber_delta=0.5",
         "train.epochs=10", "optimizer.lr=0.05"}));
    EXPECT_GT(s.test_metrics.at("r2"), 0.99) << loss;
    EXPECT_LT(s.test_metrics.at("mae"), 0.05) << loss;
  }
}

TEST_F(Regression, WhatDoesNotFitIsRefusedByName) {
  const fs::path run = dir_ / "refused";
  // Label smoothing applies to class targets only.
  std::string e = error_of([&] { regression_run(dir_ / "data", run, {"train.label_smoothing=0.1"}); });
  EXPECT_NE(e.find("train.label_smoothing"), std::string::npos) << e;
  EXPECT_NE(e.find("mse"), std::string::npos) << e;
  e = error_of([&] { regression_run(dir_ / "data", run, {"train.loss=mae"}); });
  EXPECT_NE(e.find("train.loss"), std::string::npos) << e;
  e = error_of([&] { regression_run(dir_ / "data", run, {"train.loss=huber", "train.huber_delta=0"}); });
  EXPECT_NE(e.find("train.huber_delta"), std::string::npos) << e;
  // Two outputs, but the targets have one value per sample.
  e = error_of([&] { test::train_quietly(regression_run(dir_ / "data", run, {"model.num_classes=2"})); });
  EXPECT_NE(e.find("train_y.npy"), std::string::npos) << e;
  EXPECT_NE(e.find("model.num_classes"), std::string::npos) << e;
  // Integer class labels with a regression loss: the file and its dtype are named.
  fs::create_directories(dir_ / "ints");
  write_linear_npy(dir_ / "ints", "train", 32, 1, 3, DType::i64);
  write_linear_npy(dir_ / "ints", "test", 8, 1, 4, DType::i64);
  e = error_of([&] { test::train_quietly(regression_run(dir_ / "ints", run)); });
  EXPECT_NE(e.find("train_y.npy"), std::string::npos) << e;
  EXPECT_NE(e.find("int64"), std::string::npos) << e;
  EXPECT_NE(e.find("float targets"), std::string::npos) << e;
  // Float targets with cross entropy: the file, the dtype and the regression losses are named.
  e = error_of([&] {
    test::train_quietly(regression_run(dir_ / "data", run, {"train.loss=cross_entropy", "model.num_classes=3"}));
  });
  EXPECT_NE(e.find("train_y.npy"), std::string::npos) << e;
  EXPECT_NE(e.find("float32"), std::string::npos) << e;
  EXPECT_NE(e.find("train.loss = mse"), std::string::npos) << e;
}
