// Training-loop options through the config and the Trainer, on a small CSV of
// features: optimizer.clip_grad_norm bounds each plain SGD update by lr * max_norm
// and logs the norm before clipping; train.label_smoothing enters the training
// loss with exactly the configured eps (the first step's loss is linear in eps).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "hpdl/train/checkpoint.h"
#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"
#include "tests/unit/test_util.h"
#include "tests/unit/train/train_util.h"

namespace fs = std::filesystem;
using namespace hpdl;
using namespace hpdl::train;
using hpdl::test::error_of;
using hpdl::test::train_quietly;

namespace {

// Three classes of 5 features: class k has feature k around 2, the rest noise in [-1, 1].
void write_csv(const fs::path& file, int n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::ofstream out(file);
  out << "f0,f1,f2,f3,f4,label\n";
  for (int i = 0; i < n; ++i) {
    const int k = static_cast<int>(gen() % 3);
    for (int j = 0; j < 5; ++j) {
      const double noise = static_cast<double>(gen() % 2001) / 1000.0 - 1.0;
      out << fmt::format("{:.4f},", (j == k ? 2.0 : 0.0) + noise);
    }
    out << k << "\n";
  }
}

Config small_run(const fs::path& data, const fs::path& run_dir, const std::string& extra,
                 const std::vector<std::string>& overrides = {}) {
  return parse_config(fmt::format(R"(
[data]
dataset = "csv"
path = "{}"
batch_size = 16
workers = 1
shuffle = false
normalize = false
[model]
name = "mlp"
num_classes = 3
hidden = [8]
[optimizer]
name = "sgd"
lr = 0.5
momentum = 0.0
[train]
epochs = 1
seed = 5
threads = 1
run_dir = "{}"
checkpoint_every_epochs = 0
log_every = 1
{}
)", data.string(), run_dir.string(), extra), "options.toml", overrides);
}

// The model's weights in the newest checkpoint, flattened in name order.
std::vector<double> final_weights(const fs::path& run_dir) {
  CheckpointManager ckpt(run_dir);
  auto info = ckpt.latest_valid();
  EXPECT_TRUE(info.has_value()) << run_dir;
  std::vector<double> out;
  if (!info) return out;
  for (auto& [name, t] : ckpt.load(*info))
    if (name.rfind("model.", 0) == 0)
      for (double v : t.to_vector<double>()) out.push_back(v);
  return out;
}

double distance(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double s = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s);
}

class TrainingOptions : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("training_options");
    fs::create_directories(dir_ / "data");
    write_csv(dir_ / "data" / "train.csv", 480, 1);
    write_csv(dir_ / "data" / "test.csv", 120, 2);
  }
  fs::path dir_;
};

}  // namespace

// Plain SGD moves the weights by lr * g: with clipping, the second step's move is at
// most lr * max_norm, while unclipped it is far larger (so the bound can fail).
TEST_F(TrainingOptions, ClipGradNormBoundsTheUpdateAndLogsTheNorm) {
  const double lr = 0.5, max_norm = 0.01;
  std::vector<double> moved;
  for (const std::string& clip : {std::string(), fmt::format("optimizer.clip_grad_norm={}", max_norm)}) {
    std::vector<std::vector<double>> w;
    for (int steps : {1, 2}) {
      const fs::path run = dir_ / fmt::format("run_{}_{}", clip.empty() ? "plain" : "clip", steps);
      std::vector<std::string> overrides;
      if (!clip.empty()) overrides.push_back(clip);
      train_quietly(small_run(dir_ / "data", run, fmt::format("max_steps = {}\n", steps), overrides));
      w.push_back(final_weights(run));
      if (steps == 2) {
        auto recs = test::metrics_records(run, "step");
        ASSERT_EQ(recs.size(), 2u);
        EXPECT_EQ(recs[1].contains("grad_norm"), !clip.empty());
        if (!clip.empty()) {
          EXPECT_GT(recs[1]["grad_norm"].get<double>(), max_norm) << "clipping was not active";
        }
      }
    }
    moved.push_back(distance(w[0], w[1]));
  }
  EXPECT_LE(moved[1], lr * max_norm * (1 + 1e-4)) << "clipped step moved too far";
  EXPECT_GT(moved[1], 0.5 * lr * max_norm) << "clipped step did not move";
  EXPECT_GT(moved[0], 10 * lr * max_norm) << "the unclipped step is too small for the bound to mean anything";
}

// The first step sees the same weights and batch whatever eps is, and smoothed cross
// entropy is (1 - eps) * nll + eps * mean_c(-log p_c): linear in eps, with a non-zero slope.
TEST_F(TrainingOptions, LabelSmoothingEntersTheTrainingLossWithItsEps) {
  std::vector<double> first_loss;
  for (double eps : {0.0, 0.3, 0.6}) {
    const fs::path run = dir_ / fmt::format("run_ls_{}", eps);
    train_quietly(small_run(dir_ / "data", run, fmt::format("max_steps = 1\nlabel_smoothing = {}\n", eps)));
    auto recs = test::metrics_records(run, "step");
    ASSERT_EQ(recs.size(), 1u);
    first_loss.push_back(recs[0]["loss"].get<double>());
  }
  EXPECT_GT(std::abs(first_loss[1] - first_loss[0]), 1e-3) << "label smoothing did not change the loss";
  EXPECT_NEAR(first_loss[2] - first_loss[1], first_loss[1] - first_loss[0], 1e-5);
}

