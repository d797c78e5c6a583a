// One threading runtime: OpenMP. oneDNN is built on the same OpenMP runtime,
// so a single pool serves the library kernels and hpdl's own loops.
#pragma once

#include <omp.h>

#include <cstdint>

namespace hpdl {

int num_threads();
// Sets the team size of the calling thread's parallel regions, and the count
// adopt_num_threads() gives other threads. (OpenMP keeps the count per
// thread: a thread started afterwards would use OMP_NUM_THREADS, or every
// core, for its own regions and spin a second team beside the first.)
void set_num_threads(int n);
// Called first thing by the threads hpdl starts that may run kernels (the
// communicator's thread, DataLoader workers, the checkpoint writer): the
// count of the last set_num_threads, if any.
void adopt_num_threads();

// Runs f(begin, end) over [0, n) split across OpenMP threads when n * cost is
// large enough to pay for the fork, else inline.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= grain) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t chunk = (n + nt - 1) / nt;
    int64_t b = t * chunk, e = b + chunk < n ? b + chunk : n;
    if (b < e) f(b, e);
  }
}

}  // namespace hpdl
