// Model zoo implementations. Every model is a Sequential of layers and
// blocks, so state-dict names are positional ("0.weight", "3.1.conv2.weight")
// and stable. Shapes are computed up front to size the classifier and to
// reject inputs that would shrink to nothing.
#include "hpdl/nn/models/models.h"

#include <fmt/format.h>

#include <algorithm>

#include "hpdl/nn/blocks.h"
#include "hpdl/nn/init.h"
#include "hpdl/nn/models/resnet50.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/nn/rnn.h"

namespace hpdl::nn::models {

namespace {

void check_common(const char* model, int64_t in_channels, int64_t num_classes) {
  HPDL_CHECK(in_channels > 0, "{}: in_channels must be > 0, got {}", model, in_channels);
  HPDL_CHECK(num_classes > 0, "{}: num_classes must be > 0, got {}", model, num_classes);
}

int64_t pooled(int64_t n, int64_t k, int64_t s, int64_t p = 0) { return (n + 2 * p - k) / s + 1; }

}  // namespace

ModulePtr mlp(int64_t in_features, const std::vector<int64_t>& hidden, int64_t num_classes,
              const std::string& activation, double dropout, uint64_t seed) {
  check_common("mlp", in_features, num_classes);
  Generator gen(seed);
  auto net = std::make_shared<Sequential>();
  net->push_back(std::make_shared<Flatten>());
  int64_t width = in_features;
  for (size_t i = 0; i < hidden.size(); ++i) {
    HPDL_CHECK(hidden[i] > 0, "mlp: hidden size {} is {}, must be > 0", i, hidden[i]);
    net->push_back(std::make_shared<Linear>(width, hidden[i], true, gen));
    net->push_back(make_activation(activation));
    if (dropout > 0) net->push_back(std::make_shared<Dropout>(dropout, seed + 1 + i));
    width = hidden[i];
  }
  net->push_back(std::make_shared<Linear>(width, num_classes, true, gen));
  return net;
}

ModulePtr lenet5(int64_t in_channels, int64_t num_classes, int64_t height, int64_t width, uint64_t seed) {
  check_common("lenet5", in_channels, num_classes);
  // 5x5 pad 2 keeps HxW; pool halves; 5x5 valid removes 4; pool halves.
  const int64_t h = (height / 2 - 4) / 2, w = (width / 2 - 4) / 2;
  HPDL_CHECK(height / 2 >= 6 && width / 2 >= 6 && h >= 1 && w >= 1,
             "lenet5: input {}x{} is too small (need at least 12x12)", height, width);
  Generator gen(seed);
  return std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
      std::make_shared<Conv2d>(in_channels, 6, Conv2dOptions::k(5).p(2), gen),
      std::make_shared<ReLU>(),
      std::make_shared<MaxPool2d>(2),
      std::make_shared<Conv2d>(6, 16, Conv2dOptions::k(5), gen),
      std::make_shared<ReLU>(),
      std::make_shared<MaxPool2d>(2),
      std::make_shared<Flatten>(),
      std::make_shared<Linear>(16 * h * w, 120, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<Linear>(120, 84, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<Linear>(84, num_classes, true, gen),
  });
}

namespace {

// A stage of `blocks` BasicBlocks; the first may stride and change channels.
ModulePtr resnet_stage(int64_t in, int64_t out, int64_t blocks, int64_t stride, Generator& gen) {
  auto stage = std::make_shared<Sequential>();
  stage->push_back(std::make_shared<BasicBlock>(in, out, stride, gen));
  for (int64_t i = 1; i < blocks; ++i) stage->push_back(std::make_shared<BasicBlock>(out, out, 1, gen));
  return stage;
}

std::shared_ptr<Conv2d> stem_conv(int64_t in, int64_t out, const Conv2dOptions& o, Generator& gen) {
  auto conv = std::make_shared<Conv2d>(in, out, o, gen);
  init::kaiming_normal_(conv->weight, gen, 0.0, init::FanMode::fan_out, "relu");
  return conv;
}

}  // namespace

ModulePtr resnet20(int64_t in_channels, int64_t num_classes, uint64_t seed) {
  check_common("resnet20", in_channels, num_classes);
  Generator gen(seed);
  return std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
      stem_conv(in_channels, 16, Conv2dOptions::k(3).p(1).no_bias(), gen),
      std::make_shared<BatchNorm2d>(16),
      std::make_shared<ReLU>(),
      resnet_stage(16, 16, 3, 1, gen),
      resnet_stage(16, 32, 3, 2, gen),
      resnet_stage(32, 64, 3, 2, gen),
      std::make_shared<AdaptiveAvgPool2d>(1, 1),
      std::make_shared<Flatten>(),
      std::make_shared<Linear>(64, num_classes, true, gen),
  });
}

