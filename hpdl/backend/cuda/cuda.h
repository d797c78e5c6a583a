// Public entry points of the CUDA backend that need no CUDA headers: whether a
// GPU is there, the TF32 switch, and allocator statistics. The backend itself
// registers for DeviceType::cuda when libhpdl loads and a GPU is present; with
// no GPU it stays unregistered, so using a cuda tensor says "no device".
#pragma once

#include <cstddef>
#include <cstdint>

namespace hpdl::cuda {

// Number of visible CUDA devices; 0 when there is no GPU or no driver (never throws).
int device_count();
inline bool available() { return device_count() > 0; }

// TF32 tensor-core math for float32 matmul and convolution (cuBLAS, cuDNN).
// Off by default: float32 results then match the reference to float32 rounding.
void set_allow_tf32(bool allow);
bool allow_tf32();

// Waits for all work queued on the current device's compute stream.
void synchronize();

struct AllocatorStats {
  size_t allocated_bytes = 0;  // handed out to live Storages (rounded to size classes)
  size_t cached_bytes = 0;     // held in the free lists for reuse
  int64_t device_mallocs = 0;  // cudaMalloc calls made so far
  int64_t cache_hits = 0;      // allocations served from a free list
};
AllocatorStats allocator_stats();
// Returns every cached (free) block to the driver with cudaFree.
void empty_cache();

}  // namespace hpdl::cuda
