// EarlyStopping and train.monitor (design decision 72): improvement in both directions, min_delta,
// patience, NaN, the state a checkpoint carries over --resume, the monitor names each loss allows,
// and best.safetensors beside the checkpoints (atomic, never pruned).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <unistd.h>

#include "hpdl/core/error.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/train/checkpoint.h"
#include "hpdl/train/config.h"
#include "hpdl/train/early_stopping.h"
#include "hpdl/tune/tune.h"
#include "tests/unit/test_util.h"

using namespace hpdl;
using namespace hpdl::train;

namespace {

using test::error_of;

Config config_with(const std::vector<std::string>& overrides) { return parse_config("", "test.toml", overrides); }

}  // namespace

TEST(EarlyStopping, LowerIsBetterImprovesAndCountsPatience) {
  EarlyStopping es("val_loss", true, 0.0, 2);
  EXPECT_FALSE(es.has_best());
  EXPECT_TRUE(es.update(1.0, 1, 10));  // the first value is the best so far
  EXPECT_TRUE(es.update(0.5, 2, 20));
  EXPECT_EQ(es.best(), 0.5);
  EXPECT_EQ(es.best_epoch(), 2);
  EXPECT_EQ(es.best_step(), 20);
  EXPECT_FALSE(es.update(0.5, 3, 30));  // equal is no improvement
  EXPECT_EQ(es.bad_evaluations(), 1);
  EXPECT_FALSE(es.should_stop());
  EXPECT_FALSE(es.update(0.7, 4, 40));
  EXPECT_TRUE(es.should_stop());
  EXPECT_EQ(es.best(), 0.5);
  EXPECT_EQ(es.best_epoch(), 2);
}

TEST(EarlyStopping, ImprovementResetsTheCount) {
  EarlyStopping es("test_loss", true, 0.0, 2);
  es.update(1.0, 1, 1);
  es.update(1.1, 2, 2);
  EXPECT_EQ(es.bad_evaluations(), 1);
  EXPECT_TRUE(es.update(0.9, 3, 3));
  EXPECT_EQ(es.bad_evaluations(), 0);
  es.update(0.95, 4, 4);
  EXPECT_FALSE(es.should_stop());
}

TEST(EarlyStopping, HigherIsBetterForAccuracyAndR2) {
  EarlyStopping es("val_accuracy", false, 0.0, 1);
  EXPECT_TRUE(es.update(0.80, 1, 1));
  EXPECT_TRUE(es.update(0.85, 2, 2));
  EXPECT_FALSE(es.update(0.84, 3, 3));
  EXPECT_TRUE(es.should_stop());
  EXPECT_EQ(es.best(), 0.85);
  EXPECT_FALSE(metric_lower_is_better("val_accuracy"));
  EXPECT_FALSE(metric_lower_is_better("test_r2"));
  EXPECT_TRUE(metric_lower_is_better("val_loss"));
  EXPECT_TRUE(metric_lower_is_better("test_rmse"));
  EXPECT_TRUE(metric_lower_is_better("val_mae"));
  // hpdl tune ranks trials by the same rule.
  for (const char* m : {"val_accuracy", "val_loss", "test_rmse", "test_mae", "val_r2", "test_accuracy"})
    EXPECT_EQ(tune::metric_is_loss(m), metric_lower_is_better(m)) << m;
}

TEST(EarlyStopping, MinDeltaIsTheLeastChangeThatCounts) {
  EarlyStopping lower("val_loss", true, 0.1, 3);
  lower.update(1.0, 1, 1);
  EXPECT_FALSE(lower.update(0.95, 2, 2));  // better, but by less than min_delta
  EXPECT_EQ(lower.best(), 1.0);
  EXPECT_FALSE(lower.update(0.9, 3, 3));   // exactly min_delta: not more than it
  EXPECT_TRUE(lower.update(0.85, 4, 4));
  EXPECT_EQ(lower.best(), 0.85);
  EarlyStopping higher("val_accuracy", false, 0.01, 3);
  higher.update(0.5, 1, 1);
  EXPECT_FALSE(higher.update(0.505, 2, 2));
  EXPECT_TRUE(higher.update(0.52, 3, 3));
}

