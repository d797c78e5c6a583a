// data.dataset = "hdf5" through the config and the Trainer: the data.hdf5_*
// keys are checked like every other key, and a small MLP trains on a synthetic
// HDF5 file (uint8 images, int32 labels; float64 features) to well above chance
// with a falling training loss.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "hpdl/core/error.h"
#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"
#include "tests/unit/hdf5_util.h"
#include "tests/unit/test_util.h"
#include "tests/unit/train/train_util.h"

namespace fs = std::filesystem;
using namespace hpdl;
using namespace hpdl::train;
using hpdl::test::error_of;
using hpdl::test::train_quietly;

namespace {

// Four classes of 8x8 images: class k has its quadrant k bright (150..209), the rest noise (0..59).
void write_quadrants(hpdl::test::H5Writer& w, const std::string& x, const std::string& y, hsize_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> images(n * 64);
  std::vector<int32_t> labels(n);
  for (hsize_t i = 0; i < n; ++i) {
    const int k = static_cast<int>(gen() % 4);
    labels[i] = k;
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) {
        const bool hot = (r / 4) * 2 + (c / 4) == k;
        images[i * 64 + r * 8 + c] = static_cast<uint8_t>((hot ? 150 : 0) + gen() % 60);
      }
  }
  w.write(x, H5T_STD_U8LE, H5T_NATIVE_UINT8, {n, 8, 8}, images, hpdl::test::DatasetLayout{{64, 8, 8}, 4, false});
  w.write(y, H5T_STD_I32LE, H5T_NATIVE_INT32, {n}, labels);
}

// Two classes of 6 float64 features: the sign of feature 0 + feature 3, plus noise.
void write_features(hpdl::test::H5Writer& w, const std::string& x, const std::string& y, hsize_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<double> feat(n * 6);
  std::vector<int64_t> labels(n);
  for (hsize_t i = 0; i < n; ++i) {
    for (int j = 0; j < 6; ++j) feat[i * 6 + j] = static_cast<double>(gen() % 2001) / 1000.0 - 1.0;
    labels[i] = feat[i * 6] + feat[i * 6 + 3] > 0 ? 1 : 0;
  }
  w.write(x, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {n, 6}, feat);
  w.write(y, H5T_STD_I64LE, H5T_NATIVE_INT64, {n}, labels);
}

}  // namespace

TEST(Hdf5Config, KeysAreCheckedAndRoundTrip) {
  const std::string base = "[data]\ndataset = \"hdf5\"\npath = \"d.h5\"\n";
  Config c = parse_config(base + "hdf5_x = \"/x/train\"\nhdf5_y = \"y\"\nhdf5_test_x = \"a/b\"\nhdf5_test_y = \"c\"\n",
                          "h5.toml");
  EXPECT_EQ(c.data.hdf5_x, "/x/train");
  EXPECT_EQ(c.data.hdf5_y, "y");
  EXPECT_EQ(c.data.hdf5_test_x, "a/b");
  EXPECT_EQ(c.data.hdf5_test_y, "c");
  Config back = parse_config(to_toml(c), "resolved.toml");
  EXPECT_EQ(back.data.hdf5_test_x, "a/b");
  EXPECT_EQ(to_json(c)["data"]["hdf5_y"], "y");
  apply_override(c, "data.hdf5_x=other/images");
  EXPECT_EQ(c.data.hdf5_x, "other/images");

  Config d = parse_config(base, "h5.toml");  // defaults
  EXPECT_EQ(d.data.hdf5_x, "train/images");
  EXPECT_EQ(d.data.hdf5_test_y, "test/labels");

  std::string err = error_of([&] { parse_config(base + "hdf5_xx = \"a\"\n", "h5.toml"); });
  EXPECT_NE(err.find("h5.toml: unknown key 'data.hdf5_xx' (did you mean 'hdf5_x'?)"), std::string::npos) << err;
  err = error_of([&] { parse_config(base + "hdf5_y = 3\n", "h5.toml"); });
  EXPECT_NE(err.find("h5.toml: key 'data.hdf5_y' must be a string, got an integer"), std::string::npos) << err;
  err = error_of([&] { parse_config(base + "hdf5_test_x = \"/\"\n", "h5.toml"); });
  EXPECT_NE(err.find("h5.toml: data.hdf5_test_x must name a dataset"), std::string::npos) << err;
  err = error_of([&] { parse_config("[data]\ndataset = \"hdf5\"\n", "h5.toml"); });
  EXPECT_NE(err.find("h5.toml: data.dataset = 'hdf5' needs data.path"), std::string::npos) << err;
  err = error_of([&] { parse_config("[data]\ndataset = \"hdf\"\n", "h5.toml"); });
  EXPECT_NE(err.find("did you mean 'hdf5'?"), std::string::npos) << err;
}

