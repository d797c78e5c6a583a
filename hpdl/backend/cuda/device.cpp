// The current device of the calling thread (cuda.h): each rank of a GPU job
// makes its own GPU current before it allocates anything.
#include <cudnn.h>
#include <nccl.h>

#include <fmt/format.h>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"

namespace hpdl::cuda {

void set_device(int index) {
  const int n = device_count();
  HPDL_CHECK(index >= 0 && index < n, "cuda::set_device({}): {} CUDA devices visible", index, n);
  HPDL_CUDA_CHECK(cudaSetDevice(index));
}

int current_device() {
  int d = 0;
  HPDL_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

std::string describe() {
  auto version = [](int v) { return fmt::format("{}.{}", v / 1000, (v % 1000) / 10); };
  int runtime = 0, driver = 0, nccl = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  const bool has_driver = cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0;
  (void)cudaGetLastError();
  (void)ncclGetVersion(&nccl);
  const size_t cudnn = cudnnGetVersion();
  std::string out = fmt::format("CUDA runtime {}, driver {}, cuDNN {}.{}.{}, NCCL {}.{}.{}", version(runtime),
                                has_driver ? version(driver) : std::string("none"), cudnn / 10000,
                                (cudnn % 10000) / 100, cudnn % 100, nccl / 10000, (nccl % 10000) / 100, nccl % 100);
  const int n = device_count();
  if (n == 0) return out + "\nno GPU visible";
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      (void)cudaGetLastError();
      out += fmt::format("\ncuda:{}: properties unavailable", i);
      continue;
    }
    out += fmt::format("\ncuda:{}: {}, {:.1f} GiB, compute capability {}.{}, {} SMs", i, prop.name,
                       static_cast<double>(prop.totalGlobalMem) / (1ull << 30), prop.major, prop.minor,
                       prop.multiProcessorCount);
  }
  return out;
}

}  // namespace hpdl::cuda
