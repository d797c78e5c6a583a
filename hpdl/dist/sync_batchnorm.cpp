// convert_sync_batchnorm: wires nn::BatchNorm's cross-replica reducer to a
// Communicator. The reducer goes through the communication thread rather
// than a blocking MPI call from the compute thread, because backward may be
// all-reducing gradient buckets on that thread at the same moment.
#include "hpdl/dist/sync_batchnorm.h"

#include "hpdl/core/error.h"
#include "hpdl/nn/layers.h"

namespace hpdl::dist {

int convert_sync_batchnorm(nn::Module& model, Communicator& comm, int group_size) {
  const int n = comm.size();
  HPDL_CHECK(group_size >= 0 && group_size <= n && (group_size == 0 || n % group_size == 0),
             "sync batch norm: a group of {} ranks does not divide the {} ranks (use a divisor of {}, or 0 for all)",
             group_size, n, n);
  // Every rank splits (a collective), even when the model has no batch norm layer.
  std::shared_ptr<Communicator> group;
  if (group_size > 0 && group_size < n) group = comm.split(comm.rank() / group_size, comm.rank());
  int converted = 0;
  for (auto& [name, m] : model.named_modules()) {
    auto* bn = dynamic_cast<nn::BatchNorm*>(m.get());
    if (!bn) continue;
    Communicator* c = &comm;
    bn->cross_replica_sum = [c, group](Tensor& t) {
      HPDL_CHECK(t.is_contiguous() && t.device() == kCPU,
                 "sync batch norm: statistics must be a contiguous CPU tensor, got {} on {}", shape_str(t.shape()),
                 t.device().str());
      if (group) {
        // A blocking allreduce over the group, issued from the world's communication thread: the
        // compute thread waits, and no other MPI call runs meanwhile.
        if (group->size() > 1) c->enqueue([&group, &t] { group->allreduce(t); })->wait();
      } else if (c->size() > 1) {
        c->allreduce_async(t)->wait();
      }
    };
    ++converted;
  }
  return converted;
}

int revert_sync_batchnorm(nn::Module& model) {
  int reverted = 0;
  for (auto& [name, m] : model.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm*>(m.get())) {
      bn->cross_replica_sum = nullptr;
      ++reverted;
    }
  return reverted;
}

LocalBatchNorm::LocalBatchNorm(nn::Module& m) {
  for (auto& [name, child] : m.named_modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm*>(child.get()); bn && bn->cross_replica_sum) {
      saved_.emplace_back(bn, std::move(bn->cross_replica_sum));
      bn->cross_replica_sum = nullptr;
    }
}

LocalBatchNorm::~LocalBatchNorm() {
  for (auto& [bn, reducer] : saved_) bn->cross_replica_sum = std::move(reducer);
}

}  // namespace hpdl::dist
