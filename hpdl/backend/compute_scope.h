// CPU mixed precision (design decision 69). Within a CpuComputeScope(DType::bf16)
// the CPU backend's convolutions (forward, backward data, backward weights) and
// matrix products on float32 tensors round their operands (activations, weights,
// output gradients) to bfloat16 inside the oneDNN primitive and accumulate in
// float32: tensors stay float32 in and out. The direct few-channel
// convolutions (hpdl/backend/cpu/direct_conv.h), the reference kernels and
// float64 stay exact. Per thread; the ops layer sets it from the autocast dtype
// (hpdl/ops/autocast.h) around its kernel calls, the backend only reads it.
#pragma once

#include "hpdl/core/dtype.h"

namespace hpdl {

class CpuComputeScope {
 public:
  // dtype: DType::bf16, or DType::f32 (plain float32); `enabled` false changes nothing.
  explicit CpuComputeScope(DType dtype, bool enabled = true);
  ~CpuComputeScope();
  CpuComputeScope(const CpuComputeScope&) = delete;
  CpuComputeScope& operator=(const CpuComputeScope&) = delete;

 private:
  DType previous_;
};

// The operand dtype of the CPU backend's convolutions and matrix products on this thread.
DType cpu_compute_dtype();

}  // namespace hpdl