TEST(Hdf5Training, MlpLearnsQuadrantImagesFromHdf5) {
  const fs::path d = test::temp_dir("hdf5_train");
  const fs::path file = d / "quadrants.h5";
  {
    hpdl::test::H5Writer w(file);
    write_quadrants(w, "train/images", "train/labels", 512, 1);
    write_quadrants(w, "test/images", "test/labels", 256, 2);
  }
  const std::string toml = fmt::format(R"(
[data]
dataset = "hdf5"
path = "{}"
batch_size = 32
workers = 1
mean = [0.3]
std = [0.3]
[model]
name = "mlp"
num_classes = 4
hidden = [32]
[optimizer]
name = "sgd"
lr = 0.05
[train]
epochs = 3
seed = 3
threads = 1
run_dir = "{}"
checkpoint_every_epochs = 0
log_every = 1000
)", file.string(), (d / "run").string());
  Config cfg = parse_config(toml, "quadrants.toml");
  TrainSummary s = train_quietly(cfg);
  EXPECT_EQ(s.steps, 3 * 512 / 32);
  EXPECT_GT(s.test_accuracy, 0.9);  // chance is 0.25
  auto epochs = test::metrics_records(d / "run", "epoch");
  ASSERT_EQ(epochs.size(), 3u);
  EXPECT_LT(epochs.back()["train_loss"].get<double>(), epochs.front()["train_loss"].get<double>());
}

TEST(Hdf5Training, MlpLearnsFloat64FeaturesFromHdf5) {
  const fs::path d = test::temp_dir("hdf5_train_features");
  const fs::path file = d / "features.h5";
  {
    hpdl::test::H5Writer w(file);
    write_features(w, "f/train_x", "f/train_y", 512, 5);
    write_features(w, "f/test_x", "f/test_y", 256, 6);
  }
  Config cfg;
  cfg.data.dataset = "hdf5";
  cfg.data.path = file.string();
  cfg.data.hdf5_x = "f/train_x", cfg.data.hdf5_y = "f/train_y";
  cfg.data.hdf5_test_x = "f/test_x", cfg.data.hdf5_test_y = "f/test_y";
  cfg.data.batch_size = 32;
  cfg.data.workers = 1;
  cfg.data.mean = {0.0}, cfg.data.std = {1.0};
  cfg.model.name = "mlp", cfg.model.num_classes = 2, cfg.model.hidden = {16};
  cfg.optimizer.lr = 0.1;
  cfg.train.epochs = 4, cfg.train.seed = 4, cfg.train.threads = 1, cfg.train.log_every = 1000;
  cfg.train.run_dir = (d / "run").string();
  cfg.train.checkpoint_every_epochs = 0;
  validate(cfg, "features config");
  TrainSummary s = train_quietly(cfg);
  EXPECT_GT(s.test_accuracy, 0.85);  // chance is about 0.5
  auto epochs = test::metrics_records(d / "run", "epoch");
  ASSERT_EQ(epochs.size(), 4u);
  EXPECT_LT(epochs.back()["train_loss"].get<double>(), epochs.front()["train_loss"].get<double>());
}
