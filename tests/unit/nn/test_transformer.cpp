// MultiheadAttention, TransformerEncoderLayer and the ViT zoo model: gradients
// against central differences in double precision (parameters included),
// outputs and gradients equal to torch.nn's for the same state dict (skipped,
// visibly, without python3-torch), masks, dropout, and the named errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "hpdl/autograd/gradcheck.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/nn/nn.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"
#include "tests/unit/nn/stage_check.h"
#include "tests/unit/nn/torch_check.h"

namespace hpdl::nn {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// Checks d(output)/d(x and every parameter) of `m` (converted to float64) by finite differences.
void expect_module_gradcheck(Module& m, const Shape& x_shape, const std::function<Tensor(const Tensor&)>& fwd) {
  m.to(DType::f64);
  Generator gen(3);
  std::vector<Tensor> in{Tensor::rand(x_shape, gen, -1, 1, DType::f64).set_requires_grad()};
  for (auto& p : m.parameters()) in.push_back(p);
  GradcheckResult r = gradcheck([&](const std::vector<Tensor>& x) { return fwd(x[0]); }, in, 1e-6, 1e-7, 1e-5);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(MultiheadAttention, ParameterNamesAndShapesArePyTorchs) {
  MultiheadAttention a(8, 2);
  auto sd = a.state_dict();
  ASSERT_EQ(sd.size(), 4u);
  EXPECT_EQ(sd.at("in_proj_weight").shape(), (Shape{24, 8}));
  EXPECT_EQ(sd.at("in_proj_bias").shape(), (Shape{24}));
  EXPECT_EQ(sd.at("out_proj.weight").shape(), (Shape{8, 8}));
  EXPECT_EQ(sd.at("out_proj.bias").shape(), (Shape{8}));
  EXPECT_EQ(max(abs(sd.at("in_proj_bias"))).item(), 0.0);
  // Xavier-uniform bound sqrt(6 / (fan_in + fan_out)) = sqrt(6 / 32).
  EXPECT_LE(max(abs(sd.at("in_proj_weight"))).item(), std::sqrt(6.0 / 32.0));
}

TEST(MultiheadAttention, GradientsMatchFiniteDifferences) {
  MultiheadAttention a(4, 2);
  expect_module_gradcheck(a, {2, 3, 4}, [&](const Tensor& x) { return a.forward(x); });
  Tensor mask = Tensor::from_vector<double>({0, -1, 0.5, 0, 0, -2, 1, 0, 0}, {3, 3});
  expect_module_gradcheck(a, {2, 3, 4}, [&](const Tensor& x) { return a.forward(x, mask); });
  a.causal = true;
  expect_module_gradcheck(a, {2, 3, 4}, [&](const Tensor& x) { return a.forward(x); });
}

TEST(MultiheadAttention, CausalOutputDoesNotSeeTheFuture) {
  Generator gen(5);
  MultiheadAttention a(8, 4, 0.0, true, gen);
  a.causal = true;
  Tensor x = Tensor::randn({1, 5, 8}, gen);
  Tensor y1 = a.forward(x);
  Tensor x2 = x.clone();
  x2.select(1, 4).fill_(3.0);  // change only the last position
  Tensor y2 = a.forward(x2);
  EXPECT_LT(max(abs(sub(y1.slice(1, 0, 4), y2.slice(1, 0, 4)))).item(), 1e-6);
  EXPECT_GT(max(abs(sub(y1.select(1, 4), y2.select(1, 4)))).item(), 1e-3);
}

TEST(MultiheadAttention, WeightsAreAveragedOverHeadsAndRowsSumToOne) {
  MultiheadAttention a(8, 2);
  Generator gen(6);
  Tensor w;
  a.forward(Tensor::randn({3, 4, 8}, gen), Tensor(), &w);
  ASSERT_EQ(w.shape(), (Shape{3, 4, 4}));
  auto s = sum(w, {2}).to_vector<float>();
  for (float v : s) EXPECT_NEAR(v, 1.0f, 1e-5f);
}

TEST(MultiheadAttention, DropoutOnWeightsOnlyInTraining) {
  Generator gen(7);
  MultiheadAttention a(8, 2, 0.5, true, gen, 11);
  Tensor x = Tensor::randn({2, 6, 8}, gen);
  a.eval();
  Tensor e1 = a.forward(x), e2 = a.forward(x);
  EXPECT_EQ(max(abs(sub(e1, e2))).item(), 0.0);
  a.train();
  EXPECT_GT(max(abs(sub(a.forward(x), e1))).item(), 1e-4);
}

TEST(MultiheadAttention, BadSizesAreNamed) {
  std::string m = error_of([] { MultiheadAttention(10, 4); });
  EXPECT_NE(m.find("embed_dim 10 is not divisible by num_heads 4"), std::string::npos) << m;
  MultiheadAttention a(8, 2);
  m = error_of([&] { a.forward(Tensor::ones({2, 3, 6})); });
  EXPECT_NE(m.find("[2, 3, 6]"), std::string::npos) << m;
}

TEST(TransformerEncoderLayer, GradientsMatchFiniteDifferencesPreAndPostNorm) {
  for (bool pre : {true, false}) {
    for (const char* act : {"gelu", "relu"}) {
      TransformerEncoderLayerOptions o;
      o.dim_feedforward = 6;
      o.dropout = 0.0;
      o.activation = act;
      o.norm_first = pre;
      Generator gen(9);
      TransformerEncoderLayer layer(4, 2, o, gen);
      SCOPED_TRACE(std::string(pre ? "pre-norm " : "post-norm ") + act);
      expect_module_gradcheck(layer, {2, 3, 4}, [&](const Tensor& x) { return layer.forward(x); });
    }
  }
}

TEST(TransformerEncoderLayer, ParameterNamesArePyTorchs) {
  TransformerEncoderLayerOptions o;
  o.dim_feedforward = 16;
  TransformerEncoderLayer layer(8, 2, o);
  std::vector<std::string> names;
  for (const auto& [n, t] : layer.named_parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"self_attn.in_proj_weight", "self_attn.in_proj_bias",
                                             "self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear1.weight",
                                             "linear1.bias", "linear2.weight", "linear2.bias", "norm1.weight",
                                             "norm1.bias", "norm2.weight", "norm2.bias"}));
}

