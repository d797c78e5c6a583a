// MPI-backed Communicator and its communication thread.
#include "hpdl/dist/communicator.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "hpdl/core/env.h"
#include "hpdl/core/threading.h"

namespace hpdl::dist {
namespace {

int g_thread_level = MPI_THREAD_SINGLE;
std::mutex g_mpi_mu;  // serializes MPI calls when the library is not MPI_THREAD_MULTIPLE

// Takes the lock only when MPI cannot be called from several threads at once.
struct MpiLock {
  std::unique_lock<std::mutex> lock;
  MpiLock() {
    if (g_thread_level < MPI_THREAD_MULTIPLE) lock = std::unique_lock<std::mutex>(g_mpi_mu);
  }
};

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  HPDL_FAIL("{} failed: {}", call, std::string(msg, static_cast<size_t>(len)));
}

// bfloat16 sum for MPI: bf16 on the wire halves the bytes (gradient compression).
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const bf16*>(in);
  auto* b = static_cast<bf16*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = bf16(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

// float16 sum likewise (summed in float32, rounded back to nearest even).
void f16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const f16*>(in);
  auto* b = static_cast<f16*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f16(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

MPI_Op g_bf16_sum = MPI_OP_NULL;
MPI_Datatype g_bf16_type = MPI_DATATYPE_NULL;
MPI_Op g_f16_sum = MPI_OP_NULL;
MPI_Datatype g_f16_type = MPI_DATATYPE_NULL;

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i64: return MPI_INT64_T;
    case DType::i32: return MPI_INT32_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::bf16: return g_bf16_type;
    case DType::f16: return g_f16_type;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceKind op, DType t) {
  if (t == DType::bf16) {
    HPDL_CHECK(op == ReduceKind::sum, "allreduce: bfloat16 supports only sum");
    return g_bf16_sum;
  }
  if (t == DType::f16) {
    HPDL_CHECK(op == ReduceKind::sum, "allreduce: float16 supports only sum");
    return g_f16_sum;
  }
  switch (op) {
    case ReduceKind::sum: return MPI_SUM;
    case ReduceKind::max: return MPI_MAX;
    case ReduceKind::min: return MPI_MIN;
  }
  return MPI_SUM;
}

// SIGTERM and SIGUSR1 (a job's "checkpoint and stop" / "checkpoint now", taken by
// the Trainer's sigwait thread) and SIGUSR2 (which wakes that thread) blocked on
// the calling thread while it lives; threads started meanwhile inherit the
// block. So MPI's own threads and the communicator thread never run a signal
// handler in the middle of their work: the signal goes to a thread that waits
// for it, or, outside a run, to the main thread (default action: terminate).
class BlockJobSignals {
 public:
  BlockJobSignals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  BlockJobSignals(const BlockJobSignals&) = delete;
  BlockJobSignals& operator=(const BlockJobSignals&) = delete;
  ~BlockJobSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

void init(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    const BlockJobSignals block;  // MPI's progress threads start without the job signals
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &g_thread_level), "MPI_Init_thread");
    std::atexit(finalize_at_exit);
  } else {
    MPI_Query_thread(&g_thread_level);
  }
  if (g_bf16_type == MPI_DATATYPE_NULL) {
    MPI_Type_contiguous(2, MPI_BYTE, &g_bf16_type);
    MPI_Type_commit(&g_bf16_type);
    MPI_Op_create(bf16_sum, 1, &g_bf16_sum);
  }
  if (g_f16_type == MPI_DATATYPE_NULL) {
    MPI_Type_contiguous(2, MPI_BYTE, &g_f16_type);
    MPI_Type_commit(&g_f16_type);
    MPI_Op_create(f16_sum, 1, &g_f16_sum);
  }
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  set_error_rank(size > 1 ? rank : -1);
}

bool is_initialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  return initialized != 0;
}

void Work::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_; });
  if (error_) std::rethrow_exception(error_);
}

bool Work::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

void Work::finish(std::exception_ptr e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = e;
  }
  cv_.notify_all();
}

Communicator& Communicator::world() {
  static Communicator* w = [] {
    init(nullptr, nullptr);
    return new Communicator(MPI_COMM_WORLD, false);  // leaked on purpose: must outlive static destructors
  }();
  return *w;
}

Communicator::Communicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

Communicator::~Communicator() {
  if (comm_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      stop_ = true;
    }
    queue_cv_.notify_all();
    comm_thread_.join();
  }
  free_hierarchy();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && !finalized) MPI_Comm_free(&comm_);
}

