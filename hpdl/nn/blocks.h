// Composite building blocks shared by the model zoo.
// BasicBlock is the two-layer residual block of ResNet-18/34 and the CIFAR
// ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition").
#pragma once

#include "hpdl/nn/layers.h"

namespace hpdl::nn {

// y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), with 3x3 convs
// (the first one strided), no conv bias (BN follows). The shortcut is the
// identity when stride == 1 and in == out; otherwise a projection, a 1x1
// strided conv + BN (option B of He et al. 2016), registered as
// "downsample.0"/"downsample.1" like torchvision.
// x [N, in, H, W] -> [N, out, ceil(H/stride), ceil(W/stride)].
class BasicBlock : public Module {
 public:
  BasicBlock(int64_t in_channels, int64_t out_channels, int64_t stride = 1, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "BasicBlock"; }
  std::shared_ptr<Conv2d> conv1, conv2;
  std::shared_ptr<BatchNorm2d> bn1, bn2;
  std::shared_ptr<Sequential> downsample;  // null for the identity shortcut
};

}  // namespace hpdl::nn
