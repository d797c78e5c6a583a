// Thread count control for the one OpenMP pool.
#include "hpdl/core/threading.h"

#include "hpdl/core/error.h"

namespace hpdl {

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  HPDL_CHECK(n >= 1, "set_num_threads: need at least 1 thread, got {}", n);
  omp_set_num_threads(n);
}

}  // namespace hpdl
