// The caching device allocator and the registration of the CUDA backend.
// cudaMalloc and cudaFree synchronize and cost tens of microseconds, so freed
// blocks go to per-size-class free lists and are handed out again; all work of
// a device runs on one stream, so a block reused by a later op is ordered after
// every earlier use. Plain cudaMalloc only, never managed memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/backend/cuda/cuda_backend.h"
#include "hpdl/core/storage.h"

namespace hpdl::cuda {
namespace {

// Size classes: powers of two from 512 bytes to 1 MiB, then multiples of 2 MiB.
size_t size_class(size_t n) { return block_class(n, 512); }

class CachingAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    int dev = 0;
    HPDL_CUDA_CHECK(cudaGetDevice(&dev));
    const size_t cls = size_class(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto& list = free_[{dev, cls}];
    if (!list.empty()) {
      void* p = list.back();
      list.pop_back();
      live_[p] = {dev, cls};
      stats_.cached_bytes -= cls;
      stats_.allocated_bytes += cls;
      stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
      ++stats_.cache_hits;
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, cls);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the sticky-free error, give the cache back, try once more
      release_locked();
      e = cudaMalloc(&p, cls);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      HPDL_FAIL("cudaMalloc of {} bytes (size class {}) on cuda:{} failed: {}; {} bytes are in use by tensors. "
                "Reduce the batch size or the model, or free tensors before this point",
                nbytes, cls, dev, cudaGetErrorString(e), stats_.allocated_bytes);
    }
    ++stats_.device_mallocs;
    stats_.allocated_bytes += cls;
    stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
    live_[p] = {dev, cls};
    return p;
  }

  void deallocate(void* p, size_t) override {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;  // not ours (never happens for Storages of cuda tensors)
    Block b = it->second;
    live_.erase(it);
    free_[{b.device, b.size}].push_back(p);
    stats_.allocated_bytes -= b.size;
    stats_.cached_bytes += b.size;
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    release_locked();
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_allocated_bytes = stats_.allocated_bytes;
  }

 private:
  struct Block {
    int device;
    size_t size;
  };

  void release_locked() {
    int current = 0;
    (void)cudaGetDevice(&current);
    for (auto& [key, list] : free_) {
      (void)cudaSetDevice(key.first);
      for (void* p : list) (void)cudaFree(p);  // best effort: this runs on the out-of-memory path
      stats_.cached_bytes -= key.second * list.size();
      list.clear();
    }
    (void)cudaSetDevice(current);
  }

  std::mutex mu_;
  std::map<std::pair<int, size_t>, std::vector<void*>> free_;
  std::unordered_map<void*, Block> live_;
  AllocatorStats stats_;
};

// Created once, never destroyed: Storages released during static destruction may still return blocks.
CachingAllocator* g_allocator = nullptr;

// Registers the allocator and the backend when libhpdl loads, only if a GPU is visible.
struct Registrar {
  Registrar() {
    if (device_count() <= 0) return;
    g_allocator = new CachingAllocator();
    register_allocator(DeviceType::cuda, g_allocator);
    register_backend(DeviceType::cuda, new CudaBackend());
  }
};
Registrar g_registrar;

}  // namespace

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: CUDA is simply unavailable
      return 0;
    }
    return n;
  }();
  return count;
}

AllocatorStats allocator_stats() { return g_allocator ? g_allocator->stats() : AllocatorStats{}; }

void reset_peak_memory() {
  if (g_allocator) g_allocator->reset_peak();
}

void empty_cache() {
  if (g_allocator) g_allocator->release();
}

}  // namespace hpdl::cuda
