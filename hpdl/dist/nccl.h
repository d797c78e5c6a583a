// dist::NcclCommunicator: collectives between GPU ranks over NCCL, one GPU
// per rank. It is bootstrapped over an MPI Communicator (rank 0 draws the
// NCCL unique id and broadcasts it over MPI), so the same launcher (mpirun,
// srun) starts CPU and GPU jobs. MPI stays the communicator of CPU ranks and
// of everything small (metrics, barriers, the replica check).
//
// Streams: every collective runs on the communicator's own non-blocking
// communication stream. It is ordered after the work already queued on the
// device's compute stream (an event recorded there, waited for on the
// communication stream), and Work::wait() orders the compute stream after it
// (the reverse); neither blocks the host. So an allreduce of a tensor that a
// kernel has just written sees the kernel's result, overlaps with whatever
// the compute stream does next, and any later op on the compute stream (and
// every host read, which synchronizes it) sees the reduced values.
//
// No CUDA header here: the CUDA types are behind the implementation.
// Compiled with CUDA (HPDL_HAVE_CUDA); without it, creating one throws.
#pragma once

#include <memory>

#include "hpdl/core/tensor.h"
#include "hpdl/dist/communicator.h"

namespace hpdl::dist {

enum class NcclReduce { sum, avg, max, min };

// True when libhpdl was built with CUDA and NCCL.
bool nccl_compiled();

// The GPU this rank should use: its rank within the node (Communicator::
// split_node) modulo the visible devices. Collective over `comm`. Throws when
// no GPU is visible, or when two ranks of the node would get the same GPU
// (compared by device UUID, so per-rank CUDA_VISIBLE_DEVICES works): NCCL
// refuses two ranks of one communicator on one GPU ("Duplicate GPU
// detected"), so start at most as many ranks per node as it has GPUs.
int select_device(Communicator& comm);

// A collective in flight on the communication stream. Holds the tensor alive.
class NcclWork {
 public:
  ~NcclWork();  // waits (stream order, as wait()) if nobody did
  NcclWork(const NcclWork&) = delete;
  NcclWork& operator=(const NcclWork&) = delete;
  // Makes the compute stream wait for the collective; does not block the host.
  void wait();
  // Blocks the host until the collective is done; throws on an NCCL error.
  void synchronize();
  bool done() const;  // the collective has completed on the GPU

  struct Impl;

 private:
  friend class NcclCommunicator;
  explicit NcclWork(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class NcclCommunicator {
 public:
  // Collective over `comm` (every rank of it must call): one NCCL rank per MPI
  // rank, same numbering. device < 0 picks it with select_device(comm).
  explicit NcclCommunicator(Communicator& comm, int device = -1);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const;
  int size() const;
  Device device() const;  // cuda:<index> of this rank
  Communicator& mpi() const;

  // In place over a contiguous tensor on device() (float32, float64,
  // bfloat16; sum, avg, max, min; int64/int32/uint8 for sum, max, min).
  // Stream-ordered: returns at once, later work on the compute stream sees the result.
  void allreduce(const Tensor& t, NcclReduce op = NcclReduce::sum);
  // Launches on the communication stream after the compute stream's queued
  // work; the compute stream does not wait until the Work's wait().
  std::shared_ptr<NcclWork> allreduce_async(const Tensor& t, NcclReduce op = NcclReduce::sum);
  // In place over a contiguous tensor on device(), any dtype; stream-ordered as allreduce.
  void broadcast(const Tensor& t, int root = 0);
  std::shared_ptr<NcclWork> broadcast_async(const Tensor& t, int root = 0);
  // Blocks the host until the communication stream is idle; throws on an NCCL error.
  void synchronize();

  // cudaStream_t of the communication stream, as an opaque pointer.
  void* stream_handle() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace hpdl::dist
