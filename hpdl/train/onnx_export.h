// ONNX export of a trained model: walks the module tree and writes the
// equivalent inference graph (opset 13, ir_version 8) through the protobuf
// writer in hpdl/io/onnx.h. Eval-mode semantics: batch norm with its running
// statistics, dropout left out. The input normalization of the run (if any)
// becomes the graph's first two nodes, so the ONNX input is what `hpdl predict`
// feeds the pipeline: float32 pixels in [0, 1]. See docs/onnx.md.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "hpdl/core/shape.h"
#include "hpdl/io/onnx.h"
#include "hpdl/nn/module.h"

namespace hpdl::train {

struct OnnxExportOptions {
  // One sample without the batch: [C, H, W] for images, [D] for feature vectors.
  Shape sample;
  // Per-channel normalization (x - mean) / std applied to the input first; one
  // value (all channels) or one per channel. Empty: none.
  std::vector<double> mean, std;
  std::string input_name = "input", output_name = "logits";
  std::string doc;  // the model's doc_string
};

// The ONNX graph of `model` for inputs [N, sample...] with a dynamic batch N
// (dim_param "N"); output [N, classes] (the logits, no softmax). Initializers
// are float32, named after the state-dict keys ("3.0.conv1.weight").
// Exportable modules: Sequential, Linear, Conv2d, BatchNorm1d/2d, MaxPool2d,
// AvgPool2d, AdaptiveAvgPool2d (1x1, or output sizes that divide the input),
// Flatten, Identity, Dropout (dropped), ReLU, LeakyReLU, Tanh, Sigmoid, GELU,
// BasicBlock, Bottleneck, and the zoo's RnnClassifier (lstm/gru models: ONNX
// LSTM/GRU nodes, gates reordered). Anything else (an LSTM or GRU outside
// RnnClassifier, ConvTranspose2d, a user-defined module) throws hpdl::Error
// naming the module's path and type.
// The model's mode is not changed: the graph always has eval semantics.
io::onnx::Model export_onnx(nn::Module& model, const OnnxExportOptions& options);

// export_onnx() written atomically to `path`; throws naming the file.
void save_onnx(const std::filesystem::path& path, nn::Module& model, const OnnxExportOptions& options);

}  // namespace hpdl::train
