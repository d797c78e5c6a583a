// Normalization. batch_norm normalizes x [N, C, ...] per channel; in training
// it uses batch statistics and updates running_mean/running_var in place
// (running = (1-momentum)*running + momentum*batch, unbiased batch variance),
// in eval it uses the running statistics. layer_norm normalizes over the last
// axis. group_norm normalizes x [N, C, ...] over each of num_groups groups of
// C / num_groups channels (and all spatial positions) per sample, then applies a
// per-channel gamma and beta (PyTorch's group_norm; num_groups == C is instance
// norm, 1 a layer norm over all of C, H, W with per-channel parameters).
// Backward: the fused kernels, or, under create_graph, the same gradients from
// differentiable ops (any order) for batch_norm (training and eval, the fused
// ReLU and residual variants included), layer_norm and group_norm;
// batch_norm_cross_replica is first-order only.
// batch_norm_cross_replica is the synchronized ("cross-GPU", Peng et al. 2018)
// variant: statistics over the union of every replica's batch.
#pragma once

#include <functional>

#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);
// max(0, batch_norm(...)) with the ReLU fused into the backend's batch-norm passes in training (one
// pass over the activations less each way on CUDA); equal to relu(batch_norm(...)) everywhere.
Tensor batch_norm_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                       const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);
// max(0, batch_norm(x) + residual): the last batch norm of a residual block, its residual add and
// ReLU in one output pass in training; equal to add_relu(batch_norm(...), residual) everywhere.
// residual has x's shape, dtype and device.
Tensor batch_norm_add_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma, const Tensor& beta,
                           const Tensor& running_mean, const Tensor& running_var, bool training,
                           double momentum = 0.1, double eps = 1e-5);

// Sums a contiguous float64 CPU tensor in place over every replica (an
// allreduce). Every replica must call it the same number of times in the same
// order. ops knows nothing of MPI; hpdl::dist supplies the function.
using CrossReplicaSum = std::function<void(Tensor&)>;

// Training-mode batch norm whose statistics span all replicas: forward
// all-reduces the per-channel [sum x, sum x^2, count] (one message of 2C+1
// doubles), normalizes with the global mean and biased variance, and updates
// the running statistics with the global mean and unbiased variance. Backward
// all-reduces the per-channel [sum dy, sum dy*xhat] (2C doubles) so dx is the
// gradient of batch norm over the global batch; dgamma and dbeta are this
// replica's sums (DataParallel's gradient averaging then gives the global
// mean). A replica may hold a single sample; the global count must exceed 1.
// First-order only. Throws as batch_norm, and when the global count is <= 1.
Tensor batch_norm_cross_replica(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                const Tensor& running_var, const CrossReplicaSum& reduce_sum, double momentum = 0.1,
                                double eps = 1e-5);
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps = 1e-5);
// x [N, C, ...] with C divisible by num_groups; gamma and beta [C] or undefined (1 and 0).
Tensor group_norm(const Tensor& x, int64_t num_groups, const Tensor& gamma, const Tensor& beta, double eps = 1e-5);

}  // namespace hpdl
