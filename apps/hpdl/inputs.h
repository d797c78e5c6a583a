// What eval, predict, export and explain share: the checkpoint they read
// (--checkpoint, --best), a trained model loaded for inference from it, and
// the input files they read.
#pragma once

#include <string>

#include "hpdl/core/tensor.h"
#include "hpdl/nn/module.h"
#include "hpdl/train/config.h"

namespace CLI {
class App;
}

namespace hpdl::cli {

// --checkpoint RUN_DIR|FILE and --best.
struct CheckpointArg {
  std::string path;   // a run directory (its newest valid checkpoint) or a .safetensors file
  bool best = false;  // the run directory's best model instead (train.keep_best)
  bool live = false;  // a train.ema_decay run's live weights instead of their averages
  // What to load weights from: `path`, or with --best RUN_DIR/checkpoints/best.safetensors. Throws
  // when --best is given a file or the run has no best model, or --live with --best.
  std::string weights() const;
  std::string default_config() const { return path + "/config.toml"; }
};
// Adds --checkpoint (required) and --best to `cmd`, writing into `arg`.
void add_checkpoint_options(CLI::App* cmd, CheckpointArg& arg);

struct InferenceModel {
  train::Config cfg;
  Shape sample;  // one input [C, H, W]
  nn::ModulePtr model;  // weights loaded, in eval mode
};
// `config`: the TOML (default: RUN_DIR/config.toml).
InferenceModel load_inference_model(const CheckpointArg& checkpoint, const std::string& config);

// An input argument: a file, or a dataset inside an HDF5 file, written
// FILE.h5:DATASET (also .hdf5, .he5). `dataset` is empty for other files and
// for an HDF5 file named without one.
struct InputSpec {
  std::string file, dataset;
  bool hdf5 = false;
};
InputSpec parse_input(const std::string& arg);

// Samples [N, C, H, W] as float32: PNG and uint8 idx/.npy/HDF5 pixels scaled
// to [0, 1], float .npy and HDF5 float32/float64/int datasets as stored (the
// training readers' rules). An HDF5 argument without ":DATASET" reads
// `hdf5_dataset` (the run's data.hdf5_test_x). An HDF5 dataset must be
// [N, sample...] or, as in training, [N, H, W] for C = 1 or [N, F] for samples
// [1, 1, F]. Errors name the file (and dataset) and the expected shape.
Tensor read_inputs(const std::string& arg, const Shape& sample, const std::string& hdf5_dataset = "test/images");

// The training pipeline's per-channel normalization (a no-op when the config
// has none), with differentiable ops so gradients reach the pixels.
Tensor normalize_inputs(const train::Config& cfg, const Tensor& x);

}  // namespace hpdl::cli
