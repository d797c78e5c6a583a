// SGD, AdamW, LARS and LAMB steps. SGD and AdamW are one fused
// Backend::optimizer_update_many over all parameters of a backend (on a GPU a
// kernel per 32 parameters). LARS computes its layer-wise rate
// from two norms, then reuses the fused SGD-momentum update. LAMB needs the
// norm of the full update before applying it, so it is written with ops.
#include "hpdl/optim/optimizers.h"

#include <cmath>

#include "hpdl/autograd/node.h"
#include "hpdl/backend/backend.h"
#include "hpdl/ops/elementwise.h"

namespace hpdl::optim {

namespace {

Backend& update_backend(const Tensor& p) {
  Backend& b = backend_for(p.device());
  if (b.supports(OpKind::optimizer, p.dtype())) return b;
  HPDL_CHECK(p.device().is_cpu(), "optimizer: backend {} cannot update {} parameters", b.name(),
             dtype_name(p.dtype()));
  return reference_backend();
}

// Slots gathered per backend, then one optimizer_update_many each (one or a few kernels on a GPU
// instead of one per parameter).
class SlotGroups {
 public:
  void add(const Tensor& param, UpdateSlot slot) {
    Backend* b = &update_backend(param);
    for (auto& [backend, slots] : groups_)
      if (backend == b) return slots.push_back(std::move(slot));
    groups_.push_back({b, {std::move(slot)}});
  }
  // The fused kernels write the parameters in place: their version counters move, so a
  // backward still to run over a graph that saved them refuses to (design decision 73).
  void run(const OptimizerUpdate& u) {
    for (auto& [backend, slots] : groups_) {
      backend->optimizer_update_many(u, slots);
      for (const UpdateSlot& s : slots) s.param.bump_version();
    }
  }

 private:
  std::vector<std::pair<Backend*, std::vector<UpdateSlot>>> groups_;
};

void check_range(bool ok, const char* opt, const char* what, double v) {
  HPDL_CHECK(ok, "{}: invalid option {} = {}", opt, what, v);
}

void mark_1d(std::vector<ParamSpec>& params, bool exclude_1d) {
  if (!exclude_1d) return;
  for (auto& s : params)
    if (s.param.ndim() <= 1) s.no_weight_decay = s.no_adaptation = true;
}

}  // namespace

// ---------------------------------------------------------------- SGD

SGD::SGD(std::vector<ParamSpec> params, const SGDOptions& o) : Optimizer(std::move(params), o.lr), options(o) {
  check_range(o.momentum >= 0, "SGD", "momentum", o.momentum);
  check_range(o.dampening >= 0 && o.dampening <= 1, "SGD", "dampening", o.dampening);
  check_range(o.weight_decay >= 0, "SGD", "weight_decay", o.weight_decay);
  HPDL_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
             "SGD: nesterov needs momentum > 0 and dampening = 0 (got momentum {}, dampening {})", o.momentum,
             o.dampening);
}

void SGD::step() {
  NoGradGuard no_grad;
  count_step();
  OptimizerUpdate u;
  u.kind = OptimizerUpdate::Kind::sgd;
  u.lr = lr_;
  u.momentum = options.momentum;
  u.dampening = options.dampening;
  u.nesterov = options.nesterov;
  SlotGroups groups;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = grad_of(i);
    if (!g.defined()) continue;
    Tensor buf = options.momentum != 0 ? buffer(i, "momentum_buffer") : Tensor();
    groups.add(params_[i].param, UpdateSlot{params_[i].param, g, buf, Tensor(),
                                            params_[i].no_weight_decay ? 0.0 : options.weight_decay,
                                            ++state_[i].step});
  }
  groups.run(u);
}

// ---------------------------------------------------------------- AdamW

AdamW::AdamW(std::vector<ParamSpec> params, const AdamWOptions& o) : Optimizer(std::move(params), o.lr), options(o) {
  check_range(o.beta1 >= 0 && o.beta1 < 1, "AdamW", "beta1", o.beta1);
  check_range(o.beta2 >= 0 && o.beta2 < 1, "AdamW", "beta2", o.beta2);
  check_range(o.eps > 0, "AdamW", "eps", o.eps);
  check_range(o.weight_decay >= 0, "AdamW", "weight_decay", o.weight_decay);
}

void AdamW::step() {
  NoGradGuard no_grad;
  count_step();
  OptimizerUpdate u;
  u.kind = OptimizerUpdate::Kind::adamw;
  u.lr = lr_;
  u.beta1 = options.beta1;
  u.beta2 = options.beta2;
  u.eps = options.eps;
  u.decoupled_decay = true;
  SlotGroups groups;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = grad_of(i);
    if (!g.defined()) continue;
    Tensor m = buffer(i, "exp_avg"), v = buffer(i, "exp_avg_sq");
    groups.add(params_[i].param, UpdateSlot{params_[i].param, g, m, v,
                                            params_[i].no_weight_decay ? 0.0 : options.weight_decay,
                                            ++state_[i].step});
  }
  groups.run(u);
}

// ---------------------------------------------------------------- LARS