int Communicator::thread_level() const { return g_thread_level; }

void Communicator::allreduce(const Tensor& t, ReduceKind op) {
  HPDL_CHECK(t.device().is_cpu() && t.is_contiguous(), "allreduce: needs a contiguous CPU tensor, got {}", t.str());
  allreduce(t.raw_data(), t.numel(), t.dtype(), op);
  t.bump_version();  // written in place (design decision 73)
}

void Communicator::allreduce(void* data, int64_t count, DType dtype, ReduceKind op) {
  if (size_ == 1 || count == 0) return;
  MpiLock lock;
  // MPI counts are int: large buffers go in chunks.
  constexpr int64_t kMaxCount = 1 << 30;
  char* p = static_cast<char*>(data);
  const bool hier = hier_ && count * int64_t(dtype_size(dtype)) >= hier_->min_bytes;
  if (hier) hier_calls_++;
  for (int64_t done = 0; done < count; done += kMaxCount) {
    int n = static_cast<int>(std::min(kMaxCount, count - done));
    if (hier)
      allreduce_hierarchical(p + done * dtype_size(dtype), n, dtype, op);
    else
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, p + done * dtype_size(dtype), n, mpi_type(dtype), mpi_op(op, dtype), comm_),
                "MPI_Allreduce");
  }
}

void Communicator::allreduce_hierarchical(char* p, int n, DType dtype, ReduceKind op) {
  Hierarchy& h = *hier_;
  const int L = h.node_size;
  std::vector<int> counts(static_cast<size_t>(L)), displs(static_cast<size_t>(L));
  for (int i = 0, at = 0; i < L; ++i) {  // the first n % L shares get one element more
    counts[size_t(i)] = n / L + (i < n % L ? 1 : 0);
    displs[size_t(i)] = at;
    at += counts[size_t(i)];
  }
  const int mine = counts[size_t(h.node_rank)];
  const size_t esize = dtype_size(dtype);
  h.scratch.resize(std::max<size_t>(1, size_t(mine) * esize));
  const MPI_Datatype type = mpi_type(dtype);
  const MPI_Op mop = mpi_op(op, dtype);
  check_mpi(MPI_Reduce_scatter(p, h.scratch.data(), counts.data(), type, mop, h.node), "MPI_Reduce_scatter (node)");
  if (mine > 0) check_mpi(MPI_Allreduce(MPI_IN_PLACE, h.scratch.data(), mine, type, mop, h.cross), "MPI_Allreduce (cross)");
  check_mpi(MPI_Allgatherv(h.scratch.data(), mine, type, p, counts.data(), displs.data(), type, h.node),
            "MPI_Allgatherv (node)");
}

void Communicator::free_hierarchy() {
  if (!hier_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    MPI_Comm_free(&hier_->node);
    MPI_Comm_free(&hier_->cross);
  }
  hier_.reset();
}

MPI_Comm Communicator::split_nodes(int node_id) const {
  if (node_id < 0) node_id = env_node_id();
  MPI_Comm node = MPI_COMM_NULL;
  MpiLock lock;
  if (node_id >= 0)
    check_mpi(MPI_Comm_split(comm_, node_id, rank_, &node), "MPI_Comm_split (node)");
  else
    check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  return node;
}

Communicator::NodeLayout Communicator::layout_of(MPI_Comm node) const {
  MpiLock lock;
  int node_rank = 0, node_size = 1;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_size(node, &node_size);
  int sizes[2] = {node_size, -node_size}, first = node_rank == 0 ? 1 : 0;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, sizes, 2, MPI_INT, MPI_MAX, comm_), "MPI_Allreduce");
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_SUM, comm_), "MPI_Allreduce");
  return {first, -sizes[1], sizes[0]};
}

Communicator::CoreShare Communicator::core_share() const {
  cpu_set_t mine;
  CPU_ZERO(&mine);
  CoreShare share;
  if (sched_getaffinity(0, sizeof mine, &mine) == 0) share.cores = std::max(1, CPU_COUNT(&mine));
  else CPU_SET(0, &mine);  // unknown: count as one core of its own
  if (size_ == 1) return share;
  MpiLock lock;
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  int node_size = 1;
  MPI_Comm_size(node, &node_size);
  std::vector<cpu_set_t> all(static_cast<size_t>(node_size));
  const int rc = MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, node);
  MPI_Comm_free(&node);
  check_mpi(rc, "MPI_Allgather (affinity masks)");
  share.ranks = 0;
  for (auto& other : all) {
    cpu_set_t both;
    CPU_AND(&both, &mine, &other);
    if (CPU_COUNT(&both) > 0) ++share.ranks;
  }
  return share;
}

