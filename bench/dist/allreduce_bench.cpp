// Allreduce bus bandwidth: hpdl's Communicator against OpenMPI's own
// MPI_Allreduce on the same buffers, interleaved in one run so both see the
// same machine state. Bus bandwidth = bytes * 2(n-1)/n / time (the NCCL
// convention: comparable across rank counts). Prints a Markdown table.
// Run: mpirun -np 2 build/bench/allreduce_bench [repeats]
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "hpdl/dist/communicator.h"

using hpdl::dist::Communicator;

int main(int argc, char** argv) {
  hpdl::dist::init(&argc, &argv);
  auto& w = Communicator::world();
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 7;
  const int n = w.size();
  if (w.rank() == 0) {
    std::printf("| size | hpdl GB/s (min/median) | MPI_Allreduce GB/s (min/median) | ratio (median) |\n");
    std::printf("|---|---|---|---|\n");
  }
  for (int64_t bytes = 4096; bytes <= (64 << 20); bytes *= 4) {
    const int64_t count = bytes / 4;
    hpdl::Tensor t = hpdl::Tensor::ones({count});
    std::vector<float> raw(count, 1.0f);
    const int iters = std::max<int64_t>(5, (256ll << 20) / bytes / 4);
    std::vector<double> ours, theirs;
    for (int rep = 0; rep < repeats; ++rep) {
      for (int which = 0; which < 2; ++which) {
        w.barrier();
        double t0 = MPI_Wtime();
        for (int i = 0; i < iters; ++i) {
          if (which == 0) w.allreduce(t);
          else MPI_Allreduce(MPI_IN_PLACE, raw.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        }
        double dt = (MPI_Wtime() - t0) / iters;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        double busbw = bytes * 2.0 * (n - 1) / n / dt / 1e9;
        (which == 0 ? ours : theirs).push_back(busbw);
      }
      // Keep values finite: rescale after repeated sums.
      t.fill_(1);
      std::fill(raw.begin(), raw.end(), 1.0f);
    }
    std::sort(ours.begin(), ours.end());
    std::sort(theirs.begin(), theirs.end());
    double om = ours[ours.size() / 2], tm = theirs[theirs.size() / 2];
    if (w.rank() == 0) {
      const char* unit = bytes >= (1 << 20) ? "MiB" : "KiB";
      double sz = bytes >= (1 << 20) ? bytes / double(1 << 20) : bytes / 1024.0;
      std::printf("| %g %s | %.2f / %.2f | %.2f / %.2f | %.3f |\n", sz, unit, ours.front(), om, theirs.front(), tm,
                  om / tm);
    }
  }
  return 0;
}