TEST(EarlyStopping, NaNNeverImproves) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EarlyStopping es("val_r2", false, 0.0, 2);
  EXPECT_FALSE(es.update(nan, 1, 1));  // not even as the first value
  EXPECT_FALSE(es.has_best());
  EXPECT_TRUE(es.update(0.3, 2, 2));
  EXPECT_FALSE(es.update(nan, 3, 3));
  EXPECT_FALSE(es.update(std::numeric_limits<double>::infinity(), 4, 4));
  EXPECT_TRUE(es.should_stop());
  EXPECT_EQ(es.best(), 0.3);
}

TEST(EarlyStopping, PatienceZeroOnlyTracks) {
  EarlyStopping es("val_loss", true, 0.0, 0);
  es.update(1.0, 1, 1);
  for (int i = 2; i < 10; ++i) es.update(2.0, i, i);
  EXPECT_FALSE(es.should_stop());
  EXPECT_EQ(es.bad_evaluations(), 8);
}

TEST(EarlyStopping, StateSurvivesAResume) {
  // One run of five evaluations, and the same cut after the second with the state carried over as a
  // checkpoint sidecar carries it (through JSON text), decide alike.
  const double values[] = {1.0, 0.8, 0.9, 0.85, 0.95};
  EarlyStopping straight("val_loss", true, 0.0, 3), first("val_loss", true, 0.0, 3);
  for (int i = 0; i < 5; ++i) straight.update(values[i], i + 1, 10 * (i + 1));
  for (int i = 0; i < 2; ++i) first.update(values[i], i + 1, 10 * (i + 1));
  EarlyStopping resumed("val_loss", true, 0.0, 3);
  ASSERT_TRUE(resumed.load_state(nlohmann::json::parse(first.state().dump()), "step-2.json"));
  for (int i = 2; i < 5; ++i) resumed.update(values[i], i + 1, 10 * (i + 1));
  EXPECT_TRUE(straight.should_stop());
  EXPECT_TRUE(resumed.should_stop());
  EXPECT_EQ(resumed.best(), straight.best());
  EXPECT_EQ(resumed.best_epoch(), 2);
  EXPECT_EQ(resumed.best_step(), 20);
  EXPECT_EQ(resumed.bad_evaluations(), straight.bad_evaluations());
  // Before any finite value "best" is null, and comes back as no best.
  EarlyStopping none("val_loss", true, 0.0, 3), back("val_loss", true, 0.0, 3);
  none.update(std::nan(""), 1, 1);
  EXPECT_TRUE(none.state().at("best").is_null());
  ASSERT_TRUE(back.load_state(none.state(), "x.json"));
  EXPECT_FALSE(back.has_best());
  EXPECT_EQ(back.bad_evaluations(), 1);
}

TEST(EarlyStopping, StateOfAnotherMonitorIsNotTaken) {
  EarlyStopping loss("val_loss", true, 0.0, 2);
  loss.update(0.5, 1, 1);
  loss.update(0.6, 2, 2);
  EarlyStopping acc("val_accuracy", false, 0.0, 2);
  EXPECT_FALSE(acc.load_state(loss.state(), "step.json"));
  EXPECT_FALSE(acc.has_best());
  EXPECT_EQ(acc.bad_evaluations(), 0);
  nlohmann::json bad = loss.state();
  bad["bad_evaluations"] = "two";
  EXPECT_NE(error_of([&] { EarlyStopping("val_loss", true, 0.0, 2).load_state(bad, "ckpt/step-9.json"); })
                .find("ckpt/step-9.json: the early-stopping state"),
            std::string::npos);
}

TEST(EarlyStopping, MonitorDefaultsAndNames) {
  EXPECT_EQ(resolve_monitor(config_with({})), "test_loss");
  EXPECT_EQ(resolve_monitor(config_with({"data.validation=100"})), "val_loss");
  EXPECT_EQ(resolve_monitor(config_with({"train.monitor=test_accuracy"})), "test_accuracy");
  EXPECT_EQ(resolve_monitor(config_with({"train.loss=mse", "train.monitor=test_r2"})), "test_r2");
  const EarlyStopping es(config_with({"data.validation=10", "train.monitor=val_accuracy",
                                      "train.early_stopping_patience=4", "train.early_stopping_min_delta=0.5"}));
  EXPECT_EQ(es.monitor(), "val_accuracy");
  EXPECT_FALSE(es.lower_is_better());
  EXPECT_EQ(es.patience(), 4);
}