ModulePtr resnet18(int64_t in_channels, int64_t num_classes, int64_t height, int64_t width, uint64_t seed) {
  check_common("resnet18", in_channels, num_classes);
  HPDL_CHECK(height >= 8 && width >= 8, "resnet18: input {}x{} is too small (need at least 8x8)", height, width);
  Generator gen(seed);
  auto net = std::make_shared<Sequential>();
  if (height > 64 || width > 64) {
    net->push_back(stem_conv(in_channels, 64, Conv2dOptions::k(7).s(2).p(3).no_bias(), gen));
    net->push_back(std::make_shared<BatchNorm2d>(64));
    net->push_back(std::make_shared<ReLU>());
    net->push_back(std::make_shared<MaxPool2d>(3, 2, 1));
  } else {
    net->push_back(stem_conv(in_channels, 64, Conv2dOptions::k(3).p(1).no_bias(), gen));
    net->push_back(std::make_shared<BatchNorm2d>(64));
    net->push_back(std::make_shared<ReLU>());
  }
  net->push_back(resnet_stage(64, 64, 2, 1, gen));
  net->push_back(resnet_stage(64, 128, 2, 2, gen));
  net->push_back(resnet_stage(128, 256, 2, 2, gen));
  net->push_back(resnet_stage(256, 512, 2, 2, gen));
  net->push_back(std::make_shared<AdaptiveAvgPool2d>(1, 1));
  net->push_back(std::make_shared<Flatten>());
  net->push_back(std::make_shared<Linear>(512, num_classes, true, gen));
  return net;
}

ModulePtr alexnet_bn(int64_t in_channels, int64_t num_classes, int64_t height, int64_t width, double dropout,
                     uint64_t seed) {
  check_common("alexnet_bn", in_channels, num_classes);
  const int64_t h = pooled(pooled(pooled(height, 2, 2), 2, 2), 2, 2);
  const int64_t w = pooled(pooled(pooled(width, 2, 2), 2, 2), 2, 2);
  HPDL_CHECK(h >= 1 && w >= 1, "alexnet_bn: input {}x{} is too small (need at least 8x8)", height, width);
  Generator gen(seed);
  auto net = std::make_shared<Sequential>();
  auto conv_bn_relu = [&](int64_t in, int64_t out) {
    net->push_back(std::make_shared<Conv2d>(in, out, Conv2dOptions::k(3).p(1).no_bias(), gen));
    net->push_back(std::make_shared<BatchNorm2d>(out));
    net->push_back(std::make_shared<ReLU>());
  };
  conv_bn_relu(in_channels, 64);
  net->push_back(std::make_shared<MaxPool2d>(2));
  conv_bn_relu(64, 128);
  net->push_back(std::make_shared<MaxPool2d>(2));
  conv_bn_relu(128, 256);
  conv_bn_relu(256, 256);
  conv_bn_relu(256, 128);
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Flatten>());
  int64_t width_in = 128 * h * w;
  for (int i = 0; i < 2; ++i) {
    net->push_back(std::make_shared<Linear>(width_in, 512, false, gen));
    net->push_back(std::make_shared<BatchNorm1d>(512));
    net->push_back(std::make_shared<ReLU>());
    if (dropout > 0) net->push_back(std::make_shared<Dropout>(dropout, seed + 1 + static_cast<uint64_t>(i)));
    width_in = 512;
  }
  net->push_back(std::make_shared<Linear>(512, num_classes, true, gen));
  return net;
}

