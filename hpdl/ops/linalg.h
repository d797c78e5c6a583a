// Matrix products. matmul: [M, K] @ [K, N] -> [M, N]; with leading batch dims
// on either side ([..., M, K] @ [..., K, N]) it is a batched product over the
// batch dims broadcast NumPy-style (a 2-D operand, or batch dims of size 1,
// broadcast over the other's), as torch.matmul for operands of rank >= 2:
// [B, H, T, D] @ [B, H, D, S] -> [B, H, T, S]. Transposed views of row-major
// tensors are read in place; throws naming both shapes when the inner dims
// differ or the batch dims do not broadcast. linear: y = x @ w^T + b with x [..., in],
// w [out, in], b [out] (optional), as in nn.Linear.
#pragma once

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor matmul(const Tensor& a, const Tensor& b);
Tensor bmm(const Tensor& a, const Tensor& b);  // both [B, ., .]
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

}  // namespace hpdl
