// The CPU allocator's accounting: live bytes follow tensors as they are created
// and freed (large blocks through the size-keyed cache and small ones through
// malloc alike), and the peak can be reset.
#include <gtest/gtest.h>

#include <cstdlib>

#include "hpdl/core/storage.h"
#include "hpdl/core/tensor.h"

namespace hpdl {
namespace {

TEST(CpuMemoryStats, LiveAndPeakFollowTensors) {
  reset_cpu_memory_peak();
  const CpuMemoryStats before = cpu_memory_stats();
  EXPECT_EQ(before.peak_live_bytes, before.live_bytes);
  {
    Tensor big = Tensor::empty({1 << 20});  // 4 MiB: a cached size class
    Tensor small = Tensor::empty({10}, DType::f64);
    const CpuMemoryStats during = cpu_memory_stats();
    EXPECT_EQ(during.live_bytes, before.live_bytes + (4u << 20) + 80);
    EXPECT_GE(during.peak_live_bytes, during.live_bytes);
  }
  const CpuMemoryStats after = cpu_memory_stats();
  EXPECT_EQ(after.live_bytes, before.live_bytes);
  EXPECT_GE(after.peak_live_bytes, before.live_bytes + (4u << 20) + 80);
  if (std::getenv("HPDL_CPU_CACHE_MB") == nullptr) {  // the default cache (2 GiB) keeps it
    EXPECT_GE(after.cached_bytes, size_t{4} << 20) << "the freed 4 MiB block stays cached for reuse";
  }
  reset_cpu_memory_peak();
  EXPECT_EQ(cpu_memory_stats().peak_live_bytes, after.live_bytes);
}

}  // namespace
}  // namespace hpdl
