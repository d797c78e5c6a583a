// Private helpers of the CUDA backend: status checks that turn CUDA, cuBLAS
// and cuDNN error codes into hpdl::Error naming the failed call, the compute
// stream and library handles of the current device, and small tensor helpers.
// Every CUDA-side call in backend/cuda goes through one of the CHECK macros.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <memory>

#include "hpdl/backend/backend.h"
#include "hpdl/core/storage.h"
#include "hpdl/core/error.h"

#define HPDL_CUDA_CHECK(call)                                                                            \
  do {                                                                                                   \
    cudaError_t hpdl_e_ = (call);                                                                        \
    if (hpdl_e_ != cudaSuccess)                                                                          \
      HPDL_FAIL("CUDA call {} failed: {} ({})", #call, cudaGetErrorString(hpdl_e_), cudaGetErrorName(hpdl_e_)); \
  } while (0)

#define HPDL_CUBLAS_CHECK(call)                                                                      \
  do {                                                                                               \
    cublasStatus_t hpdl_s_ = (call);                                                                 \
    if (hpdl_s_ != CUBLAS_STATUS_SUCCESS)                                                            \
      HPDL_FAIL("cuBLAS call {} failed: {}", #call, cublasGetStatusString(hpdl_s_));                  \
  } while (0)

#define HPDL_CUDNN_CHECK(call)                                                                       \
  do {                                                                                               \
    cudnnStatus_t hpdl_s_ = (call);                                                                  \
    if (hpdl_s_ != CUDNN_STATUS_SUCCESS)                                                             \
      HPDL_FAIL("cuDNN call {} failed: {}", #call, cudnnGetErrorString(hpdl_s_));                     \
  } while (0)

// A kernel launcher returns cudaGetLastError(); this names the kernel when it failed.
#define HPDL_KERNEL_CHECK(name, call)                                                                \
  do {                                                                                               \
    cudaError_t hpdl_e_ = (call);                                                                    \
    if (hpdl_e_ != cudaSuccess) HPDL_FAIL("CUDA kernel {} failed to launch: {}", name, cudaGetErrorString(hpdl_e_)); \
  } while (0)

namespace hpdl::cuda {

// Makes `d`'s GPU current and returns its compute stream (one per device, created on first use).
cudaStream_t stream_for(Device d);
cublasHandle_t cublas_for(Device d);  // bound to stream_for(d)
cudnnHandle_t cudnn_for(Device d);    // bound to stream_for(d)

// `t` itself when contiguous, else a contiguous copy on t's device.
Tensor dense(const Tensor& t);

// Channels-last (NHWC in memory) when the tensor is and not also row-major.
inline bool nhwc(const Tensor& t) { return !t.is_contiguous() && t.is_channels_last(); }

// The caching allocators' size classes (allocator.cpp, pinned.cpp): powers of two from `smallest`
// to 1 MiB, then multiples of 2 MiB.
inline size_t block_class(size_t n, size_t smallest) {
  constexpr size_t kSmall = size_t{1} << 20, kLargeStep = size_t{2} << 20;
  if (n > kSmall) return (n + kLargeStep - 1) / kLargeStep * kLargeStep;
  size_t c = smallest;
  while (c < n) c <<= 1;
  return c;
}

// pinned.cpp: keeps `source` (the pinned block an upload queued on stream s reads) alive until
// that upload has completed, without waiting for it; and drops the holds of completed uploads.
void hold_until_done(const std::shared_ptr<Storage>& source, cudaStream_t s);
void release_finished_uploads();

}  // namespace hpdl::cuda