// hpdl's layer and torch.nn's with hpdl's state dict give the same output and
// gradients (x and every parameter) in float64. transformer_torch_check.py
// does the torch side; skipped without torch.
void matches_pytorch(Module& m, const std::map<std::string, std::string>& meta, bool with_mask,
                     bool with_padding = false) {
  m.to(DType::f64);
  Generator gen(31);
  std::map<std::string, Tensor> file;
  file["x"] = Tensor::randn({2, 5, 8}, gen, 0, 1, DType::f64);
  Tensor mask;
  if (with_mask) {
    // Causal plus a random additive part, as a float mask.
    mask = add(causal_mask(5, DType::f64), Tensor::rand({5, 5}, gen, -1, 1, DType::f64));
    file["mask"] = mask;
  }
  Tensor kpm;
  if (with_padding) {  // key padding (nonzero = ignore): positions 3, 4 of sequence 0, position 1 of sequence 1
    kpm = Tensor::from_vector(std::vector<uint8_t>{0, 0, 0, 1, 1, 0, 1, 0, 0, 0}, {2, 5});
    file["kpm"] = kpm;
  }
  Tensor x = file["x"].clone().set_requires_grad();
  Tensor out = meta.at("kind") == "mha" ? static_cast<MultiheadAttention&>(m).forward(x, mask, nullptr, kpm)
                                        : static_cast<TransformerEncoderLayer&>(m).forward(x, mask, kpm);
  file["w_out"] = Tensor::randn(out.shape(), gen, 0, 1, DType::f64);
  sum(mul(out, file["w_out"])).backward();
  file["hpdl.out"] = out.contiguous();
  file["hpdl.dx"] = x.grad();
  for (const auto& [name, p] : m.named_parameters()) {
    file["param." + name] = p;
    file["hpdl.grad." + name] = p.grad();
  }
  const test::TorchCheck c = test::run_torch_check("transformer_torch_check.py", file, meta);
  if (c.torch_missing())
    GTEST_SKIP() << "/usr/bin/python3 cannot import torch (install python3-torch to run this interop check)";
  EXPECT_EQ(c.rc, 0) << c.command << "\n" << c.report;
}

TEST(MultiheadAttention, MatchesPyTorch) {
  Generator gen(41);
  MultiheadAttention a(8, 2, 0.0, true, gen);
  init::uniform_(a.in_proj_bias, gen, -0.5, 0.5);  // non-zero biases, so their layout is checked too
  init::uniform_(a.out_proj->bias, gen, -0.5, 0.5);
  matches_pytorch(a, {{"kind", "mha"}, {"embed_dim", "8"}, {"num_heads", "2"}}, false);
}

TEST(MultiheadAttention, MatchesPyTorchWithMask) {
  Generator gen(42);
  MultiheadAttention a(8, 4, 0.0, true, gen);
  init::uniform_(a.in_proj_bias, gen, -0.5, 0.5);
  matches_pytorch(a, {{"kind", "mha"}, {"embed_dim", "8"}, {"num_heads", "4"}}, true);
}

