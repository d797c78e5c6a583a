// 2-D convolution (cross-correlation, as in every DL framework) and its
// transpose (the "fractionally strided" convolution of generators and decoders).
// Dimension letters: N batch, C input channels, K output channels, H x W input
// size, R x S kernel size, P x Q output size.
#pragma once

#include <cstdint>

#include "hpdl/backend/backend.h"
#include "hpdl/core/tensor.h"

namespace hpdl {

// x [N, C, H, W], w [K, C/groups, R, S], bias [K] or undefined -> y [N, K, P, Q]
// with P = (H + 2*pad_h - dilation_h*(R-1) - 1)/stride_h + 1 (Q likewise).
// Backward uses the backend's fused data/weights kernels, unless the backward
// pass is itself recorded (create_graph): then dx = conv_transpose2d(dy, w),
// dw = conv2d_weight(x, dy), db = sum(dy), all differentiable, so derivatives
// of any order work.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(), const Conv2dParams& p = {});

// Parameters of a transposed convolution, as PyTorch's ConvTranspose2d takes them.
// output_pad_* adds rows/columns at the bottom/right of the output (it picks
// one of the `stride` input sizes a strided conv2d maps to the same size) and
// must be smaller than the stride.
struct ConvTranspose2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t output_pad_h = 0, output_pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
  // Output size along one spatial dim: (in-1)*stride - 2*pad + dil*(k-1) + output_pad + 1.
  static int64_t out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil, int64_t output_pad) {
    return (in - 1) * stride - 2 * pad + dil * (k - 1) + output_pad + 1;
  }
  // The conv2d whose data gradient this transposed convolution is (same stride, padding, dilation, groups).
  Conv2dParams as_conv() const;
};

// Transposed convolution: x [N, C, H, W], w [C, K/groups, R, S] (PyTorch's
// ConvTranspose2d layout: input channels first), bias [K] or undefined ->
// y [N, K, P, Q] with P = ConvTranspose2dParams::out_size(H, R, stride_h, pad_h,
// dilation_h, output_pad_h) (Q likewise). Each input pixel x[n, c, i, j] adds
// x[n, c, i, j] * w[c, k, r, s] to y[n, k, i*stride - pad + r*dilation, j*stride - pad + s*dilation]
// (weights of the k in c's group only).
//
// Built from the conv2d kernels of the backend (oneDNN on CPU, cuDNN on CUDA):
// it is the data gradient of conv2d(y, w) with the same parameters, so
//   y  = conv2d_backward_data(dy = x, w)
//   dx = conv2d_forward(dy_T, w)                          [N, C, H, W]
//   dw = conv2d_backward_weights(input = dy_T, dy = x)    [C, K/groups, R, S]
// where dy_T [N, K, P, Q] is the gradient arriving at y. The bias is added with
// the differentiable broadcast add. The x/w backward runs those fused kernels
// unless it is recorded (create_graph); then dx = conv2d(dy_T, w) and
// dw = conv2d_weight(input = dy_T, output gradient = x), differentiable to any
// order. float32 and float64
// (float64 and odd geometries run on the reference kernels).
// Throws hpdl::Error naming conv_transpose2d and the shapes for: undefined or
// non-4-D x/w, dtype/device mismatch, C != w.dim(0), C not divisible by groups,
// a bias that is not [K], stride, dilation or groups < 1, negative padding,
// output_pad < 0 or >= stride, or an empty output.
Tensor conv_transpose2d(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(),
                        const ConvTranspose2dParams& p = {});

// conv2d's weight gradient as a differentiable op: x [N, C, H, W] and the output
// gradient dy [N, K, P, Q] of conv2d(x, w, p) with w of weight_shape
// [K, C/groups, R, S] -> dw [K, C/groups, R, S],
//   dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] * x[n, group(k)*C/groups + c, p*stride_h - pad_h + r*dil_h, ...].
// Runs the backend's weight-gradient kernel; its own gradients are
// conv_transpose2d(dy, G) for x and conv2d(x, G) for dy (G the gradient of dw).
// Throws hpdl::Error naming conv2d_weight for the checks conv2d makes on (x,
// a weight of weight_shape), a weight_shape that is not 4-D with positive sizes,
// or a dy that is not conv2d's output shape.
Tensor conv2d_weight(const Tensor& x, const Tensor& dy, const Shape& weight_shape, const Conv2dParams& p = {});

// The same transposed convolution as plain scatter loops in double precision
// over contiguous copies (no autograd, no backend): the readable oracle the
// tests compare conv_transpose2d against. Same shapes and checks; returns x's dtype.
Tensor conv_transpose2d_reference(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(),
                                  const ConvTranspose2dParams& p = {});

}  // namespace hpdl
