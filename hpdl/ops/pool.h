// 2-D pooling over x [N, C, H, W]. Backward through the backend's fused
// kernels; when the backward is recorded (create_graph) it is written with
// differentiable ops instead (max: a scatter of dy to each window's first
// maximum; avg: linear in dy), so higher derivatives work.
#pragma once

#include "hpdl/backend/backend.h"
#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor max_pool2d(const Tensor& x, const Pool2dParams& p);
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p);
// Average pooling to a fixed output size (PyTorch's adaptive bins:
// start = floor(i*H/P), end = ceil((i+1)*H/P)).
Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w);

}  // namespace hpdl