TEST(EarlyStopping, BadSettingsAreRefusedNamingTheKey) {
  std::string e = error_of([] { config_with({"train.monitor=val_acc", "data.validation=10"}); });
  EXPECT_NE(e.find("test.toml"), std::string::npos) << e;
  EXPECT_NE(e.find("train.monitor = 'val_acc'"), std::string::npos) << e;
  EXPECT_NE(e.find("val_loss, val_accuracy, test_loss, test_accuracy"), std::string::npos) << e;
  e = error_of([] { config_with({"train.loss=mse", "train.monitor=test_accuracy"}); });
  EXPECT_NE(e.find("val_rmse, val_mae, val_r2"), std::string::npos) << e;
  e = error_of([] { config_with({"train.loss=huber", "train.monitor=test_rmse"}); });
  EXPECT_EQ(e, "");
  e = error_of([] { config_with({"train.monitor=val_loss"}); });
  EXPECT_NE(e.find("needs a validation split: set data.validation"), std::string::npos) << e;
  e = error_of([] { config_with({"train.early_stopping_patience=-1"}); });
  EXPECT_NE(e.find("train.early_stopping_patience must be >= 0"), std::string::npos) << e;
  e = error_of([] { config_with({"train.early_stopping_min_delta=-0.1"}); });
  EXPECT_NE(e.find("train.early_stopping_min_delta must be finite and >= 0"), std::string::npos) << e;
  e = error_of([] { config_with({"train.keep_best=true", "train.eval_every_epochs=0"}); });
  EXPECT_NE(e.find("train.keep_best = true compares evaluations, but train.eval_every_epochs = 0"),
            std::string::npos) << e;
  e = error_of([] { config_with({"train.early_stopping_patience=3", "train.eval_every_epochs=0"}); });
  EXPECT_NE(e.find("train.early_stopping_patience > 0 compares evaluations"), std::string::npos) << e;
  // The keys round-trip through the run directory's config.toml.
  const Config c = config_with({"train.keep_best=true", "train.early_stopping_patience=3",
                                "train.early_stopping_min_delta=0.25", "train.monitor=test_accuracy"});
  const Config back = parse_config(to_toml(c), "config.toml");
  EXPECT_TRUE(back.train.keep_best);
  EXPECT_EQ(back.train.early_stopping_patience, 3);
  EXPECT_EQ(back.train.early_stopping_min_delta, 0.25);
  EXPECT_EQ(back.train.monitor, "test_accuracy");
}

TEST(EarlyStopping, BestFileIsSelfContainedAndNeverPruned) {
  const auto dir = std::filesystem::temp_directory_path() / ("hpdl_best_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  CheckpointManager ckpt(dir, 1);
  std::map<std::string, Tensor> model{{"model.w", Tensor::from_vector<float>({1, 2, 3}, {3})}};
  ckpt.save_best(model, {{"hpdl.monitor", "val_loss"}, {"hpdl.epoch", "2"}});
  for (int64_t s = 1; s <= 3; ++s) {
    CheckpointMeta meta;
    meta.step = s;
    ckpt.save(meta, model);
  }
  EXPECT_EQ(ckpt.steps(), std::vector<int64_t>{3});  // keep = 1 pruned steps 1 and 2 ...
  const auto best = CheckpointManager::best_path(dir);
  ASSERT_TRUE(std::filesystem::exists(best));  // ... and left the best model alone
  EXPECT_EQ(best, dir / "checkpoints" / "best.safetensors");
  const auto f = io::load_safetensors(best);
  EXPECT_EQ(f.metadata.at("hpdl.format"), "hpdl-best-model");
  EXPECT_EQ(f.metadata.at("hpdl.monitor"), "val_loss");
  EXPECT_EQ(f.metadata.at("hpdl.epoch"), "2");
  EXPECT_EQ(f.tensors.at("model.w").to_vector<float>(), (std::vector<float>{1, 2, 3}));
  ASSERT_TRUE(ckpt.latest_valid().has_value());
  EXPECT_EQ(ckpt.latest_valid()->meta.step, 3);  // the best file is no checkpoint to resume from
  std::filesystem::remove_all(dir);
}
