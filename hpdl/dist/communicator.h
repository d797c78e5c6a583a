// dist::Communicator: every byte hpdl sends between ranks goes through here.
// It wraps one MPI communicator (the standard API only, so OpenMPI, MPICH and
// vendor MPIs all work). Run without mpirun, the world is one rank.
//
// Threading: MPI is initialized with MPI_THREAD_MULTIPLE when the library
// provides it; asynchronous collectives run on one dedicated communication
// thread per communicator (as Horovod does), so a bucket's allreduce makes
// progress while backward computes, whatever the MPI's progress model.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl::dist {

enum class ReduceKind { sum, max, min };

// A pending asynchronous operation. wait() blocks until it is done and
// rethrows its error, if any.
class Work {
 public:
  void wait();
  bool done() const;

 private:
  friend class Communicator;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  void finish(std::exception_ptr e);
};

// A point-to-point send in flight (Communicator::isend_bytes). It owns a copy
// of the bytes. test() polls once (true once the message has left the buffer;
// it may still be on its way), wait() polls with short sleeps until then, as
// send_bytes does. The destructor waits, so a message is never cancelled.
class PendingSend {
 public:
  ~PendingSend();
  PendingSend(const PendingSend&) = delete;
  PendingSend& operator=(const PendingSend&) = delete;
  bool test();
  void wait();

 private:
  friend class Communicator;
  PendingSend() = default;
  std::vector<uint8_t> bytes_;
  MPI_Request req_ = MPI_REQUEST_NULL;
  bool done_ = false;
};

