// Config: defaults, every key checked (unknown key with suggestion, wrong
// type, out of range, all naming the file and key path), --set overrides,
// and the TOML / JSON round trip of the resolved config.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "hpdl/core/error.h"
#include "hpdl/train/config.h"

using namespace hpdl;
using namespace hpdl::train;

namespace {

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

const char* kExample = R"(
[data]
dataset = "fashion-mnist"
batch_size = 128
random_flip = true
mean = [0.5]
std = [0.25]

[model]
name = "custom"
num_classes = 10

[[model.layers]]
type = "conv2d"
out_channels = 8
kernel_size = 3
padding = 1

[[model.layers]]
type = "relu"

[[model.layers]]
type = "linear"
out_features = 10

[optimizer]
name = "lars"
lr = 2          # an integer is accepted for a float key
momentum = 0.9
betas = [0.9, 0.99]

[schedule]
name = "step"
milestones = [30, 60]

[train]
epochs = 3
seed = 17
)";

}  // namespace

TEST(Config, DefaultsAreValid) {
  Config c = parse_config("", "empty.toml");
  EXPECT_EQ(c.data.batch_size, 64);
  EXPECT_EQ(c.model.name, "mlp");
  EXPECT_EQ(c.optimizer.name, "sgd");
  EXPECT_NO_THROW(validate(c, "defaults"));
}

TEST(Config, ParsesEverySection) {
  Config c = parse_config(kExample, "examples/x.toml");
  EXPECT_EQ(c.data.batch_size, 128);
  EXPECT_TRUE(c.data.random_flip);
  EXPECT_EQ(c.model.layers.size(), 3u);
  EXPECT_EQ(c.model.layers[0].out_channels, 8);
  EXPECT_EQ(c.model.layers[0].padding, 1);
  EXPECT_EQ(c.model.layers[2].out_features, 10);
  EXPECT_EQ(c.optimizer.lr, 2.0);
  EXPECT_EQ(c.optimizer.betas, (std::vector<double>{0.9, 0.99}));
  EXPECT_EQ(c.schedule.milestones, (std::vector<int64_t>{30, 60}));
  EXPECT_EQ(c.train.seed, 17u);
}

TEST(Config, UnknownKeyNamesFileAndPathWithSuggestion) {
  std::string err = error_of([] { parse_config("[optimizer]\nmomentun = 0.9\n", "examples/x.toml"); });
  EXPECT_NE(err.find("examples/x.toml"), std::string::npos) << err;
  EXPECT_NE(err.find("'optimizer.momentun'"), std::string::npos) << err;
  EXPECT_NE(err.find("did you mean 'momentum'"), std::string::npos) << err;
  err = error_of([] { parse_config("[optimiser]\nlr = 0.1\n", "a.toml"); });
  EXPECT_NE(err.find("'optimiser'"), std::string::npos) << err;
  EXPECT_NE(err.find("did you mean 'optimizer'"), std::string::npos) << err;
  err = error_of([] { parse_config("[[model.layers]]\ntype = \"relu\"\nkernal_size = 3\n", "b.toml"); });
  EXPECT_NE(err.find("model.layers[0].kernal_size"), std::string::npos) << err;
  EXPECT_NE(err.find("kernel_size"), std::string::npos) << err;
}

TEST(Config, WrongTypeAndRangeErrors) {
  std::string err = error_of([] { parse_config("[data]\nbatch_size = \"64\"\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml"), std::string::npos) << err;
  EXPECT_NE(err.find("data.batch_size"), std::string::npos) << err;
  EXPECT_NE(err.find("integer"), std::string::npos) << err;
  err = error_of([] { parse_config("[data]\nbatch_size = 0\n", "c.toml"); });
  EXPECT_NE(err.find("data.batch_size must be > 0"), std::string::npos) << err;
  err = error_of([] { parse_config("[optimizer]\nlr = -1.0\n", "c.toml"); });
  EXPECT_NE(err.find("optimizer.lr"), std::string::npos) << err;
  err = error_of([] { parse_config("[optimizer]\nname = \"adamm\"\n", "c.toml"); });
  EXPECT_NE(err.find("did you mean 'adamw'"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\nepochs = 1.5\n", "c.toml"); });
  EXPECT_NE(err.find("train.epochs"), std::string::npos) << err;
  err = error_of([] { parse_config("[train\nepochs = 1\n", "syntax.toml"); });
  EXPECT_NE(err.find("syntax.toml:1"), std::string::npos) << err;
}

TEST(Config, SetOverrides) {
  Config c = parse_config(kExample, "x.toml",
                          {"optimizer.lr=0.05", "train.run_dir=runs/exp 1", "data.mean=[0.1]", "data.std=[0.2]",
                           "train.trace=true", "model.name=\"custom\""});
  EXPECT_EQ(c.optimizer.lr, 0.05);
  EXPECT_EQ(c.train.run_dir, "runs/exp 1");  // unquoted string
  EXPECT_EQ(c.data.mean, std::vector<double>{0.1});
  EXPECT_TRUE(c.train.trace);
  std::string err = error_of([] { parse_config("", "x.toml", {"optimizer.lr=fast"}); });
  EXPECT_NE(err.find("--set optimizer.lr=fast"), std::string::npos) << err;
  err = error_of([] { parse_config("", "x.toml", {"train.epoch=3"}); });
  EXPECT_NE(err.find("unknown key 'train.epoch'"), std::string::npos) << err;
  EXPECT_NE(err.find("did you mean 'epochs'"), std::string::npos) << err;
  err = error_of([] { parse_config("", "x.toml", {"data.batch_size=0"}); });
  EXPECT_NE(err.find("data.batch_size must be > 0"), std::string::npos) << err;
}

TEST(Config, TomlAndJsonRoundTrip) {
  Config c = parse_config(kExample, "x.toml", {"train.run_dir=runs/a"});
  std::string text = to_toml(c);
  Config d = parse_config(text, "config.toml");
  EXPECT_EQ(to_toml(d), text);
  EXPECT_EQ(to_json(d), to_json(c));
  EXPECT_EQ(to_json(c)["optimizer"]["name"], "lars");
  EXPECT_EQ(to_json(c)["model"]["layers"][0]["type"], "conv2d");
  auto dir = std::filesystem::temp_directory_path() / ("hpdl_test_cfg_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  save_config(c, dir / "config.toml");
  EXPECT_EQ(to_json(load_config(dir / "config.toml")), to_json(c));
  std::string err = error_of([&] { load_config(dir / "missing.toml"); });
  EXPECT_NE(err.find("missing.toml"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Config, EditDistance) {
  EXPECT_EQ(edit_distance("momentun", "momentum"), 1u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
}

// Every shipped example config must parse: catches an example drifting from the
// keys the parser knows (or a key renamed without updating the examples).
TEST(Config, EveryExampleConfigParses) {
  const std::filesystem::path examples = std::filesystem::path(__FILE__).parent_path() / "../../../examples";
  int n = 0;
  if (std::filesystem::exists(examples))
    for (auto& e : std::filesystem::recursive_directory_iterator(examples))
      if (e.path().extension() == ".toml") {
        EXPECT_NO_THROW(load_config(e.path())) << e.path();
        ++n;
      }
  RecordProperty("example_configs", n);
}
