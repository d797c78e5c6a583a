// NcclCommunicator: NCCL collectives on a communication stream, bootstrapped
// over MPI. Compiled only with CUDA (hpdl/CMakeLists.txt); nccl_stub.cpp
// stands in without it.
#include "hpdl/dist/nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"

namespace hpdl::dist {
namespace {

const char* nccl_last_error() {
  const char* s = ncclGetLastError(nullptr);
  return s && *s ? s : "no further detail";
}

}  // namespace

// Names the call, NCCL's error string and its last error message.
#define HPDL_NCCL_CHECK(call)                                                                          \
  do {                                                                                                 \
    ncclResult_t hpdl_r_ = (call);                                                                     \
    if (hpdl_r_ != ncclSuccess)                                                                        \
      HPDL_FAIL("NCCL call {} failed: {} ({})", #call, ncclGetErrorString(hpdl_r_), nccl_last_error()); \
  } while (0)

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i64: return ncclInt64;
    case DType::i32: return ncclInt32;
    case DType::u8: return ncclUint8;
  }
  HPDL_FAIL("NCCL: unsupported dtype {}", dtype_name(t));
}

ncclRedOp_t nccl_op(NcclReduce op, DType t) {
  switch (op) {
    case NcclReduce::sum: return ncclSum;
    case NcclReduce::avg:
      HPDL_CHECK(dtype_is_float(t),
                 "NCCL allreduce: avg needs a floating-point tensor, got {}", dtype_name(t));
      return ncclAvg;
    case NcclReduce::max: return ncclMax;
    case NcclReduce::min: return ncclMin;
  }
  return ncclSum;
}

// Throws when the communicator has failed asynchronously (a peer died, a network error).
void check_async(ncclComm_t comm) {
  if (!comm) return;
  ncclResult_t async = ncclSuccess;
  HPDL_NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
  if (async != ncclSuccess && async != ncclInProgress)
    HPDL_FAIL("NCCL communicator failed asynchronously: {} ({})", ncclGetErrorString(async), nccl_last_error());
}

}  // namespace

bool nccl_compiled() { return true; }

int select_device(Communicator& comm) {
  const int n = cuda::device_count();
  HPDL_CHECK(n > 0, "NCCL: no CUDA device visible to rank {} of {}", comm.rank(), comm.size());
  auto node = comm.split_node();
  const int local = node->rank(), local_size = node->size();
  const int dev = local % n;
  cudaDeviceProp prop;
  HPDL_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  // Same GPU <=> same UUID, whatever CUDA_VISIBLE_DEVICES each rank was given.
  int64_t uuid[2];
  static_assert(sizeof uuid == sizeof prop.uuid.bytes);
  std::memcpy(uuid, prop.uuid.bytes, sizeof uuid);
  auto all = node->allgather(Tensor::from_vector<int64_t>({uuid[0], uuid[1]}, {2})).to_vector<int64_t>();
  int shares_with = -1;
  for (int q = 0; q < local_size && shares_with < 0; ++q)
    if (q != local && all[2 * q] == uuid[0] && all[2 * q + 1] == uuid[1]) shares_with = q;
  // Every rank learns whether any rank anywhere failed, so none waits in ncclCommInitRank.
  Tensor flag = Tensor::from_vector<int64_t>({shares_with >= 0 ? 1 : 0}, {1});
  comm.allreduce(flag, ReduceKind::max);
  HPDL_CHECK(shares_with < 0, "NCCL: local ranks {} and {} of this node would share GPU {} ({} ranks on the node, {} "
             "visible GPUs): NCCL refuses two ranks of one communicator on one GPU; start at most one rank per "
             "GPU (mpirun -npernode N, srun --ntasks-per-node=N --gpus-per-task=1)",
             local, shares_with, dev, local_size, n);
  HPDL_CHECK(flag.to_vector<int64_t>()[0] == 0, "NCCL: two ranks of another node would share a GPU (see that "
             "rank's error); start at most one rank per GPU");
  return dev;
}

// ---------------------------------------------------------------- NcclWork

struct NcclWork::Impl {
  int device = 0;
  cudaStream_t compute = nullptr;
  cudaEvent_t done = nullptr;
  ncclComm_t comm = nullptr;
  Tensor keep;  // the collective's buffer stays allocated until the work is gone
  bool waited = false;
  ~Impl() {
    if (done) (void)cudaEventDestroy(done);
  }
};

