// CPU allocator and Storage.
#include "hpdl/core/storage.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "hpdl/core/error.h"

namespace hpdl {
namespace {

// Small blocks (< 64 KiB) come from malloc (glibc's heap serves them well). Large blocks
// (activations, gradients) are cached by size and reused: a training step
// allocates the same sizes every iteration, and returning them to the OS
// would make the kernel zero fresh pages on every step (page faults measured
// at 5-15% of a LeNet-5 step, and 15-20% of a PINN step, whose [512, 32]
// activations glibc returned to the OS at every free when the threshold was
// 256 KiB). The cache is bounded; HPDL_CPU_CACHE_MB sets it.
class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kLarge = 64 << 10;
  static constexpr size_t kGranule = 64 << 10;  // rounding above 256 KiB; 16 KiB below

  CpuAllocator() {
    const char* env = std::getenv("HPDL_CPU_CACHE_MB");
    limit_ = env ? static_cast<size_t>(std::atoll(env)) << 20 : size_t{2} << 30;
  }
  ~CpuAllocator() override {
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) std::free(p);
  }

  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    const size_t live = live_.fetch_add(nbytes, std::memory_order_relaxed) + nbytes;
    size_t peak = peak_.load(std::memory_order_relaxed);
    while (live > peak && !peak_.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
    }
    const size_t rounded = round(nbytes);
    if (rounded >= kLarge) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(rounded);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= rounded;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) live_.fetch_sub(nbytes, std::memory_order_relaxed);
    HPDL_CHECK(p != nullptr, "out of host memory allocating {} bytes", nbytes);
    return p;
  }

  CpuMemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {live_.load(), peak_.load(), cached_};
  }
  void reset_peak() { peak_.store(live_.load()); }

  void deallocate(void* p, size_t nbytes) override {
    if (!p) return;
    live_.fetch_sub(nbytes, std::memory_order_relaxed);
    const size_t rounded = round(nbytes);
    if (rounded >= kLarge) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + rounded <= limit_) {
        free_[rounded].push_back(p);
        cached_ += rounded;
        return;
      }
    }
    std::free(p);
  }

 private:
  static size_t round(size_t n) {
    const size_t g = n >= (size_t{256} << 10) ? kGranule : n >= kLarge ? (size_t{16} << 10) : 64;
    return (n + g - 1) / g * g;
  }
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0, limit_;
  std::atomic<size_t> live_{0}, peak_{0};
};

CpuAllocator& the_cpu_allocator() {
  static CpuAllocator a;
  return a;
}

Allocator* g_allocators[2] = {nullptr, nullptr};

}  // namespace

Allocator& cpu_allocator() { return the_cpu_allocator(); }
CpuMemoryStats cpu_memory_stats() { return the_cpu_allocator().stats(); }
void reset_cpu_memory_peak() { the_cpu_allocator().reset_peak(); }

void register_allocator(DeviceType type, Allocator* a) { g_allocators[static_cast<int>(type)] = a; }

Allocator& allocator_for(Device d) {
  if (d.is_cpu()) return cpu_allocator();
  Allocator* a = g_allocators[static_cast<int>(d.type)];
  HPDL_CHECK(a != nullptr, "device {} is not available: this hpdl was built without CUDA (configure with "
             "-DHPDL_CUDA=ON on a machine with the CUDA toolkit)", d.str());
  return *a;
}

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = allocator_for(device).allocate(nbytes);
}

Storage::Storage(void* external, size_t nbytes, Device device)
    : data_(external), nbytes_(nbytes), device_(device), owned_(false) {}

Storage::Storage(size_t nbytes, Device device, Allocator& allocator)
    : nbytes_(nbytes), device_(device), allocator_(&allocator) {
  data_ = allocator.allocate(nbytes);
}

Storage::~Storage() {
  if (owned_ && data_) (allocator_ ? *allocator_ : allocator_for(device_)).deallocate(data_, nbytes_);
}

}  // namespace hpdl
