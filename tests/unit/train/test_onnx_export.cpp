// ONNX export of zoo models: graph structure (ops in order, weights named by
// state-dict key, dynamic batch, normalization first, no dropout) and the
// refusal of modules ONNX export does not cover. The numerical check against
// hpdl's forward (and onnx.checker) is tests/integration/onnx_check.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "hpdl/core/error.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/train/onnx_export.h"

namespace hpdl::train {
namespace {

std::vector<std::string> op_types(const io::onnx::Model& m) {
  std::vector<std::string> ops;
  for (const auto& n : m.graph.nodes) ops.push_back(n.op_type);
  return ops;
}

TEST(OnnxExport, Lenet5GraphMatchesTheModel) {
  auto model = nn::models::lenet5(1, 10, 28, 28, 3);
  OnnxExportOptions o;
  o.sample = {1, 28, 28};
  o.mean = {0.5};
  o.std = {0.25};
  auto m = export_onnx(*model, o);
  EXPECT_EQ(m.ir_version, 8);
  EXPECT_EQ(m.opset, 13);
  const std::vector<std::string> expected{"Sub", "Div", "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool",
                                          "Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"};
  EXPECT_EQ(op_types(m), expected);
  // Every parameter is an initializer under its state-dict name, with its shape.
  std::map<std::string, const io::onnx::Initializer*> inits;
  for (const auto& t : m.graph.initializers) inits[t.name] = &t;
  for (const auto& [name, t] : model->named_parameters()) {
    ASSERT_TRUE(inits.count(name)) << name;
    EXPECT_EQ(inits[name]->dims, t.shape()) << name;
    EXPECT_EQ(inits[name]->raw.size(), t.numel() * 4) << name;
  }
  EXPECT_EQ(inits.size(), model->named_parameters().size() + 2);  // + normalize.mean/std
  ASSERT_EQ(m.graph.inputs.size(), 1u);
  EXPECT_EQ(m.graph.inputs[0].name, "input");
  EXPECT_EQ(m.graph.inputs[0].dims[0].symbol, "N");
  EXPECT_EQ(m.graph.inputs[0].dims[1].value, 1);
  ASSERT_EQ(m.graph.outputs.size(), 1u);
  EXPECT_EQ(m.graph.outputs[0].name, "logits");
  ASSERT_EQ(m.graph.outputs[0].dims.size(), 2u);
  EXPECT_EQ(m.graph.outputs[0].dims[0].symbol, "N");
  EXPECT_EQ(m.graph.outputs[0].dims[1].value, 10);
  EXPECT_EQ(m.graph.nodes.back().outputs[0], "logits");
  // Value names are unique (SSA), as ONNX requires.
  std::set<std::string> outs;
  for (const auto& n : m.graph.nodes) EXPECT_TRUE(outs.insert(n.outputs[0]).second) << n.outputs[0];
}

TEST(OnnxExport, EvalSemanticsNoDropoutBatchNormWithRunningStats) {
  nn::models::ModelConfig c;
  c.in_channels = 3, c.height = c.width = 32, c.dropout = 0.5;
  auto model = nn::models::make_model("alexnet_bn", c);
  model->train();  // the export does not depend on the mode
  OnnxExportOptions o;
  o.sample = {3, 32, 32};
  auto m = export_onnx(*model, o);
  int bn = 0;
  for (const auto& n : m.graph.nodes) {
    EXPECT_NE(n.op_type, "Dropout");
    if (n.op_type == "BatchNormalization") {
      ++bn;
      ASSERT_EQ(n.inputs.size(), 5u);
      EXPECT_NE(n.inputs[3].find("running_mean"), std::string::npos);
      EXPECT_NE(n.inputs[4].find("running_var"), std::string::npos);
    }
  }
  EXPECT_EQ(bn, 7);  // five convolutions and two hidden linears
  EXPECT_TRUE(model->is_training());
  EXPECT_EQ(m.graph.outputs[0].dims[1].value, 10);
}

TEST(OnnxExport, ResidualBlocksAddTheShortcut) {
  auto model = nn::models::resnet20(1, 10, 0);
  OnnxExportOptions o;
  o.sample = {1, 28, 28};
  auto ops = op_types(export_onnx(*model, o));
  EXPECT_EQ(std::count(ops.begin(), ops.end(), "Add"), 9);  // one per BasicBlock
  EXPECT_EQ(std::count(ops.begin(), ops.end(), "Conv"), 1 + 18 + 2);  // stem, 2 per block, 2 projections
  EXPECT_EQ(ops[ops.size() - 3], "GlobalAveragePool");
}

TEST(OnnxExport, RecurrentClassifierBecomesOnnxLstmWithGatesReordered) {
  nn::models::ModelConfig c;
  c.hidden = {8, 8};
  auto model = nn::models::make_model("lstm", c);
  OnnxExportOptions o;
  o.sample = {1, 28, 28};
  auto m = export_onnx(*model, o);
  const std::vector<std::string> expected{"Transpose", "Reshape", "LSTM", "Squeeze", "LSTM", "Squeeze", "Gemm"};
  EXPECT_EQ(op_types(m), expected);
  // W of layer 0: rows i, f, g, o (PyTorch) become i, o, f, c (ONNX); H = 8, 28 inputs.
  auto* rnn = dynamic_cast<nn::models::RnnClassifier*>(model.get());
  ASSERT_NE(rnn, nullptr);
  const auto w = rnn->rnn->weights[0].to_vector<float>();
  const io::onnx::Initializer* W = nullptr;
  for (const auto& t : m.graph.initializers)
    if (t.name == "rnn.l0.W") W = &t;
  ASSERT_NE(W, nullptr);
  EXPECT_EQ(W->dims, (std::vector<int64_t>{1, 32, 28}));
  std::vector<float> onnx_w(32 * 28);
  std::memcpy(onnx_w.data(), W->raw.data(), W->raw.size());
  const int64_t block = 8 * 28;
  const int64_t from[4] = {0, 3, 1, 2};  // ONNX gate k holds PyTorch gate from[k]
  for (int64_t k = 0; k < 4; ++k)
    for (int64_t j = 0; j < block; ++j) ASSERT_EQ(onnx_w[k * block + j], w[from[k] * block + j]) << k << " " << j;
}

TEST(OnnxExport, UnsupportedLayersAreRefusedByName) {
  OnnxExportOptions o;
  o.sample = {1, 28, 28};
  auto bare = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Flatten>(2), std::make_shared<nn::GRU>(28, 4)});
  try {
    export_onnx(*bare, o);
    FAIL() << "a bare GRU exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("module '1' of type GRU"), std::string::npos) << e.what();
  }
  auto seq = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(1, 2, nn::Conv2dOptions::k(3)),
      std::make_shared<nn::ConvTranspose2d>(2, 1, nn::ConvTranspose2dOptions::k(3))});
  try {
    export_onnx(*seq, o);
    FAIL() << "ConvTranspose2d exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("module '1' of type ConvTranspose2d"), std::string::npos) << e.what();
  }
  // Shape mismatches name the layer.
  o.sample = {3, 28, 28};
  EXPECT_THROW(export_onnx(*nn::models::lenet5(1, 10), o), Error);
  o.sample = {};
  EXPECT_THROW(export_onnx(*nn::models::lenet5(1, 10), o), Error);
}

}  // namespace
}  // namespace hpdl::train