int Communicator::shared_core_threads(const CoreShare& share) {
  if (std::getenv("OMP_NUM_THREADS") != nullptr || share.ranks <= 1 || share.threads() >= num_threads()) return 0;
  return share.threads();
}

std::string Communicator::split_shared_cores() const {
  if (size_ == 1) return "";
  const CoreShare share = core_share();
  const int threads = shared_core_threads(share);
  if (threads == 0) return "";
  set_num_threads(threads);
  return fmt::format("rank {}'s {} cores are shared by {} ranks of its machine; train.threads or OMP_NUM_THREADS "
                     "sets the count", rank_, share.cores, share.ranks);
}

Communicator::NodeLayout Communicator::node_layout(int node_id) const {
  if (size_ == 1) return {};
  MPI_Comm node = split_nodes(node_id);
  const NodeLayout layout = layout_of(node);
  MpiLock lock;
  MPI_Comm_free(&node);
  return layout;
}

bool Communicator::set_hierarchical(bool on, int node_id, int64_t min_bytes) {
  free_hierarchy();
  if (!on || size_ == 1) return false;
  MPI_Comm node = split_nodes(node_id);
  const NodeLayout layout = layout_of(node);
  MpiLock lock;
  if (layout.nodes == 1 || layout.min_ranks != layout.max_ranks || layout.max_ranks == 1) {
    MPI_Comm_free(&node);
    return false;
  }
  auto h = std::make_unique<Hierarchy>();
  h->min_bytes = min_bytes;
  h->node = node;
  MPI_Comm_rank(h->node, &h->node_rank);
  MPI_Comm_size(h->node, &h->node_size);
  check_mpi(MPI_Comm_split(comm_, h->node_rank, rank_, &h->cross), "MPI_Comm_split (cross)");
  hier_ = std::move(h);
  return true;
}

void Communicator::reduce(void* data, int64_t count, DType dtype, int root, ReduceKind op) {
  HPDL_CHECK(root >= 0 && root < size_, "reduce: root {} outside [0, {})", root, size_);
  if (size_ == 1 || count == 0) return;
  MpiLock lock;
  constexpr int64_t kMaxCount = 1 << 30;
  char* p = static_cast<char*>(data);
  for (int64_t done = 0; done < count; done += kMaxCount) {
    int n = static_cast<int>(std::min(kMaxCount, count - done));
    void* at = p + done * dtype_size(dtype);
    // The root reduces in place; elsewhere the receive buffer is not read.
    check_mpi(MPI_Reduce(rank_ == root ? MPI_IN_PLACE : at, rank_ == root ? at : nullptr, n, mpi_type(dtype),
                         mpi_op(op, dtype), root, comm_), "MPI_Reduce");
  }
}

std::shared_ptr<Work> Communicator::enqueue(std::function<void()> fn) {
  auto work = std::make_shared<Work>();
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (!comm_thread_.joinable()) {
      const BlockJobSignals block;
      comm_thread_ = std::thread([this] { comm_loop(); });
    }
    queue_.emplace_back(std::move(fn), work);
  }
  queue_cv_.notify_one();
  return work;
}

std::shared_ptr<Work> Communicator::allreduce_async(const Tensor& t, ReduceKind op) {
  HPDL_CHECK(t.device().is_cpu() && t.is_contiguous(), "allreduce_async: needs a contiguous CPU tensor, got {}",
             t.str());
  Tensor keep = t;
  return enqueue([this, keep, op] { allreduce(keep, op); });
}

void Communicator::comm_loop() {
  adopt_num_threads();  // bucket jobs run kernels (the 1/n scale): the main thread's team size
  for (;;) {
    std::pair<std::function<void()>, std::shared_ptr<Work>> item;
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    std::exception_ptr err;
    try {
      item.first();
    } catch (...) {
      err = std::current_exception();
    }
    item.second->finish(err);
  }
}

void Communicator::broadcast(const Tensor& t, int root) {
  HPDL_CHECK(t.device().is_cpu() && t.is_contiguous(), "broadcast: needs a contiguous CPU tensor, got {}", t.str());
  broadcast_bytes(t.raw_data(), static_cast<int64_t>(t.nbytes()), root);
  if (rank_ != root) t.bump_version();
}

