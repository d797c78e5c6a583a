// Reductions along axes. `axes` empty means all axes. keepdim keeps reduced
// axes as size 1. sum, mean, max, min are differentiable (max/min route the
// gradient to every position equal to the extremum, split evenly).
#pragma once

#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
Tensor max(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
Tensor min(const Tensor& x, const std::vector<int64_t>& axes = {}, bool keepdim = false);
// int64 indices of the first maximum along one axis; not differentiable.
Tensor argmax(const Tensor& x, int64_t axis, bool keepdim = false);
// Sum of squares of all elements (a scalar); differentiable. Used by norms and clipping.
Tensor sum_square(const Tensor& x);

}  // namespace hpdl