// Gradient accumulation is a larger batch in pieces: 2 x 16 (and 4 x 16) per step match
// 32 (and 64) per step after a whole epoch of plain SGD. 480 samples: the last group of 4
// batches has 2 (32 samples), which must be weighted like a batch of 32, not 64.
TEST_F(TrainingOptions, AccumulatedStepsMatchTheLargerBatch) {
  for (int64_t k : {2, 4}) {
    const fs::path big = dir_ / fmt::format("run_big_{}", k), acc = dir_ / fmt::format("run_acc_{}", k);
    const std::string ckpt = "train.checkpoint_every_epochs=1";
    TrainSummary sb =
        train_quietly(small_run(dir_ / "data", big, "", {ckpt, fmt::format("data.batch_size={}", 16 * k)}));
    TrainSummary sa =
        train_quietly(small_run(dir_ / "data", acc, fmt::format("accumulate_steps = {}\n", k), {ckpt}));
    EXPECT_EQ(sa.steps, sb.steps) << "k = " << k;
    EXPECT_EQ(sa.steps, (480 / 16 + k - 1) / k) << "k = " << k;
    const auto wb = final_weights(big), wa = final_weights(acc);
    ASSERT_FALSE(wb.empty());
    double scale = 0;
    for (double v : wb) scale = std::max(scale, std::abs(v));
    EXPECT_LT(distance(wa, wb), 1e-5 * scale * std::sqrt(static_cast<double>(wb.size()))) << "k = " << k;
    // The same samples were seen, and the logged training loss is over all of them.
    EXPECT_NEAR(test::metrics_records(acc, "step").back()["loss"].get<double>(),
                test::metrics_records(big, "step").back()["loss"].get<double>(), 1e-5);
  }
  // Without accumulation the smaller batch takes twice the steps and ends elsewhere (so the match means something).
  const fs::path small = dir_ / "run_small";
  train_quietly(small_run(dir_ / "data", small, "", {"train.checkpoint_every_epochs=1"}));
  EXPECT_GT(distance(final_weights(small), final_weights(dir_ / "run_big_2")), 1e-3);
}

// train.local_sgd_steps on one process: there is nothing to average, so the run is plain
// training bit for bit (the option must not change the loop, e.g. drop the optimizer step),
// and summary.json records it as off.
TEST_F(TrainingOptions, LocalSgdOnOneProcessIsPlainTraining) {
  const fs::path plain = dir_ / "run_plain_sgd", local = dir_ / "run_local_sgd";
  const std::vector<std::string> o = {"train.checkpoint_every_epochs=1", "optimizer.momentum=0.9"};
  train_quietly(small_run(dir_ / "data", plain, "", o));
  train_quietly(small_run(dir_ / "data", local, "local_sgd_steps = 4\n", o));
  const auto wp = final_weights(plain), wl = final_weights(local);
  ASSERT_FALSE(wp.empty());
  EXPECT_EQ(wp, wl);
  std::ifstream in(local / "summary.json");
  const auto summary = nlohmann::json::parse(in);
  EXPECT_EQ(summary["local_sgd_steps"].get<int64_t>(), 0);
  EXPECT_FALSE(summary.contains("sync_allreduces")) << "no DataParallel on one process";
  // Training moved the weights away from the initial ones (so equality is not trivial).
  const fs::path none = dir_ / "run_no_steps";
  train_quietly(small_run(dir_ / "data", none, "max_steps = 1\n", o));
  EXPECT_GT(distance(final_weights(none), wp), 1e-3);
}

TEST(TrainingOptionsConfig, RangesAreChecked) {
  std::string err = error_of([] { parse_config("[train]\nlabel_smoothing = 1.0\n", "o.toml"); });
  EXPECT_NE(err.find("o.toml: train.label_smoothing must be in [0, 1), got 1"), std::string::npos) << err;
  err = error_of([] { parse_config("[optimizer]\nclip_grad_norm = -1.0\n", "o.toml"); });
  EXPECT_NE(err.find("o.toml: optimizer.clip_grad_norm must be >= 0, got -1"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\naccumulate_steps = 0\n", "o.toml"); });
  EXPECT_NE(err.find("o.toml: train.accumulate_steps must be > 0, got 0"), std::string::npos) << err;
  EXPECT_EQ(parse_config("", "o.toml").optimizer.clip_grad_norm, 0.0);
  EXPECT_EQ(parse_config("[train]\nlabel_smoothing = 0.1\n", "o.toml").train.label_smoothing, 0.1);
}
