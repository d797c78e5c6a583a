// Thread count control for the one OpenMP pool.
#include "hpdl/core/threading.h"

#include <atomic>

#include "hpdl/core/error.h"

namespace hpdl {
namespace {
std::atomic<int> g_num_threads{0};  // 0: never set; OpenMP's default (OMP_NUM_THREADS or the cores)
}  // namespace

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  HPDL_CHECK(n >= 1, "set_num_threads: need at least 1 thread, got {}", n);
  g_num_threads.store(n);
  omp_set_num_threads(n);
}

void adopt_num_threads() {
  if (const int n = g_num_threads.load(); n > 0) omp_set_num_threads(n);
}

}  // namespace hpdl
