// Synchronized batch normalization: every BatchNorm layer of a model computes
// its batch statistics, and its backward sums, over the union of all ranks'
// batches (the "cross-GPU BN" of Peng et al. 2018, MegDet), so N ranks x
// batch B train exactly like one process x batch N*B. nn::BatchNorm carries an
// optional reducer; this file installs one that all-reduces over a Communicator.
#pragma once

#include "hpdl/dist/communicator.h"
#include "hpdl/nn/module.h"

namespace hpdl::dist {

// Installs a cross-replica reducer on every nn::BatchNorm (1d and 2d) in
// `model` (walking named_modules). The reducer runs its allreduce on `comm`'s
// communication thread, in order with DataParallel's bucket allreduces (MPI
// needs one order of collectives on a communicator). `comm` must outlive the
// model's use. Returns the number of layers converted. Every rank must run
// the same layers in the same order in training mode; eval mode is unchanged
// (running statistics, which stay identical on every rank).
int convert_sync_batchnorm(nn::Module& model, Communicator& comm);
// Removes the reducers again (per-rank statistics). Returns the number of layers.
int revert_sync_batchnorm(nn::Module& model);

}  // namespace hpdl::dist
