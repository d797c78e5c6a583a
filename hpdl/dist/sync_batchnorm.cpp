// convert_sync_batchnorm: wires nn::BatchNorm's cross-replica reducer to a
// Communicator. The reducer goes through the communication thread rather
// than a blocking MPI call from the compute thread, because backward may be
// all-reducing gradient buckets on that thread at the same moment.
#include "hpdl/dist/sync_batchnorm.h"

#include "hpdl/core/error.h"
#include "hpdl/nn/layers.h"

namespace hpdl::dist {

int convert_sync_batchnorm(nn::Module& model, Communicator& comm) {
  int converted = 0;
  for (auto& [name, m] : model.named_modules()) {
    auto* bn = dynamic_cast<nn::BatchNorm*>(m.get());
    if (!bn) continue;
    Communicator* c = &comm;
    bn->cross_replica_sum = [c](Tensor& t) {
      HPDL_CHECK(t.is_contiguous() && t.device() == kCPU,
                 "sync batch norm: statistics must be a contiguous CPU tensor, got {} on {}", shape_str(t.shape()),
                 t.device().str());
      if (c->size() > 1) c->allreduce_async(t)->wait();
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

}  // namespace hpdl::dist