class Communicator {
 public:
  // The world communicator; initializes MPI on first use (and finalizes at exit).
  static Communicator& world();

  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_; }

  // In place over a contiguous CPU tensor (float32, float64, bfloat16, int64).
  void allreduce(const Tensor& t, ReduceKind op = ReduceKind::sum);
  void allreduce(void* data, int64_t count, DType dtype, ReduceKind op = ReduceKind::sum);
  // In place to `root` (MPI_Reduce): afterwards root's buffer holds the
  // reduction; the other ranks' buffers are left as they were (their contents
  // were sent). ZeRO-2 reduces each gradient bucket to its owner this way.
  void reduce(void* data, int64_t count, DType dtype, int root, ReduceKind op = ReduceKind::sum);
  // Queued on the communication thread; operations complete in the order issued.
  // `t` must stay alive and untouched until the Work is done.
  std::shared_ptr<Work> allreduce_async(const Tensor& t, ReduceKind op = ReduceKind::sum);
  // Runs any function on the communication thread, in order with the collectives.
  std::shared_ptr<Work> enqueue(std::function<void()> fn);

  void broadcast(const Tensor& t, int root = 0);
  void broadcast_bytes(void* data, int64_t nbytes, int root = 0);
  // Broadcasts many separate memory regions ({pointer, bytes}, each under
  // 2 GiB) from `root` as ONE message, without packing them into a staging
  // buffer: an MPI derived datatype (hindexed, absolute addresses) describes
  // them. Every rank must give regions of the same sizes in the same order.
  void broadcast_regions(const std::vector<std::pair<void*, int64_t>>& regions, int root = 0);
  // Returns [size, ...t.shape()]: every rank's tensor, stacked in rank order.
  Tensor allgather(const Tensor& t);
  // Collects every rank's byte buffer on `root` (MPI_Gatherv): there the result
  // holds one buffer per rank, in rank order (root's own included); elsewhere
  // it is empty. Sizes may differ per rank; each must be under 2 GiB.
  std::vector<std::vector<char>> gather_bytes(const std::vector<char>& mine, int root = 0);
  void barrier();
  // A barrier that sleeps between polls (MPI_Ibarrier, then MPI_Test with a backoff to 2 ms)
  // instead of spinning in MPI's progress loop: for ranks that wait while one rank does serial
  // work (rank 0 training a classifier, writing files), so the waiting ranks leave their cores to it.
  void idle_barrier();

  // Point-to-point bytes, for control messages (a scheduler's requests and
  // replies), not bulk data. Both wait by polling (MPI_Test, MPI_Improbe)
  // with short sleeps, holding no lock between polls: another thread of this
  // rank may use MPI meanwhile at MPI_THREAD_SERIALIZED or above, and a rank
  // that waits minutes for a message does not spin a core that its
  // neighbours train on. A message is at most 2 GiB.
  // send_bytes returns once the buffer may be reused (the message may still
  // be in flight). recv_bytes takes the first message with `tag` from
  // `source` (kAnySource: from any rank) and sets *from to its sender.
  // Messages from one sender with one tag arrive in the order sent.
  static constexpr int kAnySource = MPI_ANY_SOURCE;
  void send_bytes(const void* data, int64_t nbytes, int dest, int tag);
  std::vector<uint8_t> recv_bytes(int source, int tag, int* from = nullptr);
  // The non-waiting halves. isend_bytes starts sending a copy of `bytes` and
  // returns at once; the receiver need not be ready. try_recv_bytes returns
  // the first message with `tag` from `source` if one has arrived, else
  // nothing (one matched probe; same ordering as recv_bytes).
  std::unique_ptr<PendingSend> isend_bytes(std::vector<uint8_t> bytes, int dest, int tag);
  std::optional<std::vector<uint8_t>> try_recv_bytes(int source, int tag, int* from = nullptr);

  // Ranks with equal color form one new communicator, ordered by key.
  std::unique_ptr<Communicator> split(int color, int key) const;
  // Ranks that share a node (MPI_COMM_TYPE_SHARED).
  std::unique_ptr<Communicator> split_node() const;

  // Hierarchical allreduce (what Horovod calls HOROVOD_HIERARCHICAL_ALLREDUCE).
  // When on, allreduce() of a buffer of at least `min_bytes` runs in three steps:
  // a reduce-scatter inside each node (shared memory), an allreduce of each
  // rank's 1/L share among the ranks with the same place on the other nodes
  // (L ranks a node), and an allgather inside the node. Across the network a
  // ring then has one hop per node, not per rank (2(N-1) latency terms for N
  // nodes instead of 2(NL-1)), and each node's link carries about twice the
  // buffer whatever the MPI's algorithm and the rank placement. Every rank ends
  // with the same bytes; they differ from a flat allreduce's only by the order
  // of the additions. Nodes are MPI_COMM_TYPE_SHARED, or `node_id` when >= 0
  // (else the variable HPDL_NODE_ID, when set): tests on one machine pose as
  // several nodes that way. Collective over this communicator; call it before
  // any asynchronous operation is queued. Returns whether the hierarchy is in
  // use: it needs more than one node, more than one rank per node and the same
  // number of ranks on every node (else allreduce stays flat).
  bool set_hierarchical(bool on, int node_id = -1, int64_t min_bytes = int64_t{256} << 10);

  // How this communicator's ranks lie on nodes (nodes as set_hierarchical finds them).
  // Collective. `hpdl info` prints it under mpirun.
  struct NodeLayout {
    int nodes = 1;
    int min_ranks = 1, max_ranks = 1;  // ranks per node, fewest and most
  };
  NodeLayout node_layout(int node_id = -1) const;
  // The cores this rank may run on (its CPU affinity mask) and how many ranks
  // of this communicator on the same machine (MPI_COMM_TYPE_SHARED: the real
  // machine, whatever HPDL_NODE_ID says) may run on at least one of them,
  // itself included. Under `mpirun --bind-to none` every rank of a node shares
  // all its cores; bound ranks (srun --cpus-per-task, --bind-to core) share
  // none. Collective.
  struct CoreShare {
    int cores = 1;
    int ranks = 1;
    // Threads for this rank that do not oversubscribe: cores / ranks, at least 1.
    int threads() const { return std::max(1, cores / std::max(1, ranks)); }
  };
  CoreShare core_share() const;
  // Collective: when OMP_NUM_THREADS is not set and this rank shares its cores
  // with other ranks of `comm` (core_share), lowers the thread count
  // (set_num_threads) to cores / ranks. Returns a note for the log when it
  // did ("rank 0's 2 cores are shared by 2 ranks of its machine"), else "".
  // An explicit count set afterwards (train.threads) still wins.
  std::string split_shared_cores() const;
  // The count split_shared_cores would set for this share, or 0 where it
  // would leave the thread count alone (OMP_NUM_THREADS set, no sharing, or
  // no fewer threads than now).
  static int shared_core_threads(const CoreShare& share);
  bool hierarchical() const { return hier_ != nullptr; }
  // Allreduce calls that went the hierarchical way (buffers of min_bytes and more).
  int64_t hierarchical_allreduces() const { return hier_calls_.load(); }

  // Ends the whole job: prints `message` once from this rank and calls
  // MPI_Abort, so a failing rank never leaves the others hanging.
  [[noreturn]] void abort(const std::string& message, int code = 1) const;

  // The MPI thread level granted (MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE).
  // Below MPI_THREAD_MULTIPLE every MPI call of this process takes one lock.
  int thread_level() const;

 private:
  explicit Communicator(MPI_Comm comm, bool owned);
  void comm_loop();
  // The three steps of a hierarchical allreduce of `n` (< 2^30) elements.
  void allreduce_hierarchical(char* p, int n, DType dtype, ReduceKind op);

  struct Hierarchy {
    MPI_Comm node = MPI_COMM_NULL;   // the ranks of this rank's node
    MPI_Comm cross = MPI_COMM_NULL;  // one rank of each node: those with this rank's node rank
    int node_rank = 0, node_size = 1;
    int64_t min_bytes = 0;
    std::vector<char> scratch;  // this rank's share (used on the calling thread only)
  };
  void free_hierarchy();
  // The node communicator (MPI_COMM_TYPE_SHARED, or `node_id` / HPDL_NODE_ID); caller frees it.
  MPI_Comm split_nodes(int node_id) const;
  NodeLayout layout_of(MPI_Comm node) const;  // collective over this communicator
  std::unique_ptr<Hierarchy> hier_;
  std::atomic<int64_t> hier_calls_{0};

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<std::pair<std::function<void()>, std::shared_ptr<Work>>> queue_;
  bool stop_ = false;
  std::thread comm_thread_;
};

// Initializes MPI explicitly (optional: world() does it lazily).
void init(int* argc, char*** argv);
bool is_initialized();

}  // namespace hpdl::dist
