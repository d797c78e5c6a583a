// Mixed precision for a region of code, in the manner of torch.autocast.
// Inside an AutocastScope(DType::bf16), conv2d, linear and matmul on float32
// tensors of a device whose backend computes in bfloat16 (CUDA) cast their
// operands to bfloat16 with differentiable casts and return bfloat16. The ops
// that follow then stay in bfloat16 (relu, add, pooling, batch norm with
// float32 statistics and parameters), so activations and their gradients move
// half the bytes; losses compute in float32 (cross_entropy, log_softmax and
// mse_loss widen a bfloat16 input). The float32 parameters stay the master
// weights: the cast's backward returns their gradients in float32.
//
// The scope is per thread and only changes what ops do when they are called;
// backward closures keep the casted tensors they saw, so backward needs no
// scope.
//
// CPU tensors are never cast (design decision 69): conv2d, conv_transpose2d,
// conv2d_weight, linear and matmul on float32 CPU tensors run their oneDNN
// kernels inside a CpuComputeScope(bf16) (hpdl/backend/compute_scope.h), which
// read the operands as bfloat16 and accumulate and write float32; their
// backward closures remember this and compute the gradients the same way.
// Every other CPU op computes in float32. Needs AVX512_BF16 or AMX
// (cpu::onednn_bf16_supported()); elsewhere those ops throw an Error naming the ISA.
#pragma once

#include "hpdl/core/tensor.h"

namespace hpdl {

class AutocastScope {
 public:
  // dtype: DType::bf16, or DType::f32 for a scope that turns autocast off.
  explicit AutocastScope(DType dtype, bool enabled = true);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  DType previous_;
};

// The reduced dtype in effect on this thread (DType::f32 when autocast is off).
DType autocast_dtype();

// True when `t` is a float32 tensor that autocast ops should cast: autocast is
// on and t lives on a device that computes in the autocast dtype.
bool autocast_applies(const Tensor& t);
// t cast to the autocast dtype when autocast_applies(t), else t itself
// (undefined stays undefined). 4-D tensors (convolution inputs and filters)
// come out channels-last (NHWC), the layout cuDNN's tensor-core kernels read;
// the ops that follow keep it, so activations stay NHWC through the network.
Tensor autocast_cast(const Tensor& t);

// Whether autocast lays 4-D tensors out channels-last (default true; process-wide).
void set_autocast_channels_last(bool on);
bool autocast_channels_last();

// Channels-last (NHWC) activations on the CPU (default false; process-wide;
// `train.channels_last`). When on and the CPU backend reads NHWC
// (Backend::reads_channels_last: oneDNN), float32 convolutions take their
// input channels-last and write channels-last outputs, and the ops after them
// (batch norm, pooling, elementwise) keep that layout, so oneDNN's NHWC
// kernels run without reordering every activation into its blocked layout
// and back (design decision 75). Filters stay row-major. Results equal the
// row-major path's up to float rounding.
void set_cpu_channels_last(bool on);
bool cpu_channels_last();

}  // namespace hpdl
