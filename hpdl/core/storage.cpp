// CPU allocator and Storage.
#include "hpdl/core/storage.h"

#include <cstdlib>
#include <new>

#include "hpdl/core/error.h"

namespace hpdl {
namespace {

class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    size_t rounded = (nbytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    HPDL_CHECK(p != nullptr, "out of host memory allocating {} bytes", nbytes);
    return p;
  }
  void deallocate(void* p, size_t) override { std::free(p); }
};

Allocator* g_allocators[2] = {nullptr, nullptr};

}  // namespace

Allocator& cpu_allocator() {
  static CpuAllocator a;
  return a;
}

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

Storage::~Storage() {
  if (owned_ && data_) allocator_for(device_).deallocate(data_, nbytes_);
}

}  // namespace hpdl