void Communicator::broadcast_bytes(void* data, int64_t nbytes, int root) {
  if (size_ == 1 || nbytes == 0) return;
  HPDL_CHECK(root >= 0 && root < size_, "broadcast: root {} outside [0, {})", root, size_);
  MpiLock lock;
  constexpr int64_t kMax = 1 << 30;
  char* p = static_cast<char*>(data);
  for (int64_t done = 0; done < nbytes; done += kMax) {
    check_mpi(MPI_Bcast(p + done, static_cast<int>(std::min(kMax, nbytes - done)), MPI_BYTE, root, comm_), "MPI_Bcast");
  }
}

void Communicator::broadcast_regions(const std::vector<std::pair<void*, int64_t>>& regions, int root) {
  if (size_ == 1 || regions.empty()) return;
  HPDL_CHECK(root >= 0 && root < size_, "broadcast_regions: root {} outside [0, {})", root, size_);
  std::vector<int> lengths;
  std::vector<MPI_Aint> displacements;
  for (const auto& [p, n] : regions) {
    HPDL_CHECK(n >= 0 && n < (1ll << 31), "broadcast_regions: a region of {} bytes exceeds the 2 GiB MPI count limit", n);
    if (n == 0) continue;
    MPI_Aint a;
    check_mpi(MPI_Get_address(p, &a), "MPI_Get_address");
    lengths.push_back(static_cast<int>(n));
    displacements.push_back(a);
  }
  if (lengths.empty()) return;
  MpiLock lock;
  // Built per call: cheap next to the bytes, and never stale if a tensor's storage moved.
  MPI_Datatype type;
  check_mpi(MPI_Type_create_hindexed(static_cast<int>(lengths.size()), lengths.data(), displacements.data(), MPI_BYTE,
                                     &type), "MPI_Type_create_hindexed");
  check_mpi(MPI_Type_commit(&type), "MPI_Type_commit");
  const int rc = MPI_Bcast(MPI_BOTTOM, 1, type, root, comm_);
  MPI_Type_free(&type);
  check_mpi(rc, "MPI_Bcast");
}

Tensor Communicator::allgather(const Tensor& t) {
  Tensor src = t.contiguous();
  Shape s = src.shape();
  s.insert(s.begin(), size_);
  Tensor out = Tensor::empty(s, src.dtype());
  if (size_ == 1) {
    out.copy_(src);
    return out;
  }
  MpiLock lock;
  HPDL_CHECK(src.nbytes() < (1ull << 31), "allgather: {} bytes per rank exceeds the 2 GiB MPI count limit", src.nbytes());
  check_mpi(MPI_Allgather(src.raw_data(), static_cast<int>(src.nbytes()), MPI_BYTE, out.raw_data(),
                          static_cast<int>(src.nbytes()), MPI_BYTE, comm_),
            "MPI_Allgather");
  return out;
}

std::vector<std::vector<char>> Communicator::gather_bytes(const std::vector<char>& mine, int root) {
  HPDL_CHECK(root >= 0 && root < size_, "gather_bytes: root {} outside [0, {})", root, size_);
  if (size_ == 1) return {mine};
  HPDL_CHECK(mine.size() < (1ull << 31), "gather_bytes: {} bytes on this rank exceed the 2 GiB MPI count limit",
             mine.size());
  MpiLock lock;
  // First every rank's size, then the bytes into one buffer at the offsets those sizes give.
  const int n = static_cast<int>(mine.size());
  std::vector<int> counts(rank_ == root ? size_ : 0), offsets(counts.size());
  check_mpi(MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, root, comm_), "MPI_Gather");
  int64_t total = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    HPDL_CHECK(total + counts[r] < (1ll << 31), "gather_bytes: {} bytes in all exceed the 2 GiB MPI count limit",
               total + counts[r]);
    offsets[r] = static_cast<int>(total);
    total += counts[r];
  }
  std::vector<char> all(static_cast<size_t>(total));
  check_mpi(MPI_Gatherv(mine.data(), n, MPI_BYTE, all.data(), counts.data(), offsets.data(), MPI_BYTE, root, comm_),
            "MPI_Gatherv");
  std::vector<std::vector<char>> out;
  for (size_t r = 0; r < counts.size(); ++r)
    out.emplace_back(all.begin() + offsets[r], all.begin() + offsets[r] + counts[r]);
  return out;
}

void Communicator::barrier() {
  if (size_ == 1) return;
  MpiLock lock;
  check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
}

namespace {

// The pause between two polls of a waiting send or receive: short at first
// (a reply usually comes at once), then up to 2 ms, which costs a waiting
// rank almost no CPU and a scheduler's reply at most that much latency.
struct Backoff {
  std::chrono::microseconds pause{20};
  void wait() {
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(2000));
  }
};

}  // namespace

