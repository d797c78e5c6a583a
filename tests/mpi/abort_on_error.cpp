// A program whose rank 1 fails while rank 0 waits in a collective: the job
// must end (MPI_Abort through Communicator::abort), not hang.
#include <cstdio>

#include "hpdl/dist/communicator.h"

int main(int argc, char** argv) {
  hpdl::dist::init(&argc, &argv);
  auto& w = hpdl::dist::Communicator::world();
  try {
    if (w.rank() == 1) HPDL_FAIL("cannot read data file /nonexistent/shard-1.bin (simulated corrupt shard)");
    w.barrier();  // rank 0 would wait here forever without the abort
  } catch (const hpdl::Error& e) {
    w.abort(e.message());
  }
  std::puts("unreachable: rank 1 should have aborted the job");
  return 0;
}
