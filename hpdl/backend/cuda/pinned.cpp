// Page-locked host memory, so that uploads need not stall the stream
// (cuda.h: pinned_empty). cudaHostAlloc and cudaFreeHost are slow (they map the
// pages for the device and synchronize), so freed blocks stay in free lists by
// size class and are handed out again, as the device allocator does.
//
// An upload from a pinned block records an event on the stream after its copy
// and holds the block's Storage until that event has completed. Until then the
// block can be neither reused by the cache nor rewritten by the DataLoader,
// which refills a batch slot only when nothing else holds its Storage (it
// gives the slot a fresh block otherwise).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/backend/cuda/cuda_backend.h"
#include "hpdl/core/storage.h"

namespace hpdl::cuda {
namespace {

// Size classes: powers of two from 4 KiB (a page) to 1 MiB, then multiples of 2 MiB.
size_t pinned_class(size_t n) { return block_class(n, 4096); }

class PinnedAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    const size_t cls = pinned_class(std::max<size_t>(nbytes, 1));
    std::lock_guard<std::mutex> lock(mu_);
    auto& list = free_[cls];
    if (!list.empty()) {
      void* p = list.back();
      list.pop_back();
      live_[p] = cls;
      ++hits_;
      return p;
    }
    void* p = nullptr;
    // Portable: page-locked for every device's context, not only the one current here.
    const cudaError_t e = cudaHostAlloc(&p, cls, cudaHostAllocPortable);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      HPDL_FAIL("cudaHostAlloc of {} bytes of page-locked host memory failed: {}; set data.pin_memory = false or "
                "lower data.prefetch", cls, cudaGetErrorString(e));
    }
    ++allocs_;
    live_[p] = cls;
    return p;
  }

  void deallocate(void* p, size_t) override {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    free_[it->second].push_back(p);
    live_.erase(it);
  }

  bool owns(const void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    return live_.count(const_cast<void*>(p)) != 0;
  }

  void stats(PinnedStats& s) {
    std::lock_guard<std::mutex> lock(mu_);
    s.host_allocs = allocs_;
    s.cache_hits = hits_;
  }

 private:
  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, size_t> live_;
  int64_t allocs_ = 0, hits_ = 0;
};

// Never destroyed: Storages released during static destruction still give their blocks back.
PinnedAllocator* const g_pinned = new PinnedAllocator();

// Uploads whose source block is still held, in the order they were queued. An event belongs to
// the device (context) it was created on, so spare events are kept per device.
struct InFlight {
  cudaEvent_t done;
  int device;
  std::shared_ptr<Storage> keep;
};
std::mutex g_flight_mu;
std::vector<InFlight>* const g_flight = new std::vector<InFlight>();
std::map<int, std::vector<cudaEvent_t>>* const g_spare_events = new std::map<int, std::vector<cudaEvent_t>>();
std::atomic<int64_t> g_async_uploads{0};

// Drops the hold of every upload whose event has completed (never blocks).
void reap_locked() {
  auto done = [](const InFlight& f) {
    const cudaError_t e = cudaEventQuery(f.done);
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: keep it from being reported by the next launch check
      return false;
    }
    if (e != cudaSuccess) (void)cudaGetLastError();  // a failed stream reports itself at its next call
    (*g_spare_events)[f.device].push_back(f.done);
    return true;
  };
  g_flight->erase(std::remove_if(g_flight->begin(), g_flight->end(), done), g_flight->end());
}

}  // namespace

Tensor pinned_empty(const Shape& shape, DType dtype) {
  HPDL_CHECK(device_count() > 0, "pinned_empty: no CUDA device is visible (page-locked memory needs the CUDA "
             "driver); use Tensor::empty on a machine without a GPU");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(numel_of(shape)) * dtype_size(dtype), kCPU,
                                            *g_pinned);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

bool is_pinned(const Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.storage() && g_pinned->owns(t.storage()->data());
}

PinnedStats pinned_stats() {
  PinnedStats s;
  g_pinned->stats(s);
  s.async_uploads = g_async_uploads.load();
  std::lock_guard<std::mutex> lock(g_flight_mu);
  reap_locked();
  s.in_flight = static_cast<int64_t>(g_flight->size());
  return s;
}

void hold_until_done(const std::shared_ptr<Storage>& source, cudaStream_t s) {
  int device = 0;
  HPDL_CUDA_CHECK(cudaGetDevice(&device));  // the stream's device: stream_for made it current
  std::lock_guard<std::mutex> lock(g_flight_mu);
  reap_locked();
  cudaEvent_t ev;
  std::vector<cudaEvent_t>& spare = (*g_spare_events)[device];
  if (!spare.empty()) {
    ev = spare.back();
    spare.pop_back();
  } else {
    HPDL_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  }
  if (cudaEventRecord(ev, s) != cudaSuccess) {
    (void)cudaGetLastError();
    (void)cudaEventDestroy(ev);
    HPDL_CUDA_CHECK(cudaStreamSynchronize(s));  // cannot track the copy: wait for it instead (then nothing to hold)
    return;
  }
  g_flight->push_back({ev, device, source});
  ++g_async_uploads;
}

void release_finished_uploads() {
  std::lock_guard<std::mutex> lock(g_flight_mu);
  reap_locked();
}

}  // namespace hpdl::cuda
