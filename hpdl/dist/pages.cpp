// mmap-backed host memory for tensors that must leave the resident set when freed.
#include "hpdl/dist/pages.h"

#include <sys/mman.h>

namespace hpdl::dist {
namespace {

class PageAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    void* p = mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    HPDL_CHECK(p != MAP_FAILED, "out of host memory mapping {} bytes of pages (a gradient bucket or gathered "
               "parameters)", nbytes);
    return p;
  }
  void deallocate(void* p, size_t nbytes) override {
    if (p) munmap(p, nbytes);
  }
};

}  // namespace

Allocator& page_allocator() {
  static PageAllocator a;
  return a;
}

Tensor zero_pages_f32(int64_t numel) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(numel) * 4, kCPU, page_allocator());
  impl->shape = {numel};
  impl->strides = contiguous_strides(impl->shape);
  impl->dtype = DType::f32;
  return Tensor(std::move(impl));
}

}  // namespace hpdl::dist
