// Config: defaults, every key checked (unknown key with suggestion, wrong
// type, out of range, all naming the file and key path), --set overrides,
// and the TOML / JSON round trip of the resolved config.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "hpdl/core/error.h"
#include "hpdl/nn/layers.h"
#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"
#include "hpdl/tune/tune.h"
#include "tests/unit/test_util.h"

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
  const std::filesystem::path examples = std::filesystem::path(HPDL_PROJECT_SOURCE_DIR) / "examples";
  ASSERT_TRUE(std::filesystem::is_directory(examples)) << examples;
  int n = 0;
  for (auto& e : std::filesystem::recursive_directory_iterator(examples))
    if (e.path().extension() == ".toml") {
      // examples/tune/ holds search files (hpdl tune), which name a training config.
      if (e.path().parent_path().filename() == "tune")
        EXPECT_NO_THROW(tune::load_search(e.path())) << e.path();
      else
        EXPECT_NO_THROW(load_config(e.path())) << e.path();
      ++n;
    }
  EXPECT_GE(n, 13) << "too few example configs found under " << examples;
  RecordProperty("example_configs", n);
}

// data.pin_memory only means something for a GPU run; on the CPU it is a mistake worth naming.
// train.hierarchical_allreduce: off by default, for CPU ranks over MPI only.
TEST(Config, HierarchicalAllreduceIsForCpuRanks) {
  EXPECT_FALSE(parse_config("", "c.toml").train.hierarchical_allreduce);
  EXPECT_TRUE(parse_config("[train]\nhierarchical_allreduce = true\n", "c.toml").train.hierarchical_allreduce);
  std::string err = error_of(
      [] { parse_config("[train]\nhierarchical_allreduce = true\ndevice = \"cuda\"\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.hierarchical_allreduce = true is for CPU ranks over MPI"), std::string::npos)
      << err;
}

TEST(Config, PinMemoryNeedsACudaDevice) {
  EXPECT_FALSE(parse_config("", "c.toml").data.pin_memory);
  EXPECT_TRUE(parse_config("[data]\npin_memory = true\n[train]\ndevice = \"cuda\"\n", "c.toml").data.pin_memory);
  try {
    parse_config("[data]\npin_memory = true\n", "c.toml");
    FAIL() << "pin_memory on the CPU was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c.toml: data.pin_memory = true needs train.device = 'cuda'"),
              std::string::npos)
        << e.what();
  }
}