NcclWork::NcclWork(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NcclWork::~NcclWork() {
  // The buffer may return to the allocator, which hands it to later work on
  // the compute stream: that work must come after the collective.
  if (impl_ && !impl_->waited) {
    try {
      wait();
    } catch (...) {
    }
  }
}

void NcclWork::wait() {
  HPDL_CUDA_CHECK(cudaSetDevice(impl_->device));
  HPDL_CUDA_CHECK(cudaStreamWaitEvent(impl_->compute, impl_->done, 0));
  impl_->waited = true;
}

void NcclWork::synchronize() {
  HPDL_CUDA_CHECK(cudaSetDevice(impl_->device));
  HPDL_CUDA_CHECK(cudaEventSynchronize(impl_->done));
  check_async(impl_->comm);
}

bool NcclWork::done() const {
  cudaError_t e = cudaEventQuery(impl_->done);
  if (e == cudaErrorNotReady) return false;
  HPDL_CUDA_CHECK(e);
  return true;
}

// ---------------------------------------------------------------- NcclCommunicator

struct NcclCommunicator::Impl {
  Communicator* mpi = nullptr;
  int device = 0;
  int rank = 0, size = 1;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;  // the communication stream
  cudaEvent_t ready = nullptr;    // recorded on the compute stream before each collective
  std::mutex mu;                  // one NCCL call at a time, in one order

  ~Impl() {
    if (stream) (void)cudaStreamSynchronize(stream);
    if (comm) (void)ncclCommDestroy(comm);
    if (ready) (void)cudaEventDestroy(ready);
    if (stream) (void)cudaStreamDestroy(stream);
  }

  Device dev() const { return Device{DeviceType::cuda, device}; }

  // Orders `call(stream)` after the compute stream's queued work and records its end.
  template <typename Call>
  std::shared_ptr<NcclWork> launch(const char* what, const Tensor& t, Call&& call) {
    HPDL_CHECK(t.device() == dev(), "NCCL {}: tensor is on {}, this rank's communicator on {}", what,
               t.device().str(), dev().str());
    HPDL_CHECK(t.is_contiguous(), "NCCL {}: the tensor must be contiguous (shape {})", what, shape_str(t.shape()));
    std::lock_guard<std::mutex> lock(mu);
    cudaStream_t compute = cuda::stream_for(dev());  // also makes the device current in this thread
    HPDL_CUDA_CHECK(cudaEventRecord(ready, compute));
    HPDL_CUDA_CHECK(cudaStreamWaitEvent(stream, ready, 0));
    if (t.numel() > 0) call(stream);
    auto w = std::make_unique<NcclWork::Impl>();
    w->device = device;
    w->compute = compute;
    w->comm = comm;
    w->keep = t;
    HPDL_CUDA_CHECK(cudaEventCreateWithFlags(&w->done, cudaEventDisableTiming));
    HPDL_CUDA_CHECK(cudaEventRecord(w->done, stream));
    return std::shared_ptr<NcclWork>(new NcclWork(std::move(w)));
  }
};

NcclCommunicator::NcclCommunicator(Communicator& comm, int device) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.mpi = &comm;
  m.rank = comm.rank();
  m.size = comm.size();
  m.device = device >= 0 ? device : select_device(comm);
  HPDL_CHECK(m.device < cuda::device_count(), "NCCL: device cuda:{} is not available ({} CUDA devices visible)",
             m.device, cuda::device_count());
  cuda::stream_for(m.dev());  // makes the device current and creates its compute stream
  int least = 0, greatest = 0;
  HPDL_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  // High priority: a bucket's reduction kernels get SMs ahead of the backward kernels queued with it.
  HPDL_CUDA_CHECK(cudaStreamCreateWithPriority(&m.stream, cudaStreamNonBlocking, greatest));
  HPDL_CUDA_CHECK(cudaEventCreateWithFlags(&m.ready, cudaEventDisableTiming));
  // Bootstrap: rank 0 draws the unique id; MPI carries it (and rank 0's failure, if any) to all.
  struct {
    int ok;
    char error[256];
    ncclUniqueId id;
  } boot;
  std::memset(&boot, 0, sizeof boot);
  if (m.rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&boot.id);
    boot.ok = r == ncclSuccess;
    if (!boot.ok) std::snprintf(boot.error, sizeof boot.error, "%s (%s)", ncclGetErrorString(r), nccl_last_error());
  }
  comm.broadcast_bytes(&boot, static_cast<int64_t>(sizeof boot), 0);
  HPDL_CHECK(boot.ok, "NCCL call ncclGetUniqueId failed on rank 0: {}", boot.error);
  HPDL_NCCL_CHECK(ncclCommInitRank(&m.comm, m.size, boot.id, m.rank));
}

NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::rank() const { return impl_->rank; }
int NcclCommunicator::size() const { return impl_->size; }
Device NcclCommunicator::device() const { return impl_->dev(); }
Communicator& NcclCommunicator::mpi() const { return *impl_->mpi; }
void* NcclCommunicator::stream_handle() const { return impl_->stream; }

std::shared_ptr<NcclWork> NcclCommunicator::allreduce_async(const Tensor& t, NcclReduce op) {
  const ncclDataType_t type = nccl_type(t.dtype());
  const ncclRedOp_t red = nccl_op(op, t.dtype());
  ncclComm_t comm = impl_->comm;
  t.bump_version();  // written in place, stream-ordered (design decision 73)
  return impl_->launch("allreduce", t, [&](cudaStream_t s) {
    HPDL_NCCL_CHECK(ncclAllReduce(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()), type, red, comm, s));
  });
}

void NcclCommunicator::allreduce(const Tensor& t, NcclReduce op) { allreduce_async(t, op)->wait(); }

std::shared_ptr<NcclWork> NcclCommunicator::broadcast_async(const Tensor& t, int root) {
  HPDL_CHECK(root >= 0 && root < impl_->size, "NCCL broadcast: root {} is not a rank of {}", root, impl_->size);
  const ncclDataType_t type = nccl_type(t.dtype());
  ncclComm_t comm = impl_->comm;
  if (root != impl_->rank) t.bump_version();
  return impl_->launch("broadcast", t, [&](cudaStream_t s) {
    HPDL_NCCL_CHECK(ncclBroadcast(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()), type, root, comm, s));
  });
}

void NcclCommunicator::broadcast(const Tensor& t, int root) { broadcast_async(t, root)->wait(); }

void NcclCommunicator::synchronize() {
  HPDL_CUDA_CHECK(cudaSetDevice(impl_->device));
  HPDL_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  check_async(impl_->comm);
}

}  // namespace hpdl::dist
