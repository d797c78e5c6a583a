// Normalization. batch_norm normalizes x [N, C, ...] per channel; in training
// it uses batch statistics and updates running_mean/running_var in place
// (running = (1-momentum)*running + momentum*batch, unbiased batch variance),
// in eval it uses the running statistics. layer_norm normalizes over the last
// axis. Backward through fused kernels: first-order only.
#pragma once

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps = 1e-5);

}  // namespace hpdl
