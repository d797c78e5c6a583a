// Data parallelism of the GAN trainers (design decision 79): one dist::DataParallel per network,
// step statistics averaged in one small allreduce, D's buffers broadcast once per step.
#include "hpdl/core/error.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/sync_batchnorm.h"
#include "hpdl/gan/dcgan.h"

namespace hpdl::gan::detail {

Replicas::Replicas(dist::Communicator* comm, nn::Module& g, nn::Module& d, optim::AdamW& g_opt, optim::AdamW& d_opt,
                   const ReplicaOptions& options)
    : comm_(comm), g_opt_(g_opt), d_opt_(d_opt) {
  if (!comm_) return;
  rank_ = comm_->rank();
  world_ = comm_->size();
  sync_bn_ = options.sync_batchnorm;
  if (sync_bn_) {
    dist::convert_sync_batchnorm(g, *comm_);
    dist::convert_sync_batchnorm(d, *comm_);
  }
  // G's buffers change only in G's forwards, which all come before G's finish in a step: its
  // finish may broadcast them. D's change again in the G step's forward through D (after D's
  // finish), so they are broadcast by sync_d_buffers() at the end of the step instead. Under
  // synchronized batch norm the ranks compute the same statistics in training, but rank 0 may
  // sample alone (generate() with local statistics moves its running statistics): broadcast still.
  dist::DataParallelOptions g_options, d_options;
  d_options.broadcast_buffers = false;
  g_dp_ = std::make_unique<dist::DataParallel>(g, *comm_, g_options);
  d_dp_ = std::make_unique<dist::DataParallel>(d, *comm_, d_options);
}

Replicas::~Replicas() = default;

void Replicas::zero_grad_d() { d_dp_ ? d_dp_->zero_grad() : d_opt_.zero_grad(); }
void Replicas::zero_grad_g() { g_dp_ ? g_dp_->zero_grad() : g_opt_.zero_grad(); }

void Replicas::finish_d() {
  if (d_dp_) d_dp_->finish();
}

void Replicas::finish_g() {
  if (g_dp_) g_dp_->finish();
}

void Replicas::sync_d_buffers() {
  if (d_dp_) d_dp_->broadcast_buffers(0);
}

void Replicas::mean(std::vector<double>& values) const {
  if (!comm_ || world_ == 1 || values.empty()) return;
  comm_->allreduce(values.data(), static_cast<int64_t>(values.size()), DType::f64);
  for (double& v : values) v /= world_;
}

Tensor Replicas::mine(const Tensor& all) const {
  if (world_ == 1) return all;
  HPDL_CHECK(all.ndim() >= 1 && all.dim(0) % world_ == 0,
             "gan::Replicas: {} rows cannot be split evenly over {} ranks", all.ndim() >= 1 ? all.dim(0) : 0, world_);
  const int64_t n = all.dim(0) / world_;
  return all.slice(0, rank_ * n, (rank_ + 1) * n).contiguous();
}

Replicas::Overlap Replicas::overlap() const {
  Overlap o;
  if (g_dp_) o.g_launched = g_dp_->launched_during_backward(), o.g_buckets = g_dp_->num_buckets();
  if (d_dp_) o.d_launched = d_dp_->launched_during_backward(), o.d_buckets = d_dp_->num_buckets();
  return o;
}

FrozenParameters::FrozenParameters(nn::Module& m) {
  for (Tensor& p : m.parameters()) {
    saved_.emplace_back(p, p.requires_grad());
    p.set_requires_grad(false);
  }
}

FrozenParameters::~FrozenParameters() {
  for (auto& [p, wanted] : saved_) p.set_requires_grad(wanted);
}

}  // namespace hpdl::gan::detail
