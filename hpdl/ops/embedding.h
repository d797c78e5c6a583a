// Embedding lookup: weight [V, D], indices int64 of any shape -> [..., D].
// The gradient scatters (adds) rows back into a [V, D] tensor.
#pragma once

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor embedding(const Tensor& weight, const Tensor& indices);
// Rows of x along axis 0 picked by int64 `index`; differentiable in x.
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index);

}  // namespace hpdl
