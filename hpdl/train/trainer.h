// Trainer: what `hpdl train` runs. From a Config it builds the datasets, the
// sampler (this rank's shard), the DataLoader, the model, the optimizer and
// schedule, wraps the model in DataParallel under MPI (or, with
// train.pipeline_stages, cuts it into dist::Pipeline stages over a grid of
// pipelines x data-parallel replicas), and runs the epochs:
// forward, loss, backward (buckets all-reduced while it runs), optimizer step,
// all-reduced metrics, progress, metrics.jsonl, checkpoints (every N steps or
// epochs, and on SIGTERM/SIGUSR1), evaluation, and a summary at the end.
// Resuming from the run directory continues so that the final weights equal
// an uninterrupted run's (bitwise with one thread and a fixed seed).
#pragma once

#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/data/dataset.h"
#include "hpdl/data/transforms.h"
#include "hpdl/nn/module.h"
#include "hpdl/optim/grad_scaler.h"
#include "hpdl/train/config.h"
#include "hpdl/train/objective.h"

namespace hpdl::dist {
class Communicator;
}

namespace hpdl::train {

struct EvalResult {
  double loss = 0, accuracy = 0;  // accuracy: -1 for a regression objective
  int64_t samples = 0;
  std::map<std::string, double> metrics;  // Objective::metrics: accuracy, or rmse, mae, r2
};

struct TrainSummary {
  int64_t steps = 0, epochs_done = 0;
  double final_train_loss = 0;
  double test_accuracy = -1, test_loss = -1;
  double val_accuracy = -1, val_loss = -1;  // with data.validation: the last evaluation's
  // The last evaluation's metrics (Objective::metrics; regression: rmse, mae, r2), empty if none.
  std::map<std::string, double> test_metrics, val_metrics;
  double seconds = 0, train_samples_per_s = 0;
  bool interrupted = false;  // stopped by a signal after checkpointing
  // train.keep_best / train.early_stopping_patience: the monitored metric, its best value (NaN
  // before any finite one) and where it was reached (epochs done, steps), and whether patience ran
  // out before train.epochs (in this run, or, resumed, in the run it continues).
  std::string monitor;
  double best_metric = std::numeric_limits<double>::quiet_NaN();
  int64_t best_epoch = 0, best_step = 0;
  bool stopped_early = false;
  // With train.trace and several ranks: the fraction of allreduce time that
  // overlapped backward on the same rank (from trace.json); -1 otherwise.
  double allreduce_hidden_fraction = -1;
  // Rank 0's peak tensor memory on its training device during the run (model, optimizer state,
  // activations, gradients, as its caching allocator counts them), MiB; -1 if unknown.
  double peak_tensor_memory_mb = -1;
  std::filesystem::path run_dir;
};

struct Datasets {
  std::shared_ptr<const data::Dataset> train, test;
  std::shared_ptr<const data::Dataset> validation;  // null unless data.validation > 0
};

// The datasets a config names (fashion-mnist and mnist from idx files, npy,
// csv, hdf5; store when built with the data store). Errors name the file and the package.
// With data.validation = N the last N training samples become the validation
// set and the training set keeps the rest. `targets` > 0 opens them with that
// many float regression targets per sample (Objective::targets()).
Datasets load_datasets(const DataConfig& config, int64_t targets = 0);
// The model a config names, for samples of `sample_shape` [C, H, W].
nn::ModulePtr build_model(const Config& config, const Shape& sample_shape);
// The process-wide activation layout the config asks for (train.channels_last:
// set_cpu_channels_last and set_autocast_channels_last); training, evaluation
// and inference call it before running a model.
void apply_layout(const Config& config);
// Normalization (and augmentation when `train`) as the config says.
data::Pipeline make_pipeline(const DataConfig& config, bool train);
// Loss and metrics over a dataset, sharded over the ranks of `comm` (null:
// the world) and all-reduced: exact over the whole set. `objective` null:
// classification with cross entropy.
EvalResult evaluate(nn::Module& model, std::shared_ptr<const data::Dataset> dataset, const DataConfig& config,
                    dist::Communicator* comm = nullptr, const Objective* objective = nullptr);
// Loads a checkpoint's model weights ("model." tensors) into `model`. `path` is
// a run directory (newest valid checkpoint) or a .safetensors file. A checkpoint
// of a run with train.ema_decay also holds the weight averages ("ema."): they
// are loaded instead unless `averages` is false.
void load_model_weights(nn::Module& model, const std::filesystem::path& path, bool averages = true);

// The loss scaler train.precision and train.loss_scale ask for: "auto" is
// dynamic for fp16 and none otherwise; "dynamic" a GradScaler with the default
// options; a number a fixed scale (1 and "none": no scaler, nullptr).
std::unique_ptr<optim::GradScaler> make_grad_scaler(const TrainConfig& config);

struct TrainerOptions {
  // The ranks that train this model together (null: the world). `hpdl tune`
  // gives each trial a communicator split from the world.
  dist::Communicator* comm = nullptr;
  // Where the first rank writes progress and messages.
  std::FILE* log = stderr;
};

class Trainer {
 public:
  explicit Trainer(Config config, TrainerOptions options = {});
  // Trains; with `resume`, continues from the newest valid checkpoint in the run directory.
  TrainSummary run(bool resume = false);

 private:
  Config config_;
  TrainerOptions options_;
};

}  // namespace hpdl::train
