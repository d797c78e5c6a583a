// Residual blocks (He et al. 2016). Convolution weights use Kaiming normal
// init in fan_out mode for ReLU, as the ResNet paper and torchvision do.
#include "hpdl/nn/blocks.h"

#include "hpdl/nn/init.h"
#include "hpdl/ops/ops.h"

namespace hpdl::nn {

BasicBlock::BasicBlock(int64_t in, int64_t out, int64_t stride, Generator& gen) {
  HPDL_CHECK(stride >= 1, "BasicBlock({}, {}): stride must be >= 1, got {}", in, out, stride);
  conv1 = register_module("conv1", std::make_shared<Conv2d>(in, out, Conv2dOptions::k(3).s(stride).p(1).no_bias(), gen));
  bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(out));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(out, out, Conv2dOptions::k(3).p(1).no_bias(), gen));
  bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(out));
  init::kaiming_normal_(conv1->weight, gen, 0.0, init::FanMode::fan_out, "relu");
  init::kaiming_normal_(conv2->weight, gen, 0.0, init::FanMode::fan_out, "relu");
  if (stride != 1 || in != out) {
    auto proj = std::make_shared<Conv2d>(in, out, Conv2dOptions::k(1).s(stride).no_bias(), gen);
    init::kaiming_normal_(proj->weight, gen, 0.0, init::FanMode::fan_out, "relu");
    downsample = register_module("downsample", std::make_shared<Sequential>(
                                                   std::initializer_list<ModulePtr>{proj, std::make_shared<BatchNorm2d>(out)}));
  }
}

Tensor BasicBlock::forward(const Tensor& x) {
  Tensor h = bn1->forward_relu(conv1->forward(x));
  Tensor shortcut = downsample ? downsample->forward(x) : x;
  return bn2->forward_add_relu(conv2->forward(h), shortcut);
}

}  // namespace hpdl::nn
