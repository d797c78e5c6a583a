// ResNet-50 with Bottleneck blocks. Convolution weights use Kaiming normal
// init (fan_out, ReLU) like BasicBlock; the classifier keeps Linear's default.
#include "hpdl/nn/models/resnet50.h"

#include "hpdl/nn/init.h"
#include "hpdl/ops/ops.h"

namespace hpdl::nn {

namespace {

std::shared_ptr<Conv2d> kaiming_conv(int64_t in, int64_t out, const Conv2dOptions& o, Generator& gen) {
  auto conv = std::make_shared<Conv2d>(in, out, o, gen);
  init::kaiming_normal_(conv->weight, gen, 0.0, init::FanMode::fan_out, "relu");
  return conv;
}

}  // namespace

Bottleneck::Bottleneck(int64_t in, int64_t planes, int64_t stride, Generator& gen) {
  HPDL_CHECK(in > 0 && planes > 0 && stride >= 1, "Bottleneck({}, {}, stride {}): need positive sizes and stride", in,
             planes, stride);
  const int64_t out = 4 * planes;
  conv1 = register_module("conv1", kaiming_conv(in, planes, Conv2dOptions::k(1).no_bias(), gen));
  bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(planes));
  conv2 = register_module("conv2", kaiming_conv(planes, planes, Conv2dOptions::k(3).s(stride).p(1).no_bias(), gen));
  bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(planes));
  conv3 = register_module("conv3", kaiming_conv(planes, out, Conv2dOptions::k(1).no_bias(), gen));
  bn3 = register_module("bn3", std::make_shared<BatchNorm2d>(out));
  if (stride != 1 || in != out) {
    downsample = register_module("downsample", std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
                                                   kaiming_conv(in, out, Conv2dOptions::k(1).s(stride).no_bias(), gen),
                                                   std::make_shared<BatchNorm2d>(out)}));
  }
}

Tensor Bottleneck::forward(const Tensor& x) {
  Tensor h = bn1->forward_relu(conv1->forward(x));
  h = bn2->forward_relu(conv2->forward(h));
  Tensor shortcut = downsample ? downsample->forward(x) : x;
  return bn3->forward_add_relu(conv3->forward(h), shortcut);
}

namespace models {

ModulePtr resnet50(int64_t in_channels, int64_t num_classes, int64_t height, int64_t width, uint64_t seed) {
  HPDL_CHECK(in_channels > 0 && num_classes > 0, "resnet50: in_channels and num_classes must be > 0, got {} and {}",
             in_channels, num_classes);
  HPDL_CHECK(height >= 32 && width >= 32, "resnet50: input {}x{} is too small (need at least 32x32)", height, width);
  Generator gen(seed);
  auto net = std::make_shared<Sequential>();
  net->push_back(kaiming_conv(in_channels, 64, Conv2dOptions::k(7).s(2).p(3).no_bias(), gen));
  net->push_back(std::make_shared<BatchNorm2d>(64));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(3, 2, 1));
  int64_t in = 64;
  const int64_t blocks[4] = {3, 4, 6, 3};
  for (int s = 0; s < 4; ++s) {
    const int64_t planes = 64LL << s;
    auto stage = std::make_shared<Sequential>();
    for (int64_t b = 0; b < blocks[s]; ++b) {
      stage->push_back(std::make_shared<Bottleneck>(in, planes, (b == 0 && s > 0) ? 2 : 1, gen));
      in = 4 * planes;
    }
    net->push_back(stage);
  }
  net->push_back(std::make_shared<AdaptiveAvgPool2d>(1, 1));
  net->push_back(std::make_shared<Flatten>());
  net->push_back(std::make_shared<Linear>(in, num_classes, true, gen));
  return net;
}

}  // namespace models
}  // namespace hpdl::nn
