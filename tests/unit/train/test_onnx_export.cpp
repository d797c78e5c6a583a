// ONNX export of zoo models: graph structure (ops in order, weights named by
// state-dict key, dynamic batch, normalization first, no dropout) and the
// refusal of modules ONNX export does not cover; transposed convolutions,
// bidirectional LSTM gate regrouping, the ViT and transformer layers, and the step-by-step graph builder. The numerical check against
// hpdl's forward (and onnx.checker) is tests/integration/onnx_check.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "hpdl/core/error.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/nn/rnn.h"
#include "hpdl/nn/transformer.h"
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

const io::onnx::Initializer* initializer(const io::onnx::Model& m, const std::string& name) {
  for (const auto& t : m.graph.initializers)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<float> floats(const io::onnx::Initializer& t) {
  std::vector<float> v(t.raw.size() / 4);
  std::memcpy(v.data(), t.raw.data(), t.raw.size());
  return v;
}

const io::onnx::Attribute* attribute(const io::onnx::Node& n, const std::string& name) {
  for (const auto& a : n.attributes)
    if (a.name == name) return &a;
  return nullptr;
}

TEST(OnnxExport, ConvTransposeCarriesEveryParameter) {
  Generator gen(3);
  auto seq = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::ConvTranspose2d>(4, 6, nn::ConvTranspose2dOptions::k(3).s(3).p(1).op(2).d(2).g(2), gen),
      std::make_shared<nn::ConvTranspose2d>(6, 1, nn::ConvTranspose2dOptions::k(4).s(2).p(1).no_bias(), gen)});
  OnnxExportOptions o;
  o.sample = {4, 5, 5};
  auto m = export_onnx(*seq, o);
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"ConvTranspose", "ConvTranspose"}));
  const auto& n = m.graph.nodes[0];
  ASSERT_EQ(n.inputs.size(), 3u);  // x, weight, bias
  EXPECT_EQ(attribute(n, "strides")->ints, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(attribute(n, "pads")->ints, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(attribute(n, "output_padding")->ints, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(attribute(n, "dilations")->ints, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(attribute(n, "group")->i, 2);
  // The weight keeps its [in, out/groups, kh, kw] layout, which is ONNX's too.
  EXPECT_EQ(initializer(m, "0.weight")->dims, (std::vector<int64_t>{4, 3, 3, 3}));
  EXPECT_EQ(m.graph.nodes[1].inputs.size(), 2u);  // no bias
  // 5 -> (5-1)*3 - 2 + 2*2 + 2 + 1 = 17 -> 16*2 - 2 + 3 + 1 = 34.
  const auto& out = m.graph.outputs[0].dims;
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[1].value, 1);
  EXPECT_EQ(out[2].value, 34);
  EXPECT_EQ(out[3].value, 34);
}

TEST(OnnxExport, BidirectionalLstmRegroupsTheGatesOfBothDirections) {
  Generator gen(4);
  RnnOptions ro;
  ro.num_layers = 2, ro.bidirectional = true, ro.batch_first = true;
  auto lstm = std::make_shared<nn::LSTM>(5, 3, ro, gen);
  auto seq = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{lstm});
  OnnxExportOptions o;
  o.sample = {7, 5};
  auto m = export_onnx(*seq, o);
  // [N, T, F] -> [T, N, F], layer 0, Y [T, 2, N, H] -> [T, N, 2H], layer 1, the same, back to [N, T, 2H].
  const std::vector<std::string> expected{"Transpose", "LSTM", "Transpose", "Reshape", "LSTM",
                                          "Transpose", "Reshape", "Transpose"};
  EXPECT_EQ(op_types(m), expected);
  const auto* dir = attribute(m.graph.nodes[1], "direction");
  ASSERT_NE(dir, nullptr);
  EXPECT_EQ(dir->s, "bidirectional");
  const auto& out = m.graph.outputs[0].dims;
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].value, 7);
  EXPECT_EQ(out[2].value, 6);
  // Layer 1 reads 2H = 6 features; direction d of ONNX's W holds weight_ih_l1[_reverse] with rows
  // i, f, g, o (PyTorch) as i, o, f, c.
  const auto* W = initializer(m, "0.l1.W");
  ASSERT_NE(W, nullptr);
  EXPECT_EQ(W->dims, (std::vector<int64_t>{2, 12, 6}));
  EXPECT_EQ(initializer(m, "0.l1.B")->dims, (std::vector<int64_t>{2, 24}));
  const auto w = floats(*W);
  const auto params = lstm->named_parameters();
  auto param = [&](const std::string& name) {
    for (const auto& [n, t] : params)
      if (n == name) return t.to_vector<float>();
    ADD_FAILURE() << "no parameter " << name;
    return std::vector<float>{};
  };
  const int64_t block = 3 * 6, from[4] = {0, 3, 1, 2};
  for (int64_t d = 0; d < 2; ++d) {
    const auto src = param(d ? "weight_ih_l1_reverse" : "weight_ih_l1");
    ASSERT_EQ(src.size(), static_cast<size_t>(4 * block));
    for (int64_t k = 0; k < 4; ++k)
      for (int64_t j = 0; j < block; ++j)
        ASSERT_EQ(w[d * 4 * block + k * block + j], src[from[k] * block + j]) << d << " " << k << " " << j;
  }
  // B[d] = [bias_ih, bias_hh] of direction d, each regrouped.
  const auto B = floats(*initializer(m, "0.l1.B"));
  const auto b_hh_rev = param("bias_hh_l1_reverse");
  for (int64_t k = 0; k < 4; ++k)
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(B[24 + 12 + k * 3 + j], b_hh_rev[from[k] * 3 + j]);
}