ModulePtr vgg_bn(int64_t depth, int64_t in_channels, int64_t num_classes, int64_t height, int64_t width, double dropout,
                 uint64_t seed) {
  const std::string name = fmt::format("vgg{}_bn", depth);
  check_common(name.c_str(), in_channels, num_classes);
  // Simonyan and Zisserman 2015, table 1, configurations A, B, D, E: conv3x3 widths, 0 = max pooling.
  std::vector<int64_t> plan;
  if (depth == 11) plan = {64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0};
  else if (depth == 13) plan = {64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0};
  else if (depth == 16) plan = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
  else if (depth == 19) plan = {64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0};
  else HPDL_FAIL("vgg_bn: depth must be 11, 13, 16 or 19, got {}", depth);
  HPDL_CHECK(height >= 8 && width >= 8, "{}: input {}x{} is too small (need at least 8x8)", name, height, width);
  Generator gen(seed);
  auto net = std::make_shared<Sequential>();
  int64_t c = in_channels, h = height, w = width;
  for (int64_t v : plan) {
    if (v == 0) {
      if (h < 2 || w < 2) continue;  // small inputs: no pooling below 1x1 (28x28 pools four times)
      net->push_back(std::make_shared<MaxPool2d>(2));
      h = pooled(h, 2, 2), w = pooled(w, 2, 2);
      continue;
    }
    net->push_back(std::make_shared<Conv2d>(c, v, Conv2dOptions::k(3).p(1), gen));
    net->push_back(std::make_shared<BatchNorm2d>(v));
    net->push_back(std::make_shared<ReLU>());
    c = v;
  }
  if (height > 64 || width > 64) {
    // The ImageNet classifier: 7x7x512 -> 4096 -> 4096 -> classes, dropout after each hidden layer.
    net->push_back(std::make_shared<AdaptiveAvgPool2d>(7, 7));
    net->push_back(std::make_shared<Flatten>());
    int64_t in = 512 * 7 * 7;
    for (int i = 0; i < 2; ++i) {
      net->push_back(std::make_shared<Linear>(in, 4096, true, gen));
      net->push_back(std::make_shared<ReLU>());
      if (dropout > 0) net->push_back(std::make_shared<Dropout>(dropout, seed + 1 + static_cast<uint64_t>(i)));
      in = 4096;
    }
    net->push_back(std::make_shared<Linear>(4096, num_classes, true, gen));
  } else {
    // Small inputs (CIFAR, Fashion-MNIST): global average pooling and one fc, the usual adaptation.
    net->push_back(std::make_shared<AdaptiveAvgPool2d>(1, 1));
    net->push_back(std::make_shared<Flatten>());
    net->push_back(std::make_shared<Linear>(512, num_classes, true, gen));
  }
  return net;
}

RnnClassifier::RnnClassifier(const std::string& cell, int64_t in_features, int64_t hidden, int64_t num_layers,
                             int64_t classes, Generator& gen)
    : in_features(in_features), num_layers(num_layers) {
  RnnOptions o;
  o.num_layers = num_layers;
  o.batch_first = true;
  if (cell == "lstm")
    rnn = register_module("rnn", std::make_shared<LSTM>(in_features, hidden, o, gen));
  else
    rnn = register_module("rnn", std::make_shared<GRU>(in_features, hidden, o, gen));
  fc = register_module("fc", std::make_shared<Linear>(hidden, classes, true, gen));
}