// Key padding alone runs the fused path; with an attn_mask, the composed one.
void mha_with_key_padding_matches_pytorch(bool with_mask) {
  Generator gen(44);
  MultiheadAttention a(8, 2, 0.0, true, gen);
  init::uniform_(a.in_proj_bias, gen, -0.5, 0.5);
  matches_pytorch(a, {{"kind", "mha"}, {"embed_dim", "8"}, {"num_heads", "2"}}, with_mask, true);
}
TEST(MultiheadAttention, MatchesPyTorchWithKeyPadding) { mha_with_key_padding_matches_pytorch(false); }
TEST(MultiheadAttention, MatchesPyTorchWithKeyPaddingAndMask) { mha_with_key_padding_matches_pytorch(true); }

// Without torch too: a key padding mask is the additive mask [N, 1, 1, T]
// (-inf where padded) broadcast over heads and queries, on the fused path
// (key padding alone) and the composed one (attn_mask).
TEST(MultiheadAttention, KeyPaddingEqualsAnAdditiveMask) {
  Generator gen(45);
  MultiheadAttention a(8, 4, 0.0, true, gen);
  a.to(DType::f64);
  Tensor x = Tensor::randn({3, 5, 8}, gen, 0, 1, DType::f64);
  const std::vector<uint8_t> m{0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1};
  std::vector<double> add_mask;
  for (uint8_t b : m) add_mask.push_back(b ? -INFINITY : 0.0);
  Tensor got = a.forward(x, Tensor(), nullptr, Tensor::from_vector(m, {3, 5}));
  Tensor want = a.forward(x, Tensor::from_vector(add_mask, {3, 1, 1, 5}).expand({3, 1, 5, 5}));
  EXPECT_LT(max(abs(sub(got, want))).item(), 1e-14);
  // Positions no query may attend to do not change the output.
  Tensor x2 = x.clone();
  x2.select(0, 2).select(0, 4).fill_(5.0);  // sequence 2, position 4 is padded
  Tensor got2 = a.forward(x2, Tensor(), nullptr, Tensor::from_vector(m, {3, 5}));
  EXPECT_LT(max(abs(sub(got2.select(1, 0), got.select(1, 0)))).item(), 1e-14);
  std::string e = error_of([&] { a.forward(x, Tensor(), nullptr, Tensor::zeros({3, 4}, DType::u8)); });
  EXPECT_NE(e.find("key_padding_mask [3, 4]"), std::string::npos) << e;
}

void encoder_matches_pytorch(bool norm_first, const std::string& act, bool with_mask, bool with_padding = false) {
  TransformerEncoderLayerOptions o;
  o.dim_feedforward = 12;
  o.dropout = 0.0;
  o.activation = act;
  o.norm_first = norm_first;
  Generator gen(43);
  TransformerEncoderLayer layer(8, 2, o, gen);
  for (auto* t : {&layer.norm1->weight, &layer.norm2->weight}) init::uniform_(*t, gen, 0.5, 1.5);
  for (auto* t : {&layer.norm1->bias, &layer.norm2->bias, &layer.self_attn->in_proj_bias}) init::uniform_(*t, gen, -0.5, 0.5);
  matches_pytorch(layer,
                  {{"kind", "encoder"}, {"embed_dim", "8"}, {"num_heads", "2"}, {"dim_feedforward", "12"},
                   {"activation", act}, {"norm_first", norm_first ? "1" : "0"}},
                  with_mask, with_padding);
}

TEST(TransformerEncoderLayer, PreNormGeluMatchesPyTorch) { encoder_matches_pytorch(true, "gelu", true); }
TEST(TransformerEncoderLayer, PostNormReluMatchesPyTorch) { encoder_matches_pytorch(false, "relu", false); }
TEST(TransformerEncoderLayer, PostNormWithKeyPaddingMatchesPyTorch) {
  encoder_matches_pytorch(false, "relu", false, true);
}

TEST(Vit, ShapesParameterCountAndNames) {
  models::ModelConfig c;  // 1x28x28, 10 classes; patch 4, dim 64, depth 4, heads 4, mlp ratio 2
  auto m = models::make_model("vit", c);
  Generator gen(1);
  EXPECT_EQ(m->forward(Tensor::randn({3, 1, 28, 28}, gen)).shape(), (Shape{3, 10}));
  const int64_t E = 64, F = 128, L = 49;
  const int64_t per_layer = (3 * E * E + 3 * E) + (E * E + E) + (E * F + F) + (F * E + E) + 4 * E;
  EXPECT_EQ(m->num_parameters(), (16 * E + E) + E + (1 + L) * E + 4 * per_layer + 2 * E + (E * 10 + 10));
  auto sd = m->state_dict();
  EXPECT_EQ(sd.at("pos_embed").shape(), (Shape{1, 50, 64}));
  EXPECT_EQ(sd.at("blocks.3.self_attn.in_proj_weight").shape(), (Shape{192, 64}));
  EXPECT_EQ(sd.at("patch_embed.weight").shape(), (Shape{64, 1, 4, 4}));
}

