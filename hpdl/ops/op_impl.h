// Private helpers shared by the op implementations: argument checks that name
// the op, output allocation, and backend choice (the device's backend, or the
// reference kernels on CPU for dtypes the fast backend lacks).
#pragma once

#include "hpdl/autograd/node.h"
#include "hpdl/backend/backend.h"
#include "hpdl/backend/compute_scope.h"
#include "hpdl/core/tensor.h"
#include "hpdl/ops/autocast.h"

namespace hpdl::detail {

inline void check_defined(const Tensor& t, const char* op, const char* what) {
  HPDL_CHECK(t.defined(), "{}: {} is an undefined tensor", op, what);
}

inline void check_same(const Tensor& a, const Tensor& b, const char* op) {
  HPDL_CHECK(a.dtype() == b.dtype(), "{}: dtype mismatch, {} {} vs {} {}", op, dtype_name(a.dtype()),
             shape_str(a.shape()), dtype_name(b.dtype()), shape_str(b.shape()));
  HPDL_CHECK(a.device() == b.device(), "{}: device mismatch, {} on {} vs {} on {}", op, shape_str(a.shape()),
             a.device().str(), shape_str(b.shape()), b.device().str());
}

// float32 and float64 everywhere; bfloat16 on devices that compute in it
// (CUDA; on the CPU bfloat16 is a storage type).
inline void check_float(const Tensor& t, const char* op) {
  HPDL_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64 || (t.dtype() == DType::bf16 && !t.device().is_cpu()),
             "{}: unsupported dtype {} on {} (expected float32 or float64{}; convert with .to(DType::f32))", op,
             dtype_name(t.dtype()), t.device().str(), t.device().is_cpu() ? "" : " or bfloat16");
}

// The wider of two float dtypes (float64 > float32 > bfloat16).
inline DType promote_types(DType a, DType b) {
  auto rank = [](DType t) { return t == DType::f64 ? 2 : t == DType::f32 ? 1 : 0; };
  return rank(a) >= rank(b) ? a : b;
}

inline void check_ndim(const Tensor& t, int nd, const char* op, const char* what) {
  HPDL_CHECK(t.ndim() == nd, "{}: {} must have {} dims, got shape {}", op, what, nd, shape_str(t.shape()));
}

// CPU mixed precision (design decision 69): the dtype the CPU kernels of conv2d,
// conv_transpose2d, conv2d_weight, linear and matmul round the operands of `t`
// to, set around the kernel call with a CpuComputeScope: the autocast dtype for
// a float32 CPU tensor, else float32 (float64 is never rounded; CUDA casts its
// operands instead, autocast_cast). Backward closures keep it and compute their
// gradients the same way, since backward runs outside the autocast scope.
inline DType autocast_cpu_compute(const Tensor& t) {
  return t.defined() && t.dtype() == DType::f32 && t.device().is_cpu() ? autocast_dtype() : DType::f32;
}

// The backend to run `kind` on for tensors like `t`.
inline Backend& pick(const Tensor& t, OpKind kind) {
  Backend& b = backend_for(t.device());
  if (b.supports(kind, t.dtype())) return b;
  if (t.device().is_cpu() && reference_backend().supports(kind, t.dtype())) return reference_backend();
  HPDL_FAIL("backend {} does not support this op (kind {}) for dtype {}", b.name(), static_cast<int>(kind),
            dtype_name(t.dtype()));
}

// Channels-last (NHWC) activations are kept as they are on devices whose
// backend reads them: CUDA (autocast makes them), the CPU with
// cpu_channels_last() (oneDNN); elsewhere the CPU backends get row-major.
inline bool keeps_channels_last(const Tensor& t) {
  return !t.is_contiguous() && t.is_channels_last() && (t.device().is_cuda() || cpu_channels_last());
}

// A new tensor shaped like t, channels-last when t is kept so (keeps_channels_last), else row-major.
inline Tensor empty_like(const Tensor& t) {
  return keeps_channels_last(t) ? Tensor::empty_channels_last(t.shape(), t.dtype(), t.device())
                                : Tensor::empty(t.shape(), t.dtype(), t.device());
}
inline Tensor empty_like_layout(const Shape& shape, DType dtype, const Tensor& layout_of) {
  return keeps_channels_last(layout_of) && shape.size() == 4 ? Tensor::empty_channels_last(shape, dtype, layout_of.device())
                                                              : Tensor::empty(shape, dtype, layout_of.device());
}

// t dense for a backend: itself when row-major or kept channels-last, else a row-major copy.
inline Tensor dense(const Tensor& t) { return keeps_channels_last(t) ? t : t.contiguous(); }

// t dense in the layout of `like` (a gradient arriving in another layout than its forward output).
inline Tensor dense_as(const Tensor& t, const Tensor& like) {
  if (!keeps_channels_last(like)) return t.contiguous();
  if (keeps_channels_last(t)) return t;
  Tensor c = Tensor::empty_channels_last(t.shape(), t.dtype(), t.device());
  c.copy_(t);
  return c;
}

// t in channels-last layout (a copy unless it already is).
inline Tensor channels_last(const Tensor& t) {
  if (t.is_channels_last()) return t;
  Tensor c = Tensor::empty_channels_last(t.shape(), t.dtype(), t.device());
  c.copy_(t);
  return c;
}

}  // namespace hpdl::detail
