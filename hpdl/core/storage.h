// Storage: one reference-counted allocation on a device. Tensors are views into
// a Storage (offset, shape, strides). Allocators are per device type; the CPU
// one returns 64-byte aligned memory (a cache line, an AVX-512 vector); the
// CUDA backend registers a caching allocator over cudaMalloc.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "hpdl/core/dtype.h"

namespace hpdl {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* p, size_t nbytes) = 0;
};

Allocator& cpu_allocator();

// Host memory held by tensors (bytes as requested, live Storages only) and by
// the CPU allocator's cache of freed large blocks. peak_live_bytes is the
// largest live_bytes since libhpdl loaded or since reset_cpu_memory_peak().
struct CpuMemoryStats {
  size_t live_bytes = 0, peak_live_bytes = 0, cached_bytes = 0;
};
CpuMemoryStats cpu_memory_stats();
void reset_cpu_memory_peak();
// The allocator for a device; CUDA's is registered by the CUDA backend at load
// time. Throws naming the device when none is registered (hpdl built without CUDA).
Allocator& allocator_for(Device d);
void register_allocator(DeviceType type, Allocator* a);

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  // nbytes from `allocator` (which must outlive the Storage), given back to it on destruction:
  // memory of a special kind on `device`, as the CUDA backend's page-locked host blocks.
  Storage(size_t nbytes, Device device, Allocator& allocator);
  // Wraps external memory that the Storage does not own (must outlive it).
  Storage(void* external, size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  // The version counter of this memory, shared by every tensor viewing it
  // (views, reshapes, detach()): each in-place write through the Tensor API
  // (fill_, copy_, optimizer steps, in-place collectives) adds one. Autograd
  // records it for each tensor a node saves for backward and refuses to run
  // that backward if it moved (design decision 73). Relaxed atomics: loader
  // and communication threads write tensors too, and only the count matters.
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> version_{0};
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  bool owned_ = true;
  Allocator* allocator_ = nullptr;  // null: the device's allocator
};

}  // namespace hpdl