TEST(Vit, GradientsMatchFiniteDifferences) {
  models::VitOptions o;
  o.in_channels = 2, o.height = 4, o.width = 6, o.num_classes = 3;
  o.patch_size = 2, o.dim = 4, o.depth = 2, o.heads = 2, o.mlp_ratio = 1.5;
  models::VisionTransformer v(o);
  expect_module_gradcheck(v, {2, 2, 4, 6}, [&](const Tensor& x) { return v.forward(x); });
}

TEST(Vit, BadSettingsNameTheKey) {
  models::ModelConfig c;
  c.dim = 30;
  std::string m = error_of([&] { models::make_model("vit", c); });
  EXPECT_NE(m.find("model.dim = 30 is not divisible by model.heads = 4"), std::string::npos) << m;
  c = {};
  c.patch_size = 5;
  m = error_of([&] { models::make_model("vit", c); });
  EXPECT_NE(m.find("28x28 is not divisible by model.patch_size = 5"), std::string::npos) << m;
  m = error_of([] { train::parse_config("[model]\nname = \"vit\"\ndim = 10\nheads = 4\n", "v.toml"); });
  EXPECT_NE(m.find("v.toml"), std::string::npos) << m;
  EXPECT_NE(m.find("model.dim = 10 is not divisible by model.heads = 4"), std::string::npos) << m;
  m = error_of([] { train::parse_config("[model]\nname = \"vit\"\ndepth = 0\n", "w.toml"); });
  EXPECT_NE(m.find("model.depth"), std::string::npos) << m;
  auto cfg = train::parse_config("[model]\nname = \"vit\"\npatch_size = 7\ndim = 32\ndepth = 2\nheads = 2\nmlp_ratio = 3.0\n",
                                 "ok.toml");
  EXPECT_EQ(cfg.model.patch_size, 7);
  EXPECT_EQ(cfg.model.mlp_ratio, 3.0);
  EXPECT_EQ(train::parse_config(train::to_toml(cfg), "round trip").model.dim, 32);
}

// Pipeline stages of a vit (nn::Stageable): any cut into consecutive runs of its depth + 2 layers
// composes to the vit's forward and backward exactly, and the stages hold the vit's own tensors
// under its names, in its order.
TEST(Vit, StagesComposeToTheModelUnderItsNames) {
  models::VitOptions o;
  o.in_channels = 1, o.height = 8, o.width = 8, o.num_classes = 5;
  o.patch_size = 4, o.dim = 8, o.depth = 3, o.heads = 2, o.seed = 3;
  auto v = std::make_shared<models::VisionTransformer>(o);
  Stageable& layers = *v;
  ASSERT_EQ(layers.num_layers(), 5);
  int64_t counted = 0;
  for (int64_t i = 0; i < 5; ++i) counted += layers.layer_parameters(i);
  EXPECT_EQ(counted, v->num_parameters());
  EXPECT_EQ(layers.layer_parameters(0), v->patch_embed->num_parameters() + 8 + 5 * 8);
  EXPECT_EQ(layers.layer_parameters(4), v->norm->num_parameters() + v->head->num_parameters());
  Generator gen(7);
  const Tensor x = Tensor::randn({2, 1, 8, 8}, gen);
  expect_stages_compose(*v, x, {{0, 1, 5}, {0, 2, 3, 5}, {0, 4, 5}, {0, 1, 2, 3, 4, 5}});
  auto middle = layers.make_stage(2, 3);
  EXPECT_NE(error_of([&] { middle->forward(x); }).find("vit stage of layers 2..2: input [2, 1, 8, 8] must be tokens"),
            std::string::npos);
  EXPECT_NE(error_of([&] { layers.make_stage(3, 3); }).find("a stage of layers [3, 3) is not a non-empty run of its 5 "
                                                           "layers"), std::string::npos);
  EXPECT_NE(error_of([&] { layers.make_stage(0, 6); }).find("VisionTransformer"), std::string::npos);
}

// The shipped example, through the trainer's model builder, gives the model its comment describes.
TEST(Vit, ExampleConfigBuildsTheDocumentedModel) {
  auto cfg = train::load_config(std::filesystem::path(HPDL_TEST_SOURCE_DIR) / "../../../examples/fashion_mnist/vit.toml");
  ASSERT_EQ(cfg.model.name, "vit");
  auto m = train::build_model(cfg, {1, 28, 28});
  EXPECT_EQ(m->num_parameters(), 139018);
  EXPECT_EQ(m->state_dict().at("blocks.3.linear1.weight").shape(), (Shape{128, 64}));
  cfg.model.patch_size = 7;  // the keys reach the model
  EXPECT_EQ(train::build_model(cfg, {1, 28, 28})->state_dict().at("pos_embed").shape(), (Shape{1, 17, 64}));
}

}  // namespace
}  // namespace hpdl::nn