Tensor RnnClassifier::forward(const Tensor& x) {
  Tensor seq = x;
  if (x.ndim() == 4)  // [N, C, H, W] -> [N, H, C*W]: one row per timestep
    seq = x.permute({0, 2, 1, 3}).reshape({x.dim(0), x.dim(2), x.dim(1) * x.dim(3)});
  HPDL_CHECK(seq.ndim() == 3 && seq.dim(2) == in_features,
             "{}_classifier: input {} must be [N, C, H, W] with C*W = {} or [N, T, {}]", rnn->type_name(),
             shape_str(x.shape()), in_features, in_features);
  Tensor h_n = rnn->forward_state(seq).h_n;  // [L, N, H]
  return fc->forward(h_n.select(0, num_layers - 1));
}

ModulePtr rnn_classifier(const std::string& cell, int64_t in_features, int64_t hidden, int64_t num_layers,
                         int64_t num_classes, uint64_t seed) {
  check_common(cell.c_str(), in_features, num_classes);
  HPDL_CHECK(cell == "lstm" || cell == "gru", "rnn_classifier: cell must be \"lstm\" or \"gru\", got \"{}\"", cell);
  HPDL_CHECK(hidden > 0 && num_layers > 0, "{}: hidden size ({}) and number of layers ({}) must be > 0", cell, hidden,
             num_layers);
  Generator gen(seed);
  return std::make_shared<RnnClassifier>(cell, in_features, hidden, num_layers, num_classes, gen);
}

std::vector<std::string> model_names() {
  return {"mlp", "lenet5", "resnet20", "resnet18", "resnet50", "alexnet_bn", "vgg11_bn", "vgg16_bn", "lstm", "gru", "vit"};
}

ModulePtr make_model(const std::string& name, const ModelConfig& c) {
  HPDL_CHECK(c.height > 0 && c.width > 0, "make_model({}): height and width must be > 0, got {}x{}", name, c.height,
             c.width);
  if (name == "mlp")
    return mlp(c.in_channels * c.height * c.width, c.hidden, c.num_classes, c.activation, std::max(c.dropout, 0.0),
               c.seed);
  if (name == "lenet5") return lenet5(c.in_channels, c.num_classes, c.height, c.width, c.seed);
  if (name == "resnet20") return resnet20(c.in_channels, c.num_classes, c.seed);
  if (name == "resnet18") return resnet18(c.in_channels, c.num_classes, c.height, c.width, c.seed);
  if (name == "resnet50") return resnet50(c.in_channels, c.num_classes, c.height, c.width, c.seed);
  if (name == "alexnet_bn")
    return alexnet_bn(c.in_channels, c.num_classes, c.height, c.width, c.dropout >= 0 ? c.dropout : 0.5, c.seed);
  if (name == "vgg11_bn" || name == "vgg16_bn")
    return vgg_bn(name == "vgg11_bn" ? 11 : 16, c.in_channels, c.num_classes, c.height, c.width,
                  c.dropout >= 0 ? c.dropout : 0.5, c.seed);
  if (name == "lstm" || name == "gru") {
    HPDL_CHECK(!c.hidden.empty() && std::all_of(c.hidden.begin(), c.hidden.end(), [&](int64_t h) { return h == c.hidden[0]; }),
               "make_model({}): model.hidden must list one size per layer, all equal (e.g. [128]), got {} sizes", name,
               c.hidden.size());
    return rnn_classifier(name, c.in_channels * c.width, c.hidden[0], static_cast<int64_t>(c.hidden.size()),
                          c.num_classes, c.seed);
  }
  if (name == "vit") {
    VitOptions o;
    o.in_channels = c.in_channels, o.height = c.height, o.width = c.width, o.num_classes = c.num_classes;
    o.patch_size = c.patch_size, o.dim = c.dim, o.depth = c.depth, o.heads = c.heads, o.mlp_ratio = c.mlp_ratio;
    o.dropout = std::max(c.dropout, 0.0);
    o.seed = c.seed;
    return vit(o);
  }
  std::string known;
  for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
  HPDL_FAIL("unknown model '{}' (known: {})", name, known);
}

}  // namespace hpdl::nn::models
