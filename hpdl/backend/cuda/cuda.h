// Public entry points of the CUDA backend that need no CUDA headers: whether a
// GPU is there, the TF32 switch, the compute precision, and allocator statistics. The backend itself
// registers for DeviceType::cuda when libhpdl loads and a GPU is present; with
// no GPU it stays unregistered, so using a cuda tensor says "no device".
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "hpdl/core/dtype.h"
#include "hpdl/core/shape.h"
#include "hpdl/core/tensor.h"

namespace hpdl::cuda {

// Number of visible CUDA devices; 0 when there is no GPU or no driver (never throws).
int device_count();
inline bool available() { return device_count() > 0; }
// The CUDA runtime, driver, cuDNN and NCCL versions, then one line per visible GPU (name, memory,
// compute capability, SMs), or "no GPU visible" (hpdl info). Never throws.
std::string describe();

// TF32 tensor-core math for float32 matmul and convolution (cuBLAS, cuDNN).
// Off by default: float32 results then match the reference to float32 rounding.
void set_allow_tf32(bool allow);
bool allow_tf32();

// Mixed precision: with a compute precision of bfloat16 or float16, float32
// convolutions and matmuls convert their operands to that type on the device
// and run on tensor cores with float32 accumulation (cuDNN
// CUDNN_DATA_BFLOAT16 / CUDNN_DATA_HALF with float compute, cublasGemmEx with
// CUBLAS_COMPUTE_32F); results, activations, BN, gradients and the (master)
// weights stay float32. float32 (the default) is off. float16 has a narrow
// range (max 65504, subnormals below 6.1e-5): train with a loss scaler
// (optim::GradScaler) so small gradients do not flush to zero.
void set_compute_precision(DType t);  // DType::f32 (off), DType::bf16 or DType::f16; throws otherwise
DType compute_precision();
// The reduced type an operand of dtype t is converted to for conv/matmul:
// the compute precision when t is float32 and the precision is not float32.
std::optional<DType> reduced_compute_type(DType t);
// bfloat16 on/off (set_compute_precision(on ? bf16 : f32)); true only for bfloat16.
inline void set_compute_bf16(bool on) { set_compute_precision(on ? DType::bf16 : DType::f32); }
inline bool compute_bf16() { return compute_precision() == DType::bf16; }

// Makes GPU `index` current for the calling thread (cudaSetDevice); throws
// naming the count when it is not visible. A rank of a multi-GPU job calls it
// with its device (dist::select_device) before allocating anything.
void set_device(int index);
int current_device();

// Convolution algorithms: cuDNN's heuristics (the default, reproducible from run
// to run) or a timed search of every algorithm on the first call of each shape
// (cudnnFind*AlgorithmEx, as PyTorch's cudnn.benchmark). The environment
// variable HPDL_CUDNN_FIND=1 sets the default.
void set_conv_search(bool on);
bool conv_search();

// Convolutions through cuDNN's graph (backend descriptor) API with one
// execution plan built per shape and reused, instead of the legacy calls that
// build a plan every time (host time: half of a ResNet-50 step measured on an
// H200). Convolutions no engine can run stay on the legacy API, as does the
// timed search. Off by default until measured on a GPU; HPDL_CUDNN_GRAPH=1
// sets the default. The counters say what happened: plans built, shapes left
// to the legacy API, and convolutions run through a plan.
void set_conv_graph(bool on);
bool conv_graph();
// Batch norm, residual add and ReLU of a residual block's last layer in one
// bfloat16 kernel pass (Backend::batchnorm_add_relu_forward_train) instead of
// the batch norm's output pass and a separate add_relu pass. Off by default
// until measured on a GPU; HPDL_CUDA_FUSED_RESIDUAL=1 sets the default.
void set_fused_residual(bool on);
bool fused_residual();

struct GraphConvStats {
  int64_t plans_built = 0;
  int64_t unsupported = 0;
  int64_t runs = 0;
};
GraphConvStats graph_conv_stats();

// Brackets a region for profilers started with collection off (ncu
// --profile-from-start off): cudaProfilerStart / cudaProfilerStop.
void profiler_start();
void profiler_stop();

// Waits for all work queued on the current device's compute stream (and reports a bad index that a
// deferred check recorded).
void synchronize();

// Index checks of index_select, index_add and cross-entropy's gather/scatter without a
// synchronization per op: a bad index is recorded on the device (the kernels never read or write
// out of range) and thrown, naming the op, at the next synchronization the program makes: a copy to
// the host (loss.item(), the trainer's log steps), synchronize(), or after 256 unread checks. Off,
// each op reads its check back at once (two synchronizations per training step from the loss).
// Off by default until measured on a GPU; HPDL_CUDA_DEFERRED_CHECKS=1 sets the default. Turning
// it off first synchronizes, so that nothing deferred goes unreported.
void set_deferred_index_checks(bool on);
bool deferred_index_checks();

struct AllocatorStats {
  size_t allocated_bytes = 0;  // handed out to live Storages (rounded to size classes)
  size_t cached_bytes = 0;     // held in the free lists for reuse
  int64_t device_mallocs = 0;  // cudaMalloc calls made so far
  int64_t cache_hits = 0;      // allocations served from a free list
  size_t peak_allocated_bytes = 0;  // the most allocated_bytes reached since the last reset_peak_memory()
};
AllocatorStats allocator_stats();
// Starts a new peak: peak_allocated_bytes = allocated_bytes now (torch.cuda.reset_peak_memory_stats).
void reset_peak_memory();

// Host <-> device copies made by the backend since libhpdl loaded (each one
// synchronizes the stream). Tests use the counts to prove that a training
// step stays on the GPU: no op may copy to the host behind the caller's back.
struct TransferStats {
  int64_t uploads = 0;    // host -> device copies
  int64_t downloads = 0;  // device -> host copies
};
TransferStats transfer_stats();
// Returns every cached (free) block to the driver with cudaFree.
void empty_cache();

// A CPU tensor in page-locked (pinned) host memory, from a cache of
// cudaHostAlloc blocks kept by size (a freed block is handed out again). A copy
// from it to a GPU does not synchronize the stream: the upload keeps the block
// alive until the copy has completed (an event per upload), so the caller may
// drop its tensor at once. Writing into it before the copy completed races the
// copy: a writer checks that it holds the only reference (the DataLoader
// refills a slot only then) or takes a new block. The DataLoader takes it as
// its allocate hook with data.pin_memory = true. Throws when CUDA has no device.
Tensor pinned_empty(const Shape& shape, DType dtype);
// Whether t's memory comes from pinned_empty.
bool is_pinned(const Tensor& t);
struct PinnedStats {
  int64_t host_allocs = 0;     // cudaHostAlloc calls made so far
  int64_t cache_hits = 0;      // pinned_empty calls served from the cache
  int64_t async_uploads = 0;   // uploads that did not synchronize the stream
  int64_t in_flight = 0;       // uploads whose source block is still held
};
PinnedStats pinned_stats();

}  // namespace hpdl::cuda
