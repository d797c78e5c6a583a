// Direct convolution for few input channels (a network's first layer: gray or
// RGB images), stride 1, no dilation, no groups, float32, plain NCHW.
//
// oneDNN handles these shapes poorly: its backward-weights kernel pads the
// input channels to its 8-wide blocks (8x the work for a 1-channel input) and
// reorders x and dy for it, and its forward writes a blocked output that is
// reordered back. Measured for LeNet-5's conv1 ([128, 1, 28, 28], 6 filters
// 5x5, pad 2) on 2 AVX2 threads: 1.4 ms forward, 4.9 ms backward weights, more
// than half of a LeNet-5 training step. These loops work on zero-padded
// planes, vectorized along output rows, with several output channels (forward)
// or filter columns (backward) per loaded input vector.
#pragma once

#include "hpdl/backend/backend.h"

namespace hpdl::cpu {

// Whether the direct loops can compute this convolution (x [N, C, H, W], w [K, C, R, S]): no
// dilation, no groups, padding below the filter size, and either stride 1 with C <= 4 and filters
// up to 7x7, or a stride with C * stride_h * stride_w <= 4 and ceil(R / stride_h) x ceil(S / stride_w)
// up to 7x7: a strided convolution runs as the stride-1 one of the space-to-depth input (C * stride_h
// * stride_w channels, one per phase of the stride; see direct_conv.cpp), the same multiply-adds.
bool direct_conv_applies(const Shape& x, const Shape& w, const Conv2dParams& p);
// Whether they are the faster choice on the CPU (2 AVX2 threads, [128, C, 28-32, 28-32], 3x3 and
// 5x5): the forward for one input channel (1.5x oneDNN; for C = 3 oneDNN is 1.8x faster), the
// backward weights for one input channel or up to 16 filters (1.3-6x; for C = 3 and 32 or more
// filters they tie). Strided (one thread, DCGAN's [64, 1, 28, 28], 64 filters 4x4, stride 2): only
// the backward weights (1.9x oneDNN, which pads the channel to 8); forward and backward data stay
// on oneDNN (2-4x faster there).
bool direct_conv_forward_preferred(const Shape& x, const Shape& w, const Conv2dParams& p);
bool direct_conv_backward_weights_preferred(const Shape& x, const Shape& w, const Conv2dParams& p);
// The input gradient for one input channel (the gradient of a network's input, as saliency maps and
// physics-informed losses take it; oneDNN pads that one channel to 8 here too).
bool direct_conv_backward_data_preferred(const Shape& x, const Shape& w, const Conv2dParams& p);
// y = conv(x, w) + bias (bias may be undefined); all contiguous float32.
void direct_conv_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                         const Conv2dParams& p);
// dw (and db when defined) from x and dy. Summed over the batch in fixed chunks of images
// combined in a fixed order: the result does not depend on the number of threads.
void direct_conv_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                                  const Conv2dParams& p);
// dx from dy and w: the forward loops on dy with the filters transposed (C <-> K) and flipped, and
// padding kernel - 1 - pad.
void direct_conv_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p);

}  // namespace hpdl::cpu
