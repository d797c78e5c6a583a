// The current device of the calling thread (cuda.h): each rank of a GPU job
// makes its own GPU current before it allocates anything.
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

}  // namespace hpdl::cuda
