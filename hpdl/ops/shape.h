// Joining and splitting. cat joins along an existing axis, stack along a new
// one; split/chunk return views. All differentiable. (The view methods reshape,
// permute, transpose, slice, expand, squeeze, unsqueeze are on Tensor itself.)
#pragma once

#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor cat(const std::vector<Tensor>& tensors, int64_t axis = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t axis = 0);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis = 0);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t axis = 0);

}  // namespace hpdl
