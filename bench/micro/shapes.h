// The benchmark shapes, shared by bench_ops.cpp and (copied by hand, checked by
// run.sh's table) torch_peer.py: LeNet-5 and ResNet-20 convolutions and MLP
// layers at batch 128, plus one large square GEMM for the machine's sgemm rate.
#pragma once

#include <cstdint>

namespace hpdl::bench {

struct ConvShape {
  const char* name;
  int64_t N, C, H, W, K, R, S, stride, pad;
};

inline constexpr ConvShape kConvShapes[] = {
    {"lenet_c1", 128, 1, 28, 28, 6, 5, 5, 1, 2},      // 1 -> 6, 5x5 on 28x28, pad 2
    {"lenet_c2", 128, 6, 14, 14, 16, 5, 5, 1, 0},     // 6 -> 16, 5x5 on 14x14
    {"resnet_16", 128, 16, 32, 32, 16, 3, 3, 1, 1},   // stage 1
    {"resnet_32", 128, 32, 16, 16, 32, 3, 3, 1, 1},   // stage 2
    {"resnet_64", 128, 64, 8, 8, 64, 3, 3, 1, 1},     // stage 3
};

struct LinearShape {
  const char* name;
  int64_t B, in, out;
};

inline constexpr LinearShape kLinearShapes[] = {
    {"mlp_784_256", 128, 784, 256},
    {"mlp_256_10", 128, 256, 10},
    {"sq_1024", 1024, 1024, 1024},
};

inline constexpr int64_t kSgemmN = 2048;

}  // namespace hpdl::bench