void Communicator::idle_barrier() {
  if (size_ == 1) return;
  MPI_Request req;
  {
    MpiLock lock;
    check_mpi(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier");
  }
  for (Backoff b;; b.wait()) {
    int done = 0;
    {
      MpiLock lock;
      check_mpi(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    }
    if (done) return;
  }
}

void Communicator::send_bytes(const void* data, int64_t nbytes, int dest, int tag) {
  HPDL_CHECK(dest >= 0 && dest < size_, "send_bytes: destination rank {} outside [0, {})", dest, size_);
  HPDL_CHECK(nbytes >= 0 && nbytes < (int64_t{1} << 31), "send_bytes: {} bytes (a message is at most 2 GiB)", nbytes);
  MPI_Request req;
  {
    MpiLock lock;
    // MPI's send buffer is non-const only in old MPI headers.
    check_mpi(MPI_Isend(const_cast<void*>(data), static_cast<int>(nbytes), MPI_BYTE, dest, tag, comm_, &req),
              "MPI_Isend");
  }
  for (Backoff b;; b.wait()) {
    int done = 0;
    {
      MpiLock lock;
      check_mpi(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    }
    if (done) return;
  }
}

std::vector<uint8_t> Communicator::recv_bytes(int source, int tag, int* from) {
  for (Backoff b;; b.wait())
    if (auto msg = try_recv_bytes(source, tag, from)) return std::move(*msg);
}

std::optional<std::vector<uint8_t>> Communicator::try_recv_bytes(int source, int tag, int* from) {
  HPDL_CHECK(source == kAnySource || (source >= 0 && source < size_), "recv_bytes: source rank {} outside [0, {})",
             source, size_);
  MpiLock lock;
  // A matched probe removes the message from matching, so two threads
  // receiving at once can never both take it (as MPI_Iprobe + MPI_Recv could).
  int found = 0;
  MPI_Message msg;
  MPI_Status st;
  check_mpi(MPI_Improbe(source, tag, comm_, &found, &msg, &st), "MPI_Improbe");
  if (!found) return std::nullopt;
  int count = 0;
  MPI_Get_count(&st, MPI_BYTE, &count);
  std::vector<uint8_t> out(static_cast<size_t>(count));
  check_mpi(MPI_Mrecv(out.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
  if (from) *from = st.MPI_SOURCE;
  return out;
}

std::unique_ptr<PendingSend> Communicator::isend_bytes(std::vector<uint8_t> bytes, int dest, int tag) {
  HPDL_CHECK(dest >= 0 && dest < size_, "isend_bytes: destination rank {} outside [0, {})", dest, size_);
  HPDL_CHECK(bytes.size() < (size_t{1} << 31), "isend_bytes: {} bytes (a message is at most 2 GiB)", bytes.size());
  std::unique_ptr<PendingSend> s(new PendingSend());
  s->bytes_ = std::move(bytes);
  MpiLock lock;
  check_mpi(MPI_Isend(s->bytes_.data(), static_cast<int>(s->bytes_.size()), MPI_BYTE, dest, tag, comm_, &s->req_),
            "MPI_Isend");
  return s;
}

bool PendingSend::test() {
  if (done_) return true;
  int flag = 0;
  {
    MpiLock lock;
    check_mpi(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE), "MPI_Test");
  }
  done_ = flag != 0;
  return done_;
}

void PendingSend::wait() {
  for (Backoff b; !test(); b.wait()) {
  }
}

PendingSend::~PendingSend() {
  try {
    wait();
  } catch (...) {
    // An MPI error while waiting has nowhere to go from a destructor; the job's MPI error handler reports it.
  }
}

std::unique_ptr<Communicator> Communicator::split(int color, int key) const {
  MPI_Comm out;
  {
    MpiLock lock;
    check_mpi(MPI_Comm_split(comm_, color, key, &out), "MPI_Comm_split");
  }
  return std::unique_ptr<Communicator>(new Communicator(out, true));
}

std::unique_ptr<Communicator> Communicator::split_node() const {
  MPI_Comm out;
  {
    MpiLock lock;
    check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &out), "MPI_Comm_split_type");
  }
  return std::unique_ptr<Communicator>(new Communicator(out, true));
}

void Communicator::abort(const std::string& message, int code) const {
  std::fprintf(stderr, "hpdl: error: [rank %d] %s (aborting all %d ranks)\n", rank_, message.c_str(), size_);
  std::fflush(stderr);
  if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace hpdl::dist
