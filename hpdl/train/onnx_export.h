// ONNX export of a trained model: walks the module tree and writes the
// equivalent inference graph (opset 13, ir_version 8) through the protobuf
// writer in hpdl/io/onnx.h. Eval-mode semantics: batch norm with its running
// statistics, dropout left out. The input normalization of the run (if any)
// becomes the graph's first two nodes, so the ONNX input is what `hpdl predict`
// feeds the pipeline: float32 pixels in [0, 1]. See docs/onnx.md.
#pragma once

#include <filesystem>
#include <memory>
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
// Exportable modules: Sequential, Linear, Conv2d, ConvTranspose2d,
// BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (1x1, or output
// sizes that divide the input), Flatten, Identity, Dropout (dropped), ReLU,
// LeakyReLU, Tanh, Sigmoid, GELU, LayerNorm (decomposed: opset 13 has no
// LayerNormalization), MultiheadAttention (self-attention, causal or not),
// TransformerEncoderLayer (pre- or post-norm), the zoo's VisionTransformer,
// BasicBlock, Bottleneck, LSTM and GRU with
// batch_first (any number of layers, uni- or bidirectional: [N, T, F] ->
// [N, T, H*dirs], as their forward), and the zoo's RnnClassifier (lstm/gru
// models). Recurrent weights are regrouped into ONNX's gate order. Anything
// else (a user-defined module, an LSTM/GRU without batch_first) throws
// hpdl::Error naming the module's path and type.
// The model's mode is not changed: the graph always has eval semantics.
io::onnx::Model export_onnx(nn::Module& model, const OnnxExportOptions& options);

// export_onnx() written atomically to `path`; throws naming the file.
void save_onnx(const std::filesystem::path& path, nn::Module& model, const OnnxExportOptions& options);

// A graph built step by step, for networks whose forward is more than a chain
// of modules (gan::export_generator_onnx): one float32 input [N, sample...]
// with a dynamic N, then modules and single nodes applied to named values,
// then finish(). Values are tracked with their per-sample shape (no batch).
class OnnxGraphBuilder {
 public:
  OnnxGraphBuilder(const std::string& input_name, const Shape& sample);
  ~OnnxGraphBuilder();
  OnnxGraphBuilder(const OnnxGraphBuilder&) = delete;
  OnnxGraphBuilder& operator=(const OnnxGraphBuilder&) = delete;

  const std::string& input() const { return input_; }
  // `m` applied to value x of per-sample shape `shape` (updated to the output's);
  // returns the output value. `path` names the weights ("up1" -> "up1.weight").
  // Throws as export_onnx for a module it cannot export or a wrong input shape.
  std::string emit(nn::Module& m, const std::string& path, const std::string& x, Shape& shape);
  // One node of `op` on `inputs` (value names) with one output; returns it.
  std::string node(const std::string& op, const std::string& path, const std::vector<std::string>& inputs,
                   const std::vector<io::onnx::Attribute>& attrs = {});
  // x [N, shape...] reshaped to [N, to...]; throws unless the sizes agree.
  std::string reshape(const std::string& path, const std::string& x, Shape& shape, const Shape& to);
  // The model whose output `output_name` is value y (the last node's output)
  // of per-sample shape `shape`. The builder cannot be used afterwards.
  io::onnx::Model finish(const std::string& y, const Shape& shape, const std::string& output_name,
                         const std::string& doc);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::string input_;
};

}  // namespace hpdl::train
