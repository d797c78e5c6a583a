// Allreduce bus bandwidth: hpdl's Communicator against OpenMPI's own
// MPI_Allreduce on the same buffers, interleaved in one run so both see the
// same machine state. Bus bandwidth = bytes * 2(n-1)/n / time (the NCCL
// convention: comparable across rank counts). Prints a Markdown table; then a
// second one for DataParallel's whole per-bucket job (allreduce, then the
// scale by 1/n, on the communication thread) against MPI_Allreduce followed
// by a plain scaling loop on the caller's thread. A third table, where the ranks
// form several equal nodes (MPI_COMM_TYPE_SHARED, or HPDL_NODE_ID per rank),
// times the hierarchical allreduce (Communicator::set_hierarchical) against
// MPI_Allreduce on the same communicator.
// Run: mpirun -np 2 build/bench/allreduce_bench [repeats]
//      mpirun -np 4 sh -c 'HPDL_NODE_ID=$((OMPI_COMM_WORLD_RANK / 2)) exec build/bench/allreduce_bench 5'
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "hpdl/backend/backend.h"
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
  // DataParallel's bucket job, as data_parallel.cpp runs it, against the same with plain MPI.
  if (w.rank() == 0) {
    std::printf("\n| bucket | hpdl allreduce + scale, comm thread, ms (min/median) | MPI_Allreduce + scaling loop ms "
                "(min/median) | ratio (median) |\n|---|---|---|---|\n");
  }
  const double scale = 1.0 / n;
  for (int64_t bytes = (1 << 20); bytes <= (64 << 20); bytes *= 4) {
    const int64_t count = bytes / 4;
    hpdl::Tensor t = hpdl::Tensor::ones({count});
    std::vector<float> raw(count, 1.0f);
    std::vector<double> ours, theirs;
    for (int rep = 0; rep < repeats; ++rep)
      for (int which = 0; which < 2; ++which) {
        w.barrier();
        const double t0 = MPI_Wtime();
        if (which == 0) {
          w.enqueue([&] {
             w.allreduce(t);
             hpdl::reference_backend().unary(hpdl::UnaryOp::mul_scalar, t, t, scale);
           })->wait();
        } else {
          MPI_Allreduce(MPI_IN_PLACE, raw.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
          for (auto& v : raw) v = static_cast<float>(v * scale);
        }
        double dt = MPI_Wtime() - t0;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        (which == 0 ? ours : theirs).push_back(1e3 * dt);
      }
    std::sort(ours.begin(), ours.end());
    std::sort(theirs.begin(), theirs.end());
    const double om = ours[ours.size() / 2], tm = theirs[theirs.size() / 2];
    if (w.rank() == 0)
      std::printf("| %lld MiB | %.2f / %.2f | %.2f / %.2f | %.3f |\n", static_cast<long long>(bytes >> 20), ours.front(),
                  om, theirs.front(), tm, tm / om);
  }
  // Hierarchical allreduce against the flat MPI_Allreduce of the same ranks.
  auto hier = w.split(0, w.rank());
  if (!hier->set_hierarchical(true, -1, 0)) {
    if (w.rank() == 0)
      std::printf("\n(no hierarchical table: the ranks do not form several equal nodes of more than one rank)\n");
    return 0;
  }
  if (w.rank() == 0)
    std::printf("\n| size | hierarchical GB/s (min/median) | MPI_Allreduce GB/s (min/median) | ratio (median) |\n"
                "|---|---|---|---|\n");
  for (int64_t bytes = (256 << 10); bytes <= (64 << 20); bytes *= 4) {
    const int64_t count = bytes / 4;
    hpdl::Tensor t = hpdl::Tensor::ones({count});
    std::vector<float> raw(count, 1.0f);
    const int iters = std::max<int64_t>(3, (64ll << 20) / bytes);
    std::vector<double> ours, theirs;
    for (int rep = 0; rep < repeats; ++rep) {
      for (int which = 0; which < 2; ++which) {
        w.barrier();
        const double t0 = MPI_Wtime();
        for (int i = 0; i < iters; ++i) {
          if (which == 0) hier->allreduce(t);
          else MPI_Allreduce(MPI_IN_PLACE, raw.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, hier->handle());
        }
        double dt = (MPI_Wtime() - t0) / iters;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        (which == 0 ? ours : theirs).push_back(bytes * 2.0 * (n - 1) / n / dt / 1e9);
      }
      t.fill_(1);
      std::fill(raw.begin(), raw.end(), 1.0f);
    }
    std::sort(ours.begin(), ours.end());
    std::sort(theirs.begin(), theirs.end());
    const double om = ours[ours.size() / 2], tm = theirs[theirs.size() / 2];
    if (w.rank() == 0) {
      const char* unit = bytes >= (1 << 20) ? "MiB" : "KiB";
      const double sz = bytes >= (1 << 20) ? bytes / double(1 << 20) : bytes / 1024.0;
      std::printf("| %g %s | %.2f / %.2f | %.2f / %.2f | %.3f |\n", sz, unit, ours.front(), om, theirs.front(), tm,
                  om / tm);
    }
  }
  return 0;
}

