// Matrix products. matmul: [M, K] @ [K, N] -> [M, N]; with a leading batch dim
// on either side ([B, M, K] @ [B or 1, K, N], or a 2-D operand broadcast over
// the batch) it is a batched product. linear: y = x @ w^T + b with x [..., in],
// w [out, in], b [out] (optional), as in nn.Linear.
#pragma once

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor matmul(const Tensor& a, const Tensor& b);
Tensor bmm(const Tensor& a, const Tensor& b);  // both [B, ., .]
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

}  // namespace hpdl
