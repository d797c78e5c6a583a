// hpdl info: versions, the ISA oneDNN runs on, threads, MPI (and, under mpirun, how the
// ranks lie on nodes), HDF5 and CUDA. Under mpirun only rank 0 prints.
#include <mpi.h>

#include <cstdio>

#include "apps/hpdl/commands.h"
#ifdef HPDL_HAVE_CUDA
#include "hpdl/backend/cuda/cuda.h"
#endif
#include "hpdl/backend/cpu/onednn.h"
#include "hpdl/core/threading.h"
#include "hpdl/data/readers.h"
#include "hpdl/dist/communicator.h"

namespace hpdl::cli {

namespace {
int g_exit_code = 0;
}
int exit_code() { return g_exit_code; }
void set_exit_code(int code) { g_exit_code = code; }

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Print versions, CPU ISA, threads, MPI and CUDA support");
  cmd->callback([] {
    char mpi_version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpi_version, &len);
    std::string mpi(mpi_version, static_cast<size_t>(len));
    if (auto nl = mpi.find('\n'); nl != std::string::npos) mpi.resize(nl);
    auto& world = dist::Communicator::world();
    const dist::Communicator::NodeLayout layout = world.node_layout();  // collective
    const dist::Communicator::CoreShare share = world.core_share();    // collective
    if (world.rank() != 0) return;
    std::printf("hpdl %s\n", HPDL_VERSION);
    std::printf("oneDNN %s, ISA %s\n", cpu::onednn_version().c_str(), cpu::onednn_isa().c_str());
    std::printf("OpenMP threads %d\n", num_threads());
    std::printf("MPI %s\n", mpi.c_str());
    if (world.size() == 1) {
      std::printf("ranks 1 (not under mpirun)\n");
    } else {
      const std::string per = layout.min_ranks == layout.max_ranks
                                  ? std::to_string(layout.min_ranks)
                                  : std::to_string(layout.min_ranks) + "-" + std::to_string(layout.max_ranks);
      const bool hier = layout.nodes > 1 && layout.min_ranks == layout.max_ranks && layout.max_ranks > 1;
      std::printf("ranks %d on %d node(s), %s per node (train.hierarchical_allreduce %s)\n", world.size(), layout.nodes,
                  per.c_str(), hier ? "would be used" : "would stay flat: it needs several nodes of equal rank counts > 1");
      const int split = dist::Communicator::shared_core_threads(share);
      std::printf("rank 0 may run on %d core(s), shared with %d rank(s) of its machine: hpdl train takes %d "
                  "thread(s) per rank unless train.threads or OMP_NUM_THREADS says otherwise\n", share.cores,
                  share.ranks - 1, split > 0 ? split : num_threads());
    }
    std::printf("HDF5 %s (serial; data.dataset = \"hdf5\")\n", data::hdf5_version().c_str());
#ifdef HPDL_HAVE_CUDA
    std::printf("CUDA backend: built in\n%s\n", cuda::describe().c_str());
#else
    std::printf("CUDA backend: not built (no CUDA toolkit at configure time)\n");
#endif
  });
}

}  // namespace hpdl::cli
