// Synchronized batch normalization: every BatchNorm layer of a model computes
// its batch statistics, and its backward sums, over the union of all ranks'
// batches (the "cross-GPU BN" of Peng et al. 2018, MegDet), so N ranks x
// batch B train exactly like one process x batch N*B. nn::BatchNorm carries an
// optional reducer; this file installs one that all-reduces over a Communicator.
#pragma once

#include <utility>
#include <vector>

#include "hpdl/dist/communicator.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/module.h"

namespace hpdl::dist {

// Installs a cross-replica reducer on every nn::BatchNorm (1d and 2d) in
// `model` (walking named_modules). The reducer runs its allreduce on `comm`'s
// communication thread, in order with DataParallel's bucket allreduces (MPI
// needs one order of collectives on a communicator). `comm` must outlive the
// model's use. Returns the number of layers converted. Every rank must run
// the same layers in the same order in training mode; eval mode is unchanged
// (running statistics, which stay identical on every rank).
//
// group_size > 0 syncs over consecutive groups of that many ranks instead
// (ranks r with equal r / group_size: "BN groups", as large-batch ResNet-50
// runs use to keep the normalization batch fixed while the world grows). It
// must divide comm.size(); 0 means every rank. The group communicator is split
// here (a collective over `comm`) and owned by the installed reducers; its
// allreduces still run on `comm`'s communication thread, so they stay ordered
// with the gradient buckets. The groups' running statistics differ, so keep
// DataParallel's broadcast_buffers on when group_size < comm.size().
int convert_sync_batchnorm(nn::Module& model, Communicator& comm, int group_size = 0);
// Removes the reducers again (per-rank statistics). Returns the number of layers.
int revert_sync_batchnorm(nn::Module& model);

// While it lives, the batch norms of a module normalize with this process's batch alone: the
// reducers convert_sync_batchnorm installed are set aside and put back after. For work one rank
// may do alone in training mode (a GAN's sampling), which must not start a collective the other
// ranks never join. A module without reducers is left as it is.
class LocalBatchNorm {
 public:
  explicit LocalBatchNorm(nn::Module& m);
  ~LocalBatchNorm();
  LocalBatchNorm(const LocalBatchNorm&) = delete;
  LocalBatchNorm& operator=(const LocalBatchNorm&) = delete;

 private:
  std::vector<std::pair<nn::BatchNorm*, decltype(nn::BatchNorm::cross_replica_sum)>> saved_;
};

}  // namespace hpdl::dist
