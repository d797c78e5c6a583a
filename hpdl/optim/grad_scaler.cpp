// GradScaler: dynamic loss scaling (see grad_scaler.h).
#include "hpdl/optim/grad_scaler.h"

#include <cmath>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/reduce.h"

namespace hpdl::optim {

GradScaler::GradScaler(const GradScalerOptions& options) : options_(options), scale_(options.init_scale) {
  HPDL_CHECK(std::isfinite(options.init_scale) && options.init_scale > 0,
             "GradScaler: init_scale must be a positive finite number, got {}", options.init_scale);
  HPDL_CHECK(options.growth_factor > 1, "GradScaler: growth_factor must be > 1, got {}", options.growth_factor);
  HPDL_CHECK(options.backoff_factor > 0 && options.backoff_factor < 1,
             "GradScaler: backoff_factor must be in (0, 1), got {}", options.backoff_factor);
  HPDL_CHECK(options.growth_interval > 0, "GradScaler: growth_interval must be > 0, got {}", options.growth_interval);
}

Tensor GradScaler::scale(const Tensor& loss) const {
  HPDL_CHECK(loss.defined(), "GradScaler::scale: undefined loss");
  return mul(loss, scale_);
}

bool GradScaler::unscale_and_check(const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  const double inv = 1.0 / scale_;
  // found: the sum over all gradients of sum(g * 0): 0 when every element is
  // finite, NaN as soon as one is inf or NaN (inf * 0 = NaN). No overflow is
  // possible, and all of it stays on the device until the one item() below.
  Tensor found;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    Tensor g = p.grad();  // a handle sharing the gradient's storage
    Tensor u = mul(g, inv);
    g.copy_(u);
    Tensor f = sum(mul(u, 0.0));
    found = found.defined() ? add(found, f) : f;
  }
  last_finite_ = !found.defined() || std::isfinite(found.item());
  checked_ = true;
  return last_finite_;
}

bool GradScaler::unscale_and_check(const Optimizer& opt) {
  std::vector<Tensor> params;
  params.reserve(opt.params().size());
  for (const auto& s : opt.params()) params.push_back(s.param);
  return unscale_and_check(params);
}

bool GradScaler::step(Optimizer& opt) {
  const bool ok = unscale_and_check(opt);
  if (ok) opt.step();
  update();
  return ok;
}

void GradScaler::update() {
  HPDL_CHECK(checked_, "GradScaler::update: call unscale_and_check (or step) first in each step");
  checked_ = false;
  if (!last_finite_) {
    ++skipped_;
    growth_tracker_ = 0;
    if (options_.dynamic) scale_ *= options_.backoff_factor;
    return;
  }
  ++growth_tracker_;
  if (options_.dynamic && growth_tracker_ >= options_.growth_interval) {
    const double grown = scale_ * options_.growth_factor;
    if (std::isfinite(grown)) scale_ = grown;  // as PyTorch: never grow to inf
    growth_tracker_ = 0;
  }
}

std::map<std::string, Tensor> GradScaler::state_dict() const {
  return {{"scale", Tensor::scalar(scale_, DType::f64)},
          {"growth_tracker", Tensor::scalar(static_cast<double>(growth_tracker_), DType::i64)},
          {"skipped_steps", Tensor::scalar(static_cast<double>(skipped_), DType::i64)}};
}

void GradScaler::load_state_dict(const std::map<std::string, Tensor>& state) {
  for (const auto& [key, t] : state) {
    HPDL_CHECK(key == "scale" || key == "growth_tracker" || key == "skipped_steps",
               "GradScaler: load_state_dict: unknown key '{}' (expected scale, growth_tracker, skipped_steps)", key);
    HPDL_CHECK(t.defined() && t.numel() == 1, "GradScaler: load_state_dict: '{}' must be a scalar", key);
  }
  for (const char* k : {"scale", "growth_tracker", "skipped_steps"})
    HPDL_CHECK(state.count(k), "GradScaler: load_state_dict: missing key '{}'", k);
  const double s = state.at("scale").item();
  HPDL_CHECK(std::isfinite(s) && s > 0, "GradScaler: load_state_dict: scale must be positive and finite, got {}", s);
  const double g = state.at("growth_tracker").item(), k = state.at("skipped_steps").item();
  HPDL_CHECK(g >= 0 && k >= 0, "GradScaler: load_state_dict: negative counter (growth_tracker {}, skipped_steps {})",
             g, k);
  scale_ = s;
  growth_tracker_ = static_cast<int64_t>(g);
  skipped_ = static_cast<int64_t>(k);
  checked_ = false;
  last_finite_ = true;
}

}  // namespace hpdl::optim
