#include "hpdl/optim/ema.h"

#include <algorithm>

#include "hpdl/autograd/node.h"
#include "hpdl/backend/backend.h"
#include "hpdl/core/error.h"
#include "hpdl/ops/elementwise.h"

namespace hpdl::optim {

ModelEma::ModelEma(nn::Module& model, EmaOptions options) : options_(options) {
  HPDL_CHECK(options.decay >= 0 && options.decay < 1, "ModelEma: decay {} is not in [0, 1)", options.decay);
  NoGradGuard no_grad;
  auto add = [&](const std::string& name, const Tensor& t) {
    if (t.defined()) slots_.push_back({name, t, t.detach().clone()});
  };
  for (auto& [name, p] : model.named_parameters()) add(name, p);
  for (auto& [name, b] : model.named_buffers()) add(name, b);
  HPDL_CHECK(!slots_.empty(), "ModelEma: the model has no parameters or buffers to average");
}

double ModelEma::next_decay() const {
  if (!options_.warmup) return options_.decay;
  const double n = static_cast<double>(updates_ + 1);
  return std::min(options_.decay, (1 + n) / (10 + n));
}

void ModelEma::update() {
  NoGradGuard no_grad;
  const double keep = next_decay();
  for (auto& s : slots_) {
    const Tensor live = s.live.detach();
    if (!dtype_is_float(live.dtype())) {
      s.average.copy_(live);
      continue;
    }
    if (live.is_contiguous()) {  // one fused pass: avg = d avg + (1 - d) w
      backend_for(live.device()).axpby(keep, s.average, 1.0 - keep, live, s.average);
    } else {
      s.average.copy_(add(mul(s.average, keep), mul(live, 1.0 - keep)));
    }
  }
  ++updates_;
}

void ModelEma::swap() {
  NoGradGuard no_grad;
  for (auto& s : slots_) {
    Tensor live = s.live.detach();
    Tensor held = live.clone();
    live.copy_(s.average);
    s.average.copy_(held);
  }
}

std::map<std::string, Tensor> ModelEma::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const auto& s : slots_) out[s.name] = s.average.to(kCPU).contiguous();
  return out;
}

void ModelEma::load_state_dict(const std::map<std::string, Tensor>& state, int64_t updates) {
  HPDL_CHECK(updates >= 0, "ModelEma: {} updates is negative", updates);
  for (const auto& [name, _] : state) {
    const bool known = std::any_of(slots_.begin(), slots_.end(), [&](const Slot& s) { return s.name == name; });
    HPDL_CHECK(known, "ModelEma: the saved averages have '{}', which the model does not", name);
  }
  NoGradGuard no_grad;
  for (auto& s : slots_) {
    auto it = state.find(s.name);
    HPDL_CHECK(it != state.end(), "ModelEma: the saved averages have no '{}'", s.name);
    HPDL_CHECK(it->second.shape() == s.average.shape(), "ModelEma: '{}' is saved as {}, the model's is {}", s.name,
               shape_str(it->second.shape()), shape_str(s.average.shape()));
    s.average.copy_(it->second);
  }
  updates_ = updates;
}

}  // namespace hpdl::optim
