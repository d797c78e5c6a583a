// Host memory that leaves the process when it is freed. ZeRO-2's gradient
// buckets of other owners and ZeRO-3's gathered parameters live only for a
// part of a step; the CPU allocator would keep a freed block cached (still
// resident) under its size, so releasing it would save no memory. These come
// from the kernel (mmap: zero-filled pages, costing nothing until written)
// and go back to it (munmap).
#pragma once

#include <cstdint>

#include "hpdl/core/tensor.h"

namespace hpdl::dist {

// The allocator behind zero_pages_f32 (for Storages of other dtypes).
Allocator& page_allocator();

// A float32 [numel] CPU tensor on fresh zero pages. Throws when the mapping fails.
Tensor zero_pages_f32(int64_t numel);

}  // namespace hpdl::dist
