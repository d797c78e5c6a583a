// Writes, for each test model, OUTDIR/NAME/{model.onnx, input.npy, logits.npy}:
// the ONNX export, a batch of raw inputs in [0, 1] and hpdl's own eval-mode
// logits for them (normalization applied first, as `hpdl predict` does).
// tests/integration/onnx_check.py runs each graph in its own numpy interpreter
// and compares. Batch-norm layers get non-trivial running statistics (one
// training pass with momentum 1) and random affine parameters, so an export
// that used the wrong statistics or dropped the affine part would not match.
// Transformer layers get random LayerNorm affine parameters, attention biases,
// class token and position embeddings (their zero/one/0.02 inits would hide a
// mixed-up weight). Besides the zoo: transposed convolutions (stride, padding, output_padding,
// dilation, groups), bidirectional LSTM/GRU stacks, and a DCGAN generator
// (exported by gan::export_generator_onnx: input "z", output "images"), a
// post-norm ReLU encoder layer and a causal multi-head attention on [N, T, E].
#include <cstdio>
#include <filesystem>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"
#include "hpdl/gan/dcgan.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/resnet50.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/nn/transformer.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/onnx_export.h"

using namespace hpdl;

namespace {

struct Case {
  std::string name;
  nn::ModulePtr model;
  Shape sample;
  std::vector<double> mean, std;
};

Tensor uniform(const Shape& shape, Generator& gen, double lo = 0, double hi = 1) {
  std::vector<float> v(static_cast<size_t>(numel_of(shape)));
  for (auto& x : v) x = static_cast<float>(lo + (hi - lo) * gen.next_uniform());
  return Tensor::from_vector(v, shape);
}

Tensor normalize(const Tensor& x, const std::vector<double>& mean, const std::vector<double>& stdev) {
  if (mean.empty()) return x;
  const int64_t c = x.dim(1);
  std::vector<float> m(static_cast<size_t>(c)), s(static_cast<size_t>(c));
  for (int64_t i = 0; i < c; ++i) {
    m[i] = static_cast<float>(mean.size() == 1 ? mean[0] : mean[i]);
    s[i] = static_cast<float>(stdev.size() == 1 ? stdev[0] : stdev[i]);
  }
  return div(sub(x, Tensor::from_vector(m, {1, c, 1, 1})), Tensor::from_vector(s, {1, c, 1, 1}));
}

// Running statistics from one training-mode batch, then random gamma and beta.
void randomize_batch_norm(Case& c, Generator& gen) {
  bool any = false;
  for (auto& [name, m] : c.model->named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm*>(m.get())) bn->momentum = 1.0, any = true;
  if (!any) return;
  Shape batch{8};
  batch.insert(batch.end(), c.sample.begin(), c.sample.end());
  c.model->train();
  {
    NoGradGuard ng;
    c.model->forward(normalize(uniform(batch, gen), c.mean, c.std));
  }
  for (auto& [name, m] : c.model->named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm*>(m.get())) {
      bn->momentum = 0.1;
      bn->weight.copy_(uniform({bn->num_features}, gen, 0.5, 1.5));
      bn->bias.copy_(uniform({bn->num_features}, gen, -0.2, 0.2));
    }
}

// LayerNorm and GroupNorm gamma/beta, attention biases, class token and position embeddings away from their inits.
void randomize_transformer(Case& c, Generator& gen) {
  for (auto& [name, m] : c.model->named_modules()) {
    if (auto* ln = dynamic_cast<nn::LayerNorm*>(m.get())) {
      ln->weight.copy_(uniform(ln->weight.shape(), gen, 0.5, 1.5));
      ln->bias.copy_(uniform(ln->bias.shape(), gen, -0.3, 0.3));
    } else if (auto* gn = dynamic_cast<nn::GroupNorm*>(m.get()); gn && gn->weight.defined()) {
      gn->weight.copy_(uniform(gn->weight.shape(), gen, 0.5, 1.5));
      gn->bias.copy_(uniform(gn->bias.shape(), gen, -0.3, 0.3));
    } else if (auto* a = dynamic_cast<nn::MultiheadAttention*>(m.get())) {
      a->in_proj_bias.copy_(uniform(a->in_proj_bias.shape(), gen, -0.3, 0.3));
      a->out_proj->bias.copy_(uniform(a->out_proj->bias.shape(), gen, -0.3, 0.3));
    } else if (auto* v = dynamic_cast<nn::models::VisionTransformer*>(m.get())) {
      v->cls_token.copy_(uniform(v->cls_token.shape(), gen, -0.5, 0.5));
      v->pos_embed.copy_(uniform(v->pos_embed.shape(), gen, -0.5, 0.5));
    }
  }
}

std::vector<Case> cases() {
  const std::vector<double> gray_mean{0.2860}, gray_std{0.3530};
  const std::vector<double> rgb_mean{0.4914, 0.4822, 0.4465}, rgb_std{0.2470, 0.2435, 0.2616};
  std::vector<Case> out;
  out.push_back({"mlp", nn::models::mlp(28 * 28, {64, 32}, 10, "relu", 0.3, 1), {1, 28, 28}, gray_mean, gray_std});
  out.push_back({"mlp_gelu", nn::models::mlp(3 * 8 * 8, {16}, 5, "gelu", 0.0, 2), {3, 8, 8}, {}, {}});
  out.push_back({"lenet5", nn::models::lenet5(1, 10, 28, 28, 3), {1, 28, 28}, gray_mean, gray_std});
  out.push_back({"resnet20", nn::models::resnet20(3, 10, 4), {3, 32, 32}, rgb_mean, rgb_std});
  out.push_back({"alexnet_bn", nn::models::alexnet_bn(3, 10, 32, 32, 0.5, 5), {3, 32, 32}, rgb_mean, rgb_std});
  out.push_back({"resnet18", nn::models::resnet18(3, 7, 32, 32, 6), {3, 32, 32}, rgb_mean, rgb_std});
  out.push_back({"resnet50", nn::models::resnet50(3, 10, 32, 32, 7), {3, 32, 32}, rgb_mean, rgb_std});
  out.push_back({"lstm", nn::models::rnn_classifier("lstm", 28, 16, 2, 10, 9), {1, 28, 28}, gray_mean, gray_std});
  out.push_back({"gru", nn::models::rnn_classifier("gru", 2 * 5, 12, 2, 4, 10), {2, 9, 5}, {0.5, 0.4}, {0.2, 0.3}});
  // Average pooling with padding that excludes the pad, adaptive pooling to 2x2, a grouped strided conv.
  Generator gen(8);
  auto pools = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(2, 4, nn::Conv2dOptions::k(3).s(2).p(1).g(2), gen),
      std::make_shared<nn::Tanh>(),
      std::make_shared<nn::AvgPool2d>(3, 2, 1, false),
      std::make_shared<nn::LeakyReLU>(0.1),
      std::make_shared<nn::AdaptiveAvgPool2d>(2, 2),
      std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(16, 3, true, gen),
      std::make_shared<nn::Sigmoid>(),
  });
  out.push_back({"pools", pools, {2, 15, 15}, {0.5}, {0.25}});
  out.push_back({"vgg11_bn", nn::models::vgg_bn(11, 3, 10, 32, 32, 0.5, 11), {3, 32, 32}, rgb_mean, rgb_std});
  // Transposed convolutions: grouped, strided, padded, dilated, with output_padding; then one without bias.
  // 5x5 -> (5-1)*3 - 2*1 + 2*(3-1) + 2 + 1 = 17 -> (17-1)*2 - 2*1 + (4-1) + 1 = 34.
  auto convt = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::ConvTranspose2d>(4, 6, nn::ConvTranspose2dOptions::k(3).s(3).p(1).op(2).d(2).g(2), gen),
      std::make_shared<nn::BatchNorm2d>(6),
      std::make_shared<nn::LeakyReLU>(0.2),
      std::make_shared<nn::ConvTranspose2d>(6, 2, nn::ConvTranspose2dOptions::k(4).s(2).p(1).no_bias(), gen),
  });
  out.push_back({"conv_transpose", convt, {4, 5, 5}, {0.5}, {0.5}});
  // Bidirectional recurrent stacks on [N, T, F]: ONNX direction "bidirectional", two layers each.
  RnnOptions bi;
  bi.num_layers = 2, bi.bidirectional = true, bi.batch_first = true;
  auto bilstm = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::LSTM>(5, 6, bi, gen), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(7 * 12, 4, true, gen)});
  out.push_back({"bilstm", bilstm, {7, 5}, {}, {}});
  auto bigru = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::GRU>(6, 5, bi, gen), std::make_shared<nn::Linear>(10, 3, true, gen),
      std::make_shared<nn::Flatten>()});
  out.push_back({"bigru", bigru, {4, 6}, {}, {}});
  // A DCGAN generator: z [N, 5] -> [N, 3, 8, 8].
  gan::DcganOptions g;
  g.image_size = 8, g.channels = 3, g.latent_dim = 5, g.g_features = 4;
  auto generator = std::make_shared<gan::DcganGenerator>(g, gen);
  out.push_back({"dcgan_generator", generator, {5}, {}, {}});
  // A ViT on 3x8x8 images: 2x2 patches of 4x4, 3 heads of width 4, two pre-norm GELU blocks.
  nn::models::VitOptions v;
  v.in_channels = 3, v.height = v.width = 8, v.num_classes = 5, v.patch_size = 4;
  v.dim = 12, v.depth = 2, v.heads = 3, v.mlp_ratio = 2.0, v.dropout = 0.1, v.seed = 12;
  out.push_back({"vit", nn::models::vit(v), {3, 8, 8}, rgb_mean, rgb_std});
  // Post-norm (PyTorch's default) ReLU encoder layer, 2 heads, on [N, 5, 8].
  nn::TransformerEncoderLayerOptions post;
  post.dim_feedforward = 16, post.dropout = 0.2, post.activation = "relu", post.norm_first = false;
  auto encoder = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::TransformerEncoderLayer>(8, 2, post, gen), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(5 * 8, 3, true, gen)});
  out.push_back({"encoder_post_norm", encoder, {5, 8}, {}, {}});
  // Causal attention, 4 heads of width 2, on [N, 6, 8].
  auto causal = std::make_shared<nn::MultiheadAttention>(8, 4, 0.0, true, gen);
  causal->causal = true;
  auto attn = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      causal, std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(6 * 8, 4, true, gen)});
  out.push_back({"attention_causal", attn, {6, 8}, {}, {}});
  // GroupNorm: 2 groups of 3 channels with parameters, then instance norm (6 groups) without.
  auto groups = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(2, 6, nn::Conv2dOptions::k(3).p(1), gen),
      std::make_shared<nn::GroupNorm>(2, 6),
      std::make_shared<nn::LeakyReLU>(0.2),
      std::make_shared<nn::GroupNorm>(6, 6, 1e-3, false),
      std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(6 * 5 * 5, 3, true, gen)});
  out.push_back({"group_norm", groups, {2, 5, 5}, {0.5}, {0.25}});
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path out = argv[1];
    Generator gen(2024);
    for (Case& c : cases()) {
      randomize_batch_norm(c, gen);
      randomize_transformer(c, gen);
      c.model->eval();
      Shape batch{3};
      batch.insert(batch.end(), c.sample.begin(), c.sample.end());
      Tensor x = uniform(batch, gen);
      Tensor logits;
      {
        NoGradGuard ng;
        logits = c.model->forward(normalize(x, c.mean, c.std)).contiguous();
      }
      const auto dir = out / c.name;
      std::filesystem::create_directories(dir);
      if (auto g = std::dynamic_pointer_cast<gan::DcganGenerator>(c.model)) {
        gan::save_generator_onnx(dir / "model.onnx", *g);
      } else {
        train::OnnxExportOptions o;
        o.sample = c.sample, o.mean = c.mean, o.std = c.std, o.doc = "hpdl ONNX export test: " + c.name;
        train::save_onnx(dir / "model.onnx", *c.model, o);
      }
      auto xv = x.to_vector<float>(), yv = logits.to_vector<float>();
      data::write_npy(dir / "input.npy", DType::f32, x.shape(), xv.data());
      data::write_npy(dir / "logits.npy", DType::f32, logits.shape(), yv.data());
      std::printf("%s: logits %s\n", c.name.c_str(), shape_str(logits.shape()).c_str());
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "onnx_reference: %s\n", e.what());
    return 1;
  }
  return 0;
}
