// NcclCommunicator without CUDA: libhpdl was built without the CUDA toolkit,
// so creating one (or asking for a GPU) throws; nothing else is reachable.
#include "hpdl/dist/nccl.h"

namespace hpdl::dist {
namespace {
[[noreturn]] void no_cuda() {
  HPDL_FAIL("NCCL: this libhpdl was built without CUDA (HPDL_CUDA=OFF); GPU ranks need a CUDA build");
}
}  // namespace

struct NcclWork::Impl {};
struct NcclCommunicator::Impl {};

bool nccl_compiled() { return false; }
int select_device(Communicator&) { no_cuda(); }

NcclWork::NcclWork(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclWork::~NcclWork() = default;
void NcclWork::wait() { no_cuda(); }
void NcclWork::synchronize() { no_cuda(); }
bool NcclWork::done() const { no_cuda(); }

NcclCommunicator::NcclCommunicator(Communicator&, int) { no_cuda(); }
NcclCommunicator::~NcclCommunicator() = default;
int NcclCommunicator::rank() const { no_cuda(); }
int NcclCommunicator::size() const { no_cuda(); }
Device NcclCommunicator::device() const { no_cuda(); }
Communicator& NcclCommunicator::mpi() const { no_cuda(); }
void NcclCommunicator::allreduce(const Tensor&, NcclReduce) { no_cuda(); }
std::shared_ptr<NcclWork> NcclCommunicator::allreduce_async(const Tensor&, NcclReduce) { no_cuda(); }
void NcclCommunicator::broadcast(const Tensor&, int) { no_cuda(); }
std::shared_ptr<NcclWork> NcclCommunicator::broadcast_async(const Tensor&, int) { no_cuda(); }
void NcclCommunicator::synchronize() { no_cuda(); }
void* NcclCommunicator::stream_handle() const { no_cuda(); }

}  // namespace hpdl::dist