LARS::LARS(std::vector<ParamSpec> params, const LARSOptions& o) : Optimizer(std::move(params), o.lr), options(o) {
  check_range(o.momentum >= 0 && o.momentum < 1, "LARS", "momentum", o.momentum);
  check_range(o.weight_decay >= 0, "LARS", "weight_decay", o.weight_decay);
  check_range(o.eta > 0, "LARS", "eta", o.eta);
  check_range(o.eps >= 0, "LARS", "eps", o.eps);
  mark_1d(params_, o.exclude_1d);
  ratios_.assign(params_.size(), 1.0);
}

void LARS::step() {
  NoGradGuard no_grad;
  count_step();
  // Every adapted layer's weight and gradient norms are computed first and read back together (one
  // synchronization per step on a GPU, not two per layer); then the updates.
  std::vector<Tensor> grads(params_.size()), norm_inputs;
  std::vector<size_t> adapted;
  for (size_t i = 0; i < params_.size(); ++i) {
    grads[i] = grad_of(i);
    if (!grads[i].defined() || params_[i].no_adaptation) continue;
    adapted.push_back(i);
    norm_inputs.push_back(params_[i].param);
    norm_inputs.push_back(grads[i]);
  }
  const std::vector<double> sq = sums_of_squares(norm_inputs);
  std::vector<double> local(params_.size(), 1.0);
  for (size_t j = 0; j < adapted.size(); ++j) {
    const size_t i = adapted[j];
    const double wd = params_[i].no_weight_decay ? 0.0 : options.weight_decay;
    const double wn = std::sqrt(sq[2 * j]), gn = std::sqrt(sq[2 * j + 1]);
    if (wn > 0 && gn > 0) local[i] = options.eta * wn / (gn + wd * wn + options.eps);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = grads[i];
    if (!g.defined()) continue;
    const ParamSpec& s = params_[i];
    const double wd = s.no_weight_decay ? 0.0 : options.weight_decay;
    ratios_[i] = local[i];
    // d = lr * local * (g + wd * w); then the fused momentum update with lr 1:
    // buf = momentum * buf + d (buf = d on the first step), w -= buf.
    Tensor d = wd != 0 ? add(g, mul(s.param, wd)) : g;
    d = mul(d, lr_ * local[i]);
    OptimizerUpdate u;
    u.kind = OptimizerUpdate::Kind::sgd;
    u.lr = 1.0;
    u.momentum = options.momentum;
    u.step = ++state_[i].step;
    Tensor buf = options.momentum != 0 ? buffer(i, "momentum_buffer") : Tensor();
    update_backend(s.param).optimizer_update(u, s.param, d.contiguous(), buf, Tensor());
    s.param.bump_version();  // written in place (as in SlotGroups::run)
  }
}

// ---------------------------------------------------------------- LAMB

LAMB::LAMB(std::vector<ParamSpec> params, const LAMBOptions& o) : Optimizer(std::move(params), o.lr), options(o) {
  check_range(o.beta1 >= 0 && o.beta1 < 1, "LAMB", "beta1", o.beta1);
  check_range(o.beta2 >= 0 && o.beta2 < 1, "LAMB", "beta2", o.beta2);
  check_range(o.eps > 0, "LAMB", "eps", o.eps);
  check_range(o.weight_decay >= 0, "LAMB", "weight_decay", o.weight_decay);
  mark_1d(params_, o.exclude_1d);
  ratios_.assign(params_.size(), 1.0);
}

void LAMB::step() {
  NoGradGuard no_grad;
  count_step();
  // Moments and update directions of every layer first, then all the norms read back together (one
  // synchronization per step on a GPU, not two per layer), then the weight updates.
  std::vector<Tensor> rs(params_.size()), norm_inputs;
  std::vector<size_t> adapted;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = grad_of(i);
    if (!g.defined()) continue;
    const ParamSpec& s = params_[i];
    Tensor w = s.param;
    const double wd = s.no_weight_decay ? 0.0 : options.weight_decay;
    const auto t = static_cast<double>(++state_[i].step);
    const double b1 = options.beta1, b2 = options.beta2;
    Tensor& m = buffer(i, "exp_avg");
    Tensor& v = buffer(i, "exp_avg_sq");
    m.copy_(add(mul(m, b1), mul(g, 1 - b1)));
    v.copy_(add(mul(v, b2), mul(square(g), 1 - b2)));
    Tensor m_hat = mul(m, 1 / (1 - std::pow(b1, t)));
    Tensor v_hat = mul(v, 1 / (1 - std::pow(b2, t)));
    Tensor r = div(m_hat, add(sqrt(v_hat), options.eps));
    if (wd != 0) r = add(r, mul(w, wd));
    rs[i] = r;
    if (!s.no_adaptation) {
      adapted.push_back(i);
      norm_inputs.push_back(w);
      norm_inputs.push_back(r);
    }
  }
  const std::vector<double> sq = sums_of_squares(norm_inputs);
  std::vector<double> ratio(params_.size(), 1.0);
  for (size_t j = 0; j < adapted.size(); ++j) {
    const double wn = std::sqrt(sq[2 * j]), rn = std::sqrt(sq[2 * j + 1]);
    if (wn > 0 && rn > 0) ratio[adapted[j]] = wn / rn;
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!rs[i].defined()) continue;
    ratios_[i] = ratio[i];
    Tensor w = params_[i].param;
    w.copy_(sub(w, mul(rs[i], lr_ * ratio[i])));
  }
}

}  // namespace hpdl::optim
