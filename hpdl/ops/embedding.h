// Embedding lookup: weight [V, D], indices int64 of any shape -> [..., D].
// The gradient scatters (adds) rows back into a [V, D] tensor.
#pragma once

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor embedding(const Tensor& weight, const Tensor& indices);
// Rows of x along axis 0 picked by int64 `index`; differentiable in x.
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index);
// The adjoint of index_select: zeros(shape) with out[..., index[i], ...] +=
// src[..., i, ...] along `axis` (repeated indices add up). index int64 [L], src
// shaped like `shape` except L at axis. Differentiable in src (its gradient is
// index_select). Throws naming the op when the shapes do not fit.
Tensor index_add_into_zeros(const Shape& shape, int64_t axis, const Tensor& index, const Tensor& src);

}  // namespace hpdl