TEST(OnnxExport, UnsupportedLayersAreRefusedByName) {
  OnnxExportOptions o;
  o.sample = {1, 28, 28};
  // A GRU without batch_first would take [T, N, F]: the batch is not on axis 0.
  auto bare = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Flatten>(2), std::make_shared<nn::GRU>(28, 4)});
  try {
    export_onnx(*bare, o);
    FAIL() << "a GRU without batch_first exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GRU '1' is not batch_first"), std::string::npos) << e.what();
  }
  auto seq = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Embedding>(10, 4)});
  try {
    export_onnx(*seq, o);
    FAIL() << "Embedding exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("module '1' of type Embedding"), std::string::npos) << e.what();
  }
  // A LayerNorm over the wrong width names itself.
  auto ln = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(1, 2, nn::Conv2dOptions::k(3)), std::make_shared<nn::LayerNorm>(7)});
  try {
    export_onnx(*ln, o);
    FAIL() << "LayerNorm(7) on [N, 2, 26, 26] exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("LayerNorm '1' normalizes 7 features"), std::string::npos) << e.what();
  }
  // Attention needs [N, T, E] with its E.
  auto attn = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Flatten>(2), std::make_shared<nn::MultiheadAttention>(8, 2)});
  try {
    export_onnx(*attn, o);
    FAIL() << "MultiheadAttention(8) on [N, 1, 784] exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MultiheadAttention '1' takes [N, T, 8]"), std::string::npos) << e.what();
  }
  // A ConvTranspose2d fed the wrong channel count names itself.
  auto convt = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::ConvTranspose2d>(3, 1, nn::ConvTranspose2dOptions::k(3))});
  try {
    export_onnx(*convt, o);
    FAIL() << "ConvTranspose2d on the wrong channels exported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ConvTranspose2d '0' takes [N, 3, H, W]"), std::string::npos) << e.what();
  }
  // Shape mismatches name the layer.
  o.sample = {3, 28, 28};
  EXPECT_THROW(export_onnx(*nn::models::lenet5(1, 10), o), Error);
  o.sample = {};
  EXPECT_THROW(export_onnx(*nn::models::lenet5(1, 10), o), Error);
}

size_t count(const std::vector<std::string>& ops, const std::string& op) {
  return static_cast<size_t>(std::count(ops.begin(), ops.end(), op));
}

