// The few collective operations staging needs, behind a small interface so the
// MPI calls stay in one file (stage_mpi.cpp) and can move to dist::Communicator
// later. A "node" is a group of ranks sharing node-local storage; its leader
// (lowest rank) does that node's reading and writing.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace hpdl::store::detail {

class StageComm {
 public:
  virtual ~StageComm() = default;
  virtual int node() const = 0;    // this rank's node index, 0..nodes()-1
  virtual int nodes() const = 0;
  virtual bool leader() const = 0;  // true on exactly one rank per node
  // Among leaders only: broadcast `n` bytes from the leader of node `root`.
  virtual void bcast(void* data, size_t n, int root) = 0;
  // Among leaders only: point-to-point to / from the leader of another node.
  virtual void send(const void* data, size_t n, int to_node) = 0;
  virtual void recv(void* data, size_t n, int from_node) = 0;
  virtual void barrier() = 0;  // all ranks
  // Prints `message` and ends the whole job (so no rank waits forever on a dead peer).
  [[noreturn]] virtual void abort(const std::string& message) = 0;
  virtual bool distributed() const = 0;
};

// The MPI implementation when launched by mpirun/srun (detected from the launcher's
// environment), else a single-rank, single-node local implementation.
std::unique_ptr<StageComm> make_stage_comm();

}  // namespace hpdl::store::detail
