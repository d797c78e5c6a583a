// 2-D convolution (cross-correlation, as in every DL framework).
// x [N, C, H, W], w [K, C/groups, R, S], bias [K] or undefined -> y [N, K, P, Q]
// with P = (H + 2*pad_h - dilation_h*(R-1) - 1)/stride_h + 1 (Q likewise).
// Backward uses the backend's fused data/weights kernels: first-order only.
#pragma once

#include "hpdl/backend/backend.h"
#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor(), const Conv2dParams& p = {});

}  // namespace hpdl
