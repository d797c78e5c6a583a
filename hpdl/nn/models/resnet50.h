// ResNet-50 (He et al. 2016, table 1) and its Bottleneck block: the standard
// ImageNet benchmark network, here mainly for the GPU end-to-end benchmark
// (bench/gpu). Names match torchvision ("layer1.0.conv1.weight" becomes
// "4.0.conv1.weight" here, since the model is a Sequential like the others).
#pragma once

#include "hpdl/nn/layers.h"

namespace hpdl::nn {

// y = relu(bn3(conv3_1x1(relu(bn2(conv2_3x3(relu(bn1(conv1_1x1(x)))))))) +
// shortcut(x)), width = planes, out = 4 * planes, stride on the 3x3 conv
// (torchvision's "ResNet v1.5"). The shortcut is a 1x1 strided conv + BN
// ("downsample.0/1") when stride != 1 or in != out, else the identity. bn3's
// gamma starts at 1 (no zero-init of the last BN, as torchvision's default).
class Bottleneck : public Module {
 public:
  Bottleneck(int64_t in_channels, int64_t planes, int64_t stride = 1, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Bottleneck"; }
  std::shared_ptr<Conv2d> conv1, conv2, conv3;
  std::shared_ptr<BatchNorm2d> bn1, bn2, bn3;
  std::shared_ptr<Sequential> downsample;  // null for the identity shortcut
};

namespace models {

// conv7x7/2 + BN + ReLU + maxpool3x3/2, stages of 3, 4, 6, 3 Bottlenecks
// (planes 64, 128, 256, 512; stride 2 from stage 2), global average pooling,
// fc. 3x224x224, 1000 classes: 25,557,032 parameters (as torchvision).
// Inputs of at least 32x32.
ModulePtr resnet50(int64_t in_channels, int64_t num_classes, int64_t height = 224, int64_t width = 224,
                   uint64_t seed = 0);

}  // namespace models
}  // namespace hpdl::nn
