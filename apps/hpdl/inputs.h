// What predict and explain share: a trained model loaded for inference from a
// run directory, and the input files they read.
#pragma once

#include <string>

#include "hpdl/core/tensor.h"
#include "hpdl/nn/module.h"
#include "hpdl/train/config.h"

namespace hpdl::cli {

struct InferenceModel {
  train::Config cfg;
  Shape sample;  // one input [C, H, W]
  nn::ModulePtr model;  // weights loaded, in eval mode
};
// `checkpoint`: a run directory (its newest valid checkpoint) or a
// .safetensors file; `config`: the TOML (default: CHECKPOINT/config.toml).
InferenceModel load_inference_model(const std::string& checkpoint, const std::string& config);

// Samples [N, C, H, W] as float32: PNG and uint8 idx/.npy pixels scaled to
// [0, 1], float .npy as stored. Errors name the file and the expected shape.
Tensor read_inputs(const std::string& file, const Shape& sample);

// The training pipeline's per-channel normalization (a no-op when the config
// has none), with differentiable ops so gradients reach the pixels.
Tensor normalize_inputs(const train::Config& cfg, const Tensor& x);

}  // namespace hpdl::cli
