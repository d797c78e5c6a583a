// The alpha-beta scaling model and its interconnect presets.
#include "hpdl/dist/scaling.h"

#include <algorithm>
#include <cmath>

#include "hpdl/core/error.h"

namespace hpdl::dist {

const std::vector<Interconnect>& interconnect_presets() {
  // Nominal link rates; latencies are typical MPI small-message half round trips.
  static const std::vector<Interconnect> presets = {
      {"ib-edr", 1.2e-6, 100e9 / 8, "InfiniBand EDR, 100 Gb/s"},
      {"ib-hdr", 1.1e-6, 200e9 / 8, "InfiniBand HDR, 200 Gb/s"},
      {"ib-ndr", 1.0e-6, 400e9 / 8, "InfiniBand NDR, 400 Gb/s"},
      {"slingshot", 1.8e-6, 200e9 / 8, "HPE Slingshot-11, 200 Gb/s"},
      {"omnipath", 1.1e-6, 100e9 / 8, "Intel Omni-Path, 100 Gb/s"},
      {"eth-25g", 10e-6, 25e9 / 8, "Ethernet with TCP, 25 Gb/s"},
      {"eth-100g", 8e-6, 100e9 / 8, "Ethernet with TCP, 100 Gb/s"},
  };
  return presets;
}

const Interconnect& interconnect_preset(const std::string& name) {
  std::string known;
  for (const auto& p : interconnect_presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  HPDL_FAIL("unknown interconnect '{}' (known: {})", name, known);
}

double ring_allreduce_seconds(int ranks, double bytes, const Interconnect& net) {
  if (ranks <= 1) return 0;
  const double p = ranks;
  return 2 * (p - 1) * net.alpha_s + 2 * (p - 1) / p * bytes / net.bandwidth_Bps;
}

ScalingPoint predict(const StepProfile& prof, const Interconnect& net, int ranks, int64_t dataset_size) {
  HPDL_CHECK(ranks >= 1 && prof.batch_per_rank > 0, "scaling model: need ranks >= 1 and a positive batch");
  ScalingPoint pt;
  pt.ranks = ranks;
  pt.allreduce_s = ring_allreduce_seconds(ranks, prof.gradient_bytes, net);
  pt.exposed_comm_s = std::max(0.0, pt.allreduce_s - prof.overlap * prof.backward_s);
  pt.step_s = prof.forward_s + prof.backward_s + pt.exposed_comm_s + prof.optimizer_s;
  const double global_batch = static_cast<double>(prof.batch_per_rank) * ranks;
  const double steps = std::ceil(static_cast<double>(dataset_size) / global_batch);
  pt.epoch_s = steps * pt.step_s;
  pt.samples_per_s = global_batch / pt.step_s;
  const double single = prof.forward_s + prof.backward_s + prof.optimizer_s;
  pt.efficiency = single / pt.step_s;
  return pt;
}

std::vector<ScalingPoint> predict_range(const StepProfile& prof, const Interconnect& net, int64_t dataset_size,
                                        int max_ranks) {
  std::vector<ScalingPoint> out;
  for (int p = 1; p <= max_ranks; p *= 2) out.push_back(predict(prof, net, p, dataset_size));
  return out;
}

}  // namespace hpdl::dist
