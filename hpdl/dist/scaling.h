// A scaling model for synchronous data-parallel training: predicts time per
// step and per epoch, and parallel efficiency, for 1 to thousands of ranks
// from a few measured numbers and an alpha-beta network model (Hockney 1994).
//
// Ring allreduce of n bytes over p ranks (Patarasuk & Yuan 2009; Thakur et al. 2005):
//   T_ar(p, n) = 2 (p - 1) alpha + 2 (p - 1)/p * n * beta
// (alpha: per-message latency in s, beta: s per byte of link bandwidth).
// A step is forward + backward + the part of the allreduce not hidden behind
// backward + optimizer:  T_step(p) = T_f + T_b + max(0, T_ar - h * T_b) + T_opt,
// with h the fraction of backward that can overlap communication (buckets
// launch as gradients become ready; the first bucket cannot start before
// some backward has run, so h < 1). Weak scaling: the per-rank batch is fixed,
// so efficiency(p) = T_step(1) / T_step(p). See docs/scaling.md for limits.
#pragma once

#include <string>
#include <vector>

namespace hpdl::dist {

struct Interconnect {
  std::string name;
  double alpha_s = 0;        // latency per message
  double bandwidth_Bps = 0;  // per-link bandwidth, bytes/s (beta = 1 / bandwidth)
  std::string description;
};

// Named presets ("ib-edr", "ib-hdr", "ib-ndr", "slingshot", "omnipath", "eth-25g", "eth-100g").
const std::vector<Interconnect>& interconnect_presets();
const Interconnect& interconnect_preset(const std::string& name);  // throws listing known names

struct StepProfile {
  double forward_s = 0, backward_s = 0, optimizer_s = 0;  // per step at the per-rank batch
  double gradient_bytes = 0;                               // bytes all-reduced per step
  int64_t batch_per_rank = 0;
  double overlap = 0.7;  // fraction of backward usable to hide communication
};

struct ScalingPoint {
  int ranks = 1;
  double allreduce_s = 0, exposed_comm_s = 0, step_s = 0;
  double epoch_s = 0;       // for the given dataset size
  double samples_per_s = 0;
  double efficiency = 1;
};

double ring_allreduce_seconds(int ranks, double bytes, const Interconnect& net);
ScalingPoint predict(const StepProfile& prof, const Interconnect& net, int ranks, int64_t dataset_size);
std::vector<ScalingPoint> predict_range(const StepProfile& prof, const Interconnect& net, int64_t dataset_size,
                                        int max_ranks = 4096);

}  // namespace hpdl::dist