TEST(Config, BatchNormGroupNeedsSyncAndIsNonNegative) {
  EXPECT_EQ(parse_config("", "c.toml").train.sync_batchnorm_group, 0);
  EXPECT_EQ(parse_config("[train]\nsync_batchnorm = true\nsync_batchnorm_group = 2\n", "c.toml")
                .train.sync_batchnorm_group, 2);
  std::string err = error_of([] { parse_config("[train]\nsync_batchnorm_group = 2\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.sync_batchnorm_group = 2 needs train.sync_batchnorm = true"), std::string::npos)
      << err;
  err = error_of([] { parse_config("[train]\nsync_batchnorm = true\nsync_batchnorm_group = -2\n", "c.toml"); });
  EXPECT_NE(err.find("train.sync_batchnorm_group"), std::string::npos) << err;
}

// train.local_sgd_steps: off by default, non-negative, and refused (naming both keys) with the
// options that assume gradients or batch statistics are shared at every step.
TEST(Config, LocalSgdRangesAndIncompatibleOptions) {
  EXPECT_EQ(parse_config("", "c.toml").train.local_sgd_steps, 0);
  Config c = parse_config("[train]\nlocal_sgd_steps = 8\nlocal_sgd_average_optimizer = true\n", "c.toml");
  EXPECT_EQ(c.train.local_sgd_steps, 8);
  EXPECT_TRUE(c.train.local_sgd_average_optimizer);
  std::string err = error_of([] { parse_config("[train]\nlocal_sgd_steps = -1\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.local_sgd_steps must be >= 0, got -1"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\nlocal_sgd_average_optimizer = true\n", "c.toml"); });
  EXPECT_NE(err.find("train.local_sgd_average_optimizer = true needs train.local_sgd_steps > 0"), std::string::npos)
      << err;
  const std::pair<std::string, std::string> refused[] = {
      {"shard_optimizer = true", "train.shard_optimizer = true"},
      {"sync_batchnorm = true", "train.sync_batchnorm = true"},
      {"bf16_wire = true", "train.bf16_wire = true"},
      {"loss_scale = \"dynamic\"", "train.loss_scale = 'dynamic'"},
      {"loss_scale = 1024", "train.loss_scale = '1024'"},
      {"precision = \"fp16\"\ndevice = \"cuda\"", "train.precision = \"fp16\""},
  };
  for (auto& [line, key] : refused) {
    err = error_of([&] { parse_config("[train]\nlocal_sgd_steps = 4\n" + line + "\n", "c.toml"); });
    EXPECT_NE(err.find("c.toml: train.local_sgd_steps = 4 cannot be combined with " + key), std::string::npos)
        << line << ": " << err;
    EXPECT_NO_THROW(parse_config("[train]\n" + line + "\n", "c.toml")) << line << " alone is fine";
  }
}

TEST(Config, PowerSgdKeysAndRefusals) {
  const Config d = parse_config("", "c.toml");
  EXPECT_EQ(d.train.powersgd_rank, 0);
  EXPECT_EQ(d.train.powersgd_start_step, 0);
  Config c = parse_config("[train]\npowersgd_rank = 4\npowersgd_start_step = 100\n", "c.toml");
  EXPECT_EQ(c.train.powersgd_rank, 4);
  const Config back = parse_config(to_toml(c), "r.toml");
  EXPECT_EQ(back.train.powersgd_rank, 4);
  EXPECT_EQ(back.train.powersgd_start_step, 100);
  std::string err = error_of([] { parse_config("[train]\npowersgd_rank = -1\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.powersgd_rank must be >= 0, got -1"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\npowersgd_start_step = -5\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.powersgd_start_step must be >= 0, got -5"), std::string::npos) << err;
  const std::pair<std::string, std::string> refused[] = {
      {"bf16_wire = true", "train.bf16_wire = true"},
      {"shard_optimizer = true\nzero_stage = 2", "train.zero_stage = 2"},
      {"local_sgd_steps = 4", "train.local_sgd_steps = 4"},
      {"pipeline_stages = 2", "train.pipeline_stages = 2"},
      {"device = \"cuda\"", "train.device = \"cuda\""},
  };
  for (auto& [line, key] : refused) {
    err = error_of([&] { parse_config("[train]\npowersgd_rank = 2\n" + line + "\n", "c.toml"); });
    EXPECT_NE(err.find("c.toml: train.powersgd_rank = 2 cannot be combined with " + key), std::string::npos)
        << line << ": " << err;
  }
  EXPECT_NO_THROW(parse_config("[train]\npowersgd_rank = 2\nshard_optimizer = true\n", "c.toml")) << "ZeRO-1 works";
}

// train.pipeline_stages, train.micro_batches, train.pipeline_schedule: off by default, ranges,
// micro-batches that split data.batch_size evenly, and the combinations refused (naming both keys).
TEST(Config, PipelineKeysRangesAndIncompatibleOptions) {
  Config d = parse_config("", "c.toml");
  EXPECT_EQ(d.train.pipeline_stages, 1);
  EXPECT_EQ(d.train.micro_batches, 1);
  EXPECT_EQ(d.train.pipeline_schedule, "gpipe");
  Config c = parse_config("[data]\nbatch_size = 32\n[train]\npipeline_stages = 2\nmicro_batches = 4\n"
                          "pipeline_schedule = \"1f1b\"\n", "c.toml");
  EXPECT_EQ(c.train.pipeline_stages, 2);
  EXPECT_EQ(c.train.micro_batches, 4);
  EXPECT_EQ(c.train.pipeline_schedule, "1f1b");
  // The resolved config reads back equal.
  EXPECT_EQ(parse_config(to_toml(c), "r.toml").train.pipeline_schedule, "1f1b");
  EXPECT_EQ(parse_config(to_toml(c), "r.toml").train.micro_batches, 4);
  std::string err = error_of([] { parse_config("[train]\npipeline_stages = 0\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.pipeline_stages must be > 0, got 0"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\npipeline_stages = 2\nmicro_batches = 0\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.micro_batches must be > 0, got 0"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\npipeline_stages = 2\npipeline_schedule = \"pipedream\"\n", "c.toml"); });
  EXPECT_NE(err.find("train.pipeline_schedule"), std::string::npos) << err;
  EXPECT_NE(err.find("pipedream"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\nmicro_batches = 4\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.micro_batches = 4 needs train.pipeline_stages > 1"), std::string::npos) << err;
  // Split points: S - 1 layer indices from 1, strictly increasing; empty (the default) balances.
  EXPECT_TRUE(d.train.pipeline_split_points.empty());
  c = parse_config("[train]\npipeline_stages = 3\npipeline_split_points = [2, 5]\n", "c.toml");
  EXPECT_EQ(c.train.pipeline_split_points, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(parse_config(to_toml(c), "r.toml").train.pipeline_split_points, (std::vector<int64_t>{2, 5}));
  err = error_of([] { parse_config("[train]\npipeline_stages = 3\npipeline_split_points = [4]\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.pipeline_split_points has 1 entries; train.pipeline_stages = 3 needs 2"),
            std::string::npos) << err;
  err = error_of([] { parse_config("[train]\npipeline_stages = 3\npipeline_split_points = [4, 4]\n", "c.toml"); });
  EXPECT_NE(err.find("train.pipeline_split_points[1] = 4: split points must be layer indices from 1, strictly "
                     "increasing"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\npipeline_stages = 2\npipeline_split_points = [0]\n", "c.toml"); });
  EXPECT_NE(err.find("train.pipeline_split_points[0] = 0"), std::string::npos) << err;
  err = error_of([] { parse_config("[train]\npipeline_split_points = [3]\n", "c.toml"); });
  EXPECT_NE(err.find("train.pipeline_stages = 1 needs 0"), std::string::npos) << err;
  // Balance: by parameters (the default) or by time; not with the user's own cut.
  EXPECT_EQ(d.train.pipeline_balance, "parameters");
  c = parse_config("[train]\npipeline_stages = 2\npipeline_balance = \"time\"\n", "c.toml");
  EXPECT_EQ(parse_config(to_toml(c), "r.toml").train.pipeline_balance, "time");
  err = error_of([] { parse_config("[train]\npipeline_stages = 2\npipeline_balance = \"flops\"\n", "c.toml"); });
  EXPECT_NE(err.find("train.pipeline_balance"), std::string::npos) << err;
  EXPECT_NE(err.find("flops"), std::string::npos) << err;
  err = error_of([] {
    parse_config("[train]\npipeline_stages = 2\npipeline_balance = \"time\"\npipeline_split_points = [3]\n", "c.toml");
  });
  EXPECT_NE(err.find("c.toml: train.pipeline_balance = \"time\" and train.pipeline_split_points both say where the "
                     "stages begin; keep one"), std::string::npos) << err;
  err = error_of([] { parse_config("[data]\nbatch_size = 30\n[train]\npipeline_stages = 2\nmicro_batches = 4\n",
                                   "c.toml"); });
  EXPECT_NE(err.find("c.toml: data.batch_size = 30 is not divisible by train.micro_batches = 4"), std::string::npos)
      << err;
  const std::pair<std::string, std::string> refused[] = {
      {"[train]\ndevice = \"cuda\"", "train.device = \"cuda\""},
      {"[train]\nsync_batchnorm = true", "train.sync_batchnorm = true"},
      {"[train]\nshard_optimizer = true\nzero_stage = 2", "train.zero_stage = 2"},
      {"[train]\nlocal_sgd_steps = 4", "train.local_sgd_steps = 4"},
      {"[train]\naccumulate_steps = 2", "train.accumulate_steps = 2"},
      {"[train]\nloss_scale = \"dynamic\"", "train.loss_scale = 'dynamic'"},
  };
  for (auto& [lines, key] : refused) {
    err = error_of([&] { parse_config(lines + "\n", "c.toml", {"train.pipeline_stages=2"}); });
    EXPECT_NE(err.find("train.pipeline_stages = 2 cannot be combined with " + key), std::string::npos)
        << lines << ": " << err;
    EXPECT_NO_THROW(parse_config(lines + "\n", "c.toml")) << lines << " alone is fine";
  }
  // What combines: clipping by the global norm (over every stage), the regression losses
  // (scored on the last stage), alone and together, bfloat16 on the replicas' wire, and each
  // stage's optimizer state sharded over its replicas (ZeRO-1).
  for (const std::string lines : {"[optimizer]\nclip_grad_norm = 1.0\n", "[train]\nloss = \"mse\"\n",
                                  "[train]\nbf16_wire = true\n", "[train]\nshard_optimizer = true\n",
                                  "[train]\nloss = \"l1\"\n", "[train]\nloss = \"huber\"\n",
                                  "[optimizer]\nclip_grad_norm = 0.5\n[train]\nloss = \"huber\"\n"}) {
    Config p = parse_config(lines, "c.toml", {"train.pipeline_stages=2"});
    EXPECT_EQ(p.train.pipeline_stages, 2) << lines;
  }
}

// train.tensor_parallel: 1 by default, positive, vit only, dividing the heads and the feed-forward
// width, and refused (naming the other key) with what would need whole layers or one rank's view.
TEST(Config, TensorParallelKeysAndRefusals) {
  EXPECT_EQ(parse_config("", "c.toml").train.tensor_parallel, 1);
  const std::string vit = "[model]\nname = \"vit\"\ndim = 32\nheads = 4\nmlp_ratio = 2.0\n";
  Config c = parse_config(vit + "[train]\ntensor_parallel = 2\n", "c.toml");
  EXPECT_EQ(c.train.tensor_parallel, 2);
  EXPECT_EQ(parse_config(to_toml(c), "r.toml").train.tensor_parallel, 2);  // reads back
  EXPECT_EQ(parse_config(vit, "c.toml", {"train.tensor_parallel=4"}).train.tensor_parallel, 4);
  std::string err = error_of([&] { parse_config(vit + "[train]\ntensor_parallel = 0\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.tensor_parallel must be > 0, got 0"), std::string::npos) << err;
  err = error_of([] { parse_config("[model]\nname = \"resnet20\"\n", "c.toml", {"train.tensor_parallel=2"}); });
  EXPECT_NE(err.find("train.tensor_parallel = 2 cannot be combined with model.name = \"resnet20\""),
            std::string::npos) << err;
  err = error_of([&] { parse_config(vit, "c.toml", {"train.tensor_parallel=8"}); });
  EXPECT_NE(err.find("train.tensor_parallel = 8 does not divide model.heads = 4"), std::string::npos) << err;
  // 4 heads divide by 4, the feed-forward width 36 x 1.5 = 54 does not.
  err = error_of([] { parse_config("[model]\nname = \"vit\"\ndim = 36\nheads = 4\nmlp_ratio = 1.5\n", "c.toml",
                                   {"train.tensor_parallel=4"}); });
  EXPECT_NE(err.find("train.tensor_parallel = 4 does not divide the feed-forward width 54"), std::string::npos) << err;
  const std::pair<std::string, std::string> refused[] = {
      {"[train]\ndevice = \"cuda\"", "train.device = \"cuda\""},
      {"[train]\nsync_batchnorm = true", "train.sync_batchnorm = true"},
      {"[train]\nshard_optimizer = true\nzero_stage = 2", "train.zero_stage = 2"},
      {"[train]\nlocal_sgd_steps = 4", "train.local_sgd_steps = 4"},
      {"[train]\nloss_scale = \"dynamic\"", "train.loss_scale = 'dynamic'"},
  };
  for (auto& [lines, key] : refused) {
    err = error_of([&] { parse_config(vit + lines + "\n", "c.toml", {"train.tensor_parallel=2"}); });
    EXPECT_NE(err.find("train.tensor_parallel = 2 cannot be combined with " + key), std::string::npos)
        << lines << ": " << err;
    EXPECT_NO_THROW(parse_config(vit + lines + "\n", "c.toml")) << lines << " alone is fine";
  }
  // What combines: accumulation and bf16 gradients over the data-parallel replicas, each rank's
  // optimizer state sharded over its replicas (ZeRO-1), and clipping by the full model's global norm.
  EXPECT_NO_THROW(parse_config(vit + "[train]\ntensor_parallel = 2\naccumulate_steps = 2\nbf16_wire = true\n",
                               "c.toml"));
  EXPECT_NO_THROW(parse_config(vit + "[train]\ntensor_parallel = 2\nshard_optimizer = true\n", "c.toml"));
  EXPECT_EQ(parse_config(vit + "[optimizer]\nclip_grad_norm = 1.0\n", "c.toml", {"train.tensor_parallel=2"})
                .optimizer.clip_grad_norm, 1.0);
  // Pipeline stages, each split over a group (the 3-D grid), with micro-batches and checkpointing.
  c = parse_config(vit + "[train]\ntensor_parallel = 2\npipeline_stages = 2\nmicro_batches = 2\n"
                   "activation_checkpointing = true\n", "c.toml");
  EXPECT_EQ(c.train.pipeline_stages * c.train.tensor_parallel, 4);
}

// train.zero_stage: 1 by default, 1, 2 or 3 only, 2 and 3 need shard_optimizer and are refused (naming
// the other key) with what needs full gradients on every rank or keeps them between micro-batches;
// 3 also with sync batch norm (its allreduce would run again in every recompute).
TEST(Config, ZeroStageRangesAndIncompatibleOptions) {
  EXPECT_EQ(parse_config("", "c.toml").train.zero_stage, 1);
  EXPECT_EQ(parse_config("[train]\nshard_optimizer = true\nzero_stage = 2\n", "c.toml").train.zero_stage, 2);
  EXPECT_EQ(parse_config("[train]\nshard_optimizer = true\nzero_stage = 3\n", "c.toml").train.zero_stage, 3);
  // ZeRO-3's prefetch is on unless turned off.
  EXPECT_TRUE(parse_config("", "c.toml").train.zero3_prefetch);
  EXPECT_FALSE(parse_config("[train]\nshard_optimizer = true\nzero_stage = 3\nzero3_prefetch = false\n", "c.toml")
                   .train.zero3_prefetch);
  std::string err = error_of([] { parse_config("[train]\nshard_optimizer = true\nzero_stage = 4\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.zero_stage = 4 is not 1"), std::string::npos) << err;
  for (const char* z : {"2", "3"}) {
    err = error_of([&] { parse_config(std::string("[train]\nzero_stage = ") + z + "\n", "c.toml"); });
    EXPECT_NE(err.find(std::string("c.toml: train.zero_stage = ") + z + " needs train.shard_optimizer = true"),
              std::string::npos) << err;
  }
  const std::pair<std::string, std::string> refused[] = {
      {"accumulate_steps = 2", "train.accumulate_steps = 2"},
      {"bf16_wire = true", "train.bf16_wire = true"},
      {"hierarchical_allreduce = true", "train.hierarchical_allreduce = true"},
      {"loss_scale = \"dynamic\"", "train.loss_scale = 'dynamic'"},
      {"precision = \"fp16\"\ndevice = \"cuda\"", "train.precision = \"fp16\""},
      {"device = \"cuda\"", "train.device = \"cuda\""},
  };
  for (auto& [line, key] : refused) {
    for (const std::string z : {"2", "3"}) {
      err = error_of([&] { parse_config("[train]\nshard_optimizer = true\nzero_stage = " + z + "\n" + line + "\n", "c.toml"); });
      EXPECT_NE(err.find("c.toml: train.zero_stage = " + z + " cannot be combined with " + key), std::string::npos)
          << line << ": " << err;
    }
    EXPECT_NO_THROW(parse_config("[train]\nshard_optimizer = true\n" + line + "\n", "c.toml")) << line << " with stage 1";
  }
  err = error_of([] { parse_config("[train]\nshard_optimizer = true\nzero_stage = 3\nsync_batchnorm = true\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: train.zero_stage = 3 cannot be combined with train.sync_batchnorm = true"),
            std::string::npos) << err;
  EXPECT_NO_THROW(parse_config("[train]\nshard_optimizer = true\nzero_stage = 2\nsync_batchnorm = true\n", "c.toml"));
}

// train.precision = "fp16" and train.loss_scale: a word, a number (TOML number
// or string, also through --set), did-you-mean for a misspelt word, and which
// scaler each combination makes.
TEST(Config, PrecisionAndLossScale) {
  Config c = parse_config("[train]\nprecision = \"fp16\"\n", "c.toml");
  EXPECT_EQ(c.train.precision, "fp16");
  EXPECT_EQ(c.train.loss_scale, "auto");
  auto s = make_grad_scaler(c.train);
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->options().dynamic);
  EXPECT_EQ(s->get_scale(), 65536.0);
  // auto: no scaler for fp32 and bf16.
  EXPECT_FALSE(make_grad_scaler(parse_config("", "c.toml").train));
  EXPECT_FALSE(make_grad_scaler(parse_config("[train]\nprecision = \"bf16\"\n", "c.toml").train));
  // dynamic is allowed with any precision (also on the CPU).
  EXPECT_TRUE(make_grad_scaler(parse_config("[train]\nloss_scale = \"dynamic\"\n", "c.toml").train));
  // none and 1: off, even for fp16.
  EXPECT_FALSE(make_grad_scaler(parse_config("[train]\nprecision = \"fp16\"\nloss_scale = \"none\"\n", "c.toml").train));
  EXPECT_FALSE(make_grad_scaler(parse_config("[train]\nprecision = \"fp16\"\nloss_scale = 1\n", "c.toml").train));
  // a fixed number, as a TOML integer, float, string, or --set override
  for (const char* v : {"1024", "1024.0", "\"1024\""}) {
    Config f = parse_config(fmt::format("[train]\nprecision = \"fp16\"\nloss_scale = {}\n", v), "c.toml");
    EXPECT_EQ(f.train.loss_scale, "1024") << v;
    auto fs = make_grad_scaler(f.train);
    ASSERT_TRUE(fs) << v;
    EXPECT_FALSE(fs->options().dynamic);
    EXPECT_EQ(fs->get_scale(), 1024.0);
  }
  Config o = parse_config("", "c.toml", {"train.precision=fp16", "train.loss_scale=256"});
  EXPECT_EQ(o.train.loss_scale, "256");
  o = parse_config("", "c.toml", {"train.loss_scale=dynamic"});
  EXPECT_EQ(o.train.loss_scale, "dynamic");
  // The resolved config round-trips.
  Config f = parse_config("[train]\nprecision = \"fp16\"\nloss_scale = 512\n", "c.toml");
  EXPECT_EQ(to_json(parse_config(to_toml(f), "config.toml")), to_json(f));

  std::string err = error_of([] { parse_config("[train]\nloss_scale = \"dynamc\"\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml"), std::string::npos) << err;
  EXPECT_NE(err.find("train.loss_scale"), std::string::npos) << err;
  EXPECT_NE(err.find("did you mean 'dynamic'"), std::string::npos) << err;
  for (const char* bad : {"0", "-4", "\"inf\"", "\"12abc\"", "\"\"", "true"}) {
    err = error_of([&] { parse_config(fmt::format("[train]\nloss_scale = {}\n", bad), "c.toml"); });
    EXPECT_NE(err.find("train.loss_scale"), std::string::npos) << bad << ": " << err;
  }
  err = error_of([] { parse_config("[train]\nprecision = \"fp17\"\n", "c.toml"); });
  EXPECT_NE(err.find("did you mean 'fp16'"), std::string::npos) << err;
}

namespace hpdl::train {
namespace {

// data.validation = N: the last N training samples become the validation set,
// exactly (same values and labels), and the training set keeps the rest.
TEST(Config, ValidationHoldsOutTheLastTrainingSamples) {
  ASSERT_TRUE(std::filesystem::exists(data::kFashionMnistDir)) << "install dataset-fashion-mnist (scripts/setup.sh does)";
  DataConfig d;
  auto whole = load_datasets(d);
  EXPECT_EQ(whole.validation, nullptr);
  d.validation = 5000;
  auto split = load_datasets(d);
  ASSERT_NE(split.validation, nullptr);
  EXPECT_EQ(split.train->size(), whole.train->size() - 5000);
  EXPECT_EQ(split.validation->size(), 5000);
  EXPECT_EQ(split.test->size(), whole.test->size());
  std::vector<float> a(784), b(784);
  for (int64_t i : {int64_t{0}, int64_t{1234}, int64_t{4999}}) {
    EXPECT_EQ(split.validation->get(i, a.data()), whole.train->get(whole.train->size() - 5000 + i, b.data()));
    EXPECT_EQ(a, b) << "validation sample " << i;
  }
  EXPECT_EQ(split.train->get(7, a.data()), whole.train->get(7, b.data()));
  EXPECT_EQ(a, b);
  EXPECT_NE(test::error_of([&] { split.validation->get(5000, a.data()); }).find("index 5000 out of range"),
            std::string::npos);
  d.validation = whole.train->size();
  std::string e = test::error_of([&] { load_datasets(d); });
  EXPECT_NE(e.find("data.validation = 60000 leaves no training samples"), std::string::npos) << e;
  e = test::error_of([&] { parse_config("[data]\nvalidation = -1\n", "v.toml"); });
  EXPECT_NE(e.find("data.validation must be >= 0"), std::string::npos) << e;
}

// train.activation_checkpointing: off by default, read back from the resolved config, and refused
// (naming both keys) where the recompute cannot work; taken with pipeline stages and tensor parallelism.
TEST(Config, ActivationCheckpointingKeyAndRefusals) {
  EXPECT_FALSE(parse_config("", "c.toml").train.activation_checkpointing);
  Config c = parse_config("[model]\nname = \"resnet20\"\n[train]\nactivation_checkpointing = true\n", "c.toml");
  EXPECT_TRUE(c.train.activation_checkpointing);
  EXPECT_TRUE(parse_config(to_toml(c), "r.toml").train.activation_checkpointing);
  const std::pair<const char*, const char*> refused[] = {
      {"[model]\nname = \"gru\"\n", "model.name = \"gru\""},
      {"[train]\nsync_batchnorm = true\n", "train.sync_batchnorm = true"},
  };
  for (auto [toml, key] : refused) {
    std::string text = std::string(toml) + (std::string(toml).find("[train]") == std::string::npos ? "[train]\n" : "") +
                       "activation_checkpointing = true\n";
    std::string err = error_of([&] { parse_config(text, "c.toml"); });
    EXPECT_NE(err.find(std::string("c.toml: train.activation_checkpointing = true cannot be combined with ") + key),
              std::string::npos) << err;
  }
  // Taken with pipeline stages (each stage checkpoints its own layers) and tensor parallelism
  // (each encoder layer slice is one segment).
  Config pipe = parse_config("[model]\nname = \"lenet5\"\n[data]\nbatch_size = 16\n[train]\npipeline_stages = 2\n"
                             "micro_batches = 4\npipeline_schedule = \"1f1b\"\nactivation_checkpointing = true\n",
                             "p.toml");
  EXPECT_TRUE(pipe.train.activation_checkpointing);
  EXPECT_EQ(pipe.train.pipeline_stages, 2);
  Config tp = parse_config("[model]\nname = \"vit\"\n[train]\ntensor_parallel = 2\nactivation_checkpointing = true\n",
                           "t.toml");
  EXPECT_TRUE(tp.train.activation_checkpointing);
  EXPECT_EQ(tp.train.tensor_parallel, 2);
  // sync_batchnorm stays refused, also together with a pipeline.
  std::string err = error_of([&] {
    parse_config("[train]\npipeline_stages = 2\nsync_batchnorm = true\nactivation_checkpointing = true\n", "s.toml");
  });
  EXPECT_NE(err.find("s.toml: train.pipeline_stages = 2 cannot be combined with train.sync_batchnorm = true"),
            std::string::npos) << err;
}

}  // namespace
}  // namespace hpdl::train

// model.dropout reaches the zoo model (mlp: after each hidden activation; vit: its encoder
// layers' dropouts), round-trips, and is refused out of range or for a model without dropout.
TEST(Config, ModelDropoutReachesTheModel) {
  EXPECT_EQ(parse_config("", "c.toml").model.dropout, -1.0);
  auto dropouts = [](const Config& c) {
    std::vector<double> p;
    for (auto& [name, m] : build_model(c, {1, 28, 28})->named_modules())
      if (auto* d = dynamic_cast<nn::Dropout*>(m.get())) p.push_back(d->p);
    return p;
  };
  Config mlp = parse_config("[model]\nname = \"mlp\"\ndropout = 0.25\n", "c.toml");
  EXPECT_EQ(mlp.model.dropout, 0.25);
  EXPECT_EQ(parse_config(to_toml(mlp), "r.toml").model.dropout, 0.25);
  EXPECT_EQ(dropouts(mlp), (std::vector<double>{0.25, 0.25}));  // after each of the two hidden layers
  EXPECT_TRUE(dropouts(parse_config("[model]\nname = \"mlp\"\n", "c.toml")).empty());  // the mlp's default: none
  Config vit = parse_config("[model]\nname = \"vit\"\ndepth = 2\ndropout = 0.1\n", "v.toml");
  const std::vector<double> vp = dropouts(vit);
  ASSERT_FALSE(vp.empty());
  for (double p : vp) EXPECT_EQ(p, 0.1);
  for (double p : dropouts(parse_config("[model]\nname = \"vit\"\ndepth = 2\n", "v.toml"))) EXPECT_EQ(p, 0.0);
  std::string err = error_of([&] { parse_config("[model]\nname = \"mlp\"\ndropout = 1.0\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: model.dropout = 1 is not a probability in [0, 1)"), std::string::npos) << err;
  err = error_of([&] { parse_config("[model]\nname = \"resnet20\"\ndropout = 0.1\n", "c.toml"); });
  EXPECT_NE(err.find("c.toml: model.dropout = 0.1 but model.name = \"resnet20\" has no dropout"), std::string::npos)
      << err;
}