TEST(OnnxExport, VitBecomesAttentionGraphWithDynamicBatch) {
  nn::models::VitOptions v;
  v.in_channels = 3, v.height = v.width = 8, v.num_classes = 5, v.patch_size = 4;
  v.dim = 12, v.depth = 2, v.heads = 3, v.dropout = 0.1;
  auto model = nn::models::vit(v);
  OnnxExportOptions o;
  o.sample = {3, 8, 8};
  auto m = export_onnx(*model, o);
  const auto ops = op_types(m);
  EXPECT_EQ(count(ops, "Dropout"), 0u);
  EXPECT_EQ(count(ops, "Softmax"), 2u);                   // one attention per block
  EXPECT_EQ(count(ops, "ReduceMean"), 2u * (2 * 2 + 1));  // mean and variance per LayerNorm: 2 per block + final
  EXPECT_EQ(count(ops, "Erf"), 2u);                       // GELU in each feed-forward block
  EXPECT_EQ(count(ops, "Expand"), 1u);                    // the class token, to the batch
  EXPECT_EQ(ops.front(), "Conv");
  EXPECT_EQ(ops.back(), "Gemm");  // the head on [N, E]
  for (const auto& n : m.graph.nodes) {
    if (n.op_type == "Softmax") {
      EXPECT_EQ(attribute(n, "axis")->i, -1);  // over the keys
    }
    if (n.op_type == "Reshape") {
      // Every reshape copies the batch (0) rather than fixing it.
      const auto* target = initializer(m, n.inputs[1]);
      ASSERT_NE(target, nullptr) << n.name;
      int64_t first = -1;
      std::memcpy(&first, target->raw.data(), 8);
      EXPECT_EQ(first, 0) << n.name;
    }
  }
  // The fused in-projection is transposed for MatMul; the heads split [N, T, 3, H, D].
  EXPECT_EQ(initializer(m, "blocks.0.self_attn.in_proj_weight_t")->dims, (std::vector<int64_t>{12, 36}));
  // (Shape initializers carry a counter in their name: found by prefix.)
  bool split = false;
  for (const auto& t : m.graph.initializers)
    if (t.name.rfind("blocks.1.self_attn.qkv_shape", 0) == 0) {
      std::vector<int64_t> dims(5);
      std::memcpy(dims.data(), t.raw.data(), 40);
      EXPECT_EQ(dims, (std::vector<int64_t>{0, 5, 3, 3, 4}));
      split = true;
    }
  EXPECT_TRUE(split);
  for (const char* name : {"cls_token", "pos_embed", "norm.weight", "head.weight", "blocks.1.norm2.bias"})
    EXPECT_NE(initializer(m, name), nullptr) << name;
  EXPECT_EQ(initializer(m, "pos_embed")->dims, (std::vector<int64_t>{1, 5, 12}));
  EXPECT_EQ(m.graph.outputs[0].dims[0].symbol, "N");
  EXPECT_EQ(m.graph.outputs[0].dims[1].value, 5);
}

TEST(OnnxExport, PostNormEncoderNormalizesAfterTheResidualSum) {
  Generator gen(6);
  nn::TransformerEncoderLayerOptions lo;
  lo.dim_feedforward = 16, lo.norm_first = false;
  auto post = std::make_shared<nn::Sequential>(
      std::initializer_list<nn::ModulePtr>{std::make_shared<nn::TransformerEncoderLayer>(8, 2, lo, gen)});
  OnnxExportOptions o;
  o.sample = {5, 8};
  auto ops = op_types(export_onnx(*post, o));
  // Post-norm: the layer ends in LayerNorm (... Mul weight, Add bias) and starts with the attention's MatMul.
  EXPECT_EQ(ops.front(), "MatMul");
  EXPECT_EQ(count(ops, "Relu"), 1u);
  ASSERT_GE(ops.size(), 3u);
  EXPECT_EQ(ops[ops.size() - 2], "Mul");
  lo.norm_first = true;
  auto pre = std::make_shared<nn::Sequential>(
      std::initializer_list<nn::ModulePtr>{std::make_shared<nn::TransformerEncoderLayer>(8, 2, lo, gen)});
  ops = op_types(export_onnx(*pre, o));
  EXPECT_EQ(ops.front(), "ReduceMean");  // pre-norm: norm1 first
  EXPECT_EQ(ops.back(), "Add");          // the feed-forward residual
  EXPECT_EQ(ops[ops.size() - 2], "Add");  // linear2's bias
}

TEST(OnnxExport, GraphBuilderChecksReshapesAndFinishesOnce) {
  Generator gen(5);
  nn::Linear fc(4, 12, true, gen);
  OnnxGraphBuilder b("x", {4});
  Shape shape{4};
  std::string y = b.emit(fc, "fc", b.input(), shape);
  EXPECT_EQ(shape, (Shape{12}));
  Shape copy = shape;
  EXPECT_THROW(b.reshape("fc", y, copy, {5, 2}), Error);
  y = b.reshape("fc", y, shape, {3, 2, 2});
  EXPECT_EQ(shape, (Shape{3, 2, 2}));
  auto m = b.finish(y, shape, "out", "doc");
  EXPECT_EQ(op_types(m), (std::vector<std::string>{"Gemm", "Reshape"}));
  EXPECT_EQ(m.graph.outputs[0].name, "out");
  EXPECT_EQ(m.graph.outputs[0].dims.size(), 4u);
  EXPECT_THROW(b.finish(y, shape, "out", "doc"), Error);
  EXPECT_THROW(b.node("Relu", "r", {y}), Error);
  EXPECT_THROW(OnnxGraphBuilder("x", {}), Error);
}

}  // namespace
}  // namespace hpdl::train
