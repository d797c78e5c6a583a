// Optimizer bookkeeping: parameter specs, lazy per-parameter state, state
// dicts for checkpoints, and global-norm gradient clipping.
#include "hpdl/optim/optimizer.h"

#include <cmath>
#include <set>

#include "hpdl/autograd/node.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/reduce.h"
#include "hpdl/ops/shape.h"

namespace hpdl::optim {

std::vector<ParamSpec> param_specs(const nn::Module& module) {
  std::vector<ParamSpec> out;
  for (auto& [name, t] : module.named_parameters()) out.push_back({name, t});
  return out;
}

std::vector<ParamSpec> param_specs(const std::vector<Tensor>& params) {
  std::vector<ParamSpec> out;
  for (size_t i = 0; i < params.size(); ++i) out.push_back({std::to_string(i), params[i]});
  return out;
}

Optimizer::Optimizer(std::vector<ParamSpec> params, double lr) : params_(std::move(params)), lr_(lr) {
  HPDL_CHECK(!params_.empty(), "optimizer: no parameters to optimize");
  HPDL_CHECK(lr >= 0 && std::isfinite(lr), "optimizer: learning rate must be finite and >= 0, got {}", lr);
  std::set<std::string> seen;
  for (const auto& s : params_) {
    HPDL_CHECK(s.param.defined(), "optimizer: parameter '{}' is an undefined tensor", s.name);
    HPDL_CHECK(s.param.requires_grad(), "optimizer: parameter '{}' {} does not require grad", s.name,
               shape_str(s.param.shape()));
    HPDL_CHECK(s.name.find_first_of(" ") == std::string::npos && !s.name.empty(),
               "optimizer: invalid parameter name '{}'", s.name);
    HPDL_CHECK(seen.insert(s.name).second, "optimizer: parameter name '{}' appears twice", s.name);
  }
  state_.resize(params_.size());
}

void Optimizer::set_lr(double lr) {
  HPDL_CHECK(lr >= 0 && std::isfinite(lr), "{}: learning rate must be finite and >= 0, got {}", name(), lr);
  lr_ = lr;
}

void Optimizer::zero_grad(bool set_to_none) {
  for (auto& s : params_) {
    if (set_to_none) {
      s.param.zero_grad();
    } else if (s.param.grad().defined()) {
      Tensor g = s.param.grad();
      g.zero_();
    }
  }
}

ParamSpec& Optimizer::param(const std::string& n) {
  for (auto& s : params_)
    if (s.name == n) return s;
  std::string known;
  for (size_t i = 0; i < params_.size() && i < 5; ++i) known += (i ? ", " : "") + params_[i].name;
  HPDL_FAIL("{}: no parameter named '{}' (known: {}{})", name(), n, known, params_.size() > 5 ? ", ..." : "");
}

Tensor& Optimizer::buffer(size_t i, const std::string& buf) {
  auto& bufs = state_[i].buffers;
  auto it = bufs.find(buf);
  if (it == bufs.end()) {
    const Tensor& p = params_[i].param;
    it = bufs.emplace(buf, Tensor::zeros(p.shape(), p.dtype(), p.device())).first;
  }
  return it->second;
}

Tensor Optimizer::grad_of(size_t i) const {
  const Tensor& g = params_[i].param.grad();
  if (!g.defined()) return g;
  const Tensor& p = params_[i].param;
  HPDL_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(),
             "{}: gradient of '{}' is {} {} on {}, parameter is {} {} on {}", name(), params_[i].name,
             dtype_name(g.dtype()), shape_str(g.shape()), g.device().str(), dtype_name(p.dtype()),
             shape_str(p.shape()), p.device().str());
  return g.contiguous();
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  out.emplace("step", Tensor::scalar(static_cast<double>(steps_), DType::i64));
  for (size_t i = 0; i < params_.size(); ++i) {
    const State& st = state_[i];
    if (st.step == 0 && st.buffers.empty()) continue;
    out.emplace(params_[i].name + ".step", Tensor::scalar(static_cast<double>(st.step), DType::i64));
    for (const auto& [b, t] : st.buffers) out.emplace(params_[i].name + "." + b, t.to(kCPU).clone());
  }
  return out;
}

int64_t Optimizer::state_bytes() const {
  int64_t n = 0;
  for (const auto& st : state_)
    for (const auto& [b, t] : st.buffers) n += static_cast<int64_t>(t.nbytes());
  return n;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& state) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) index.emplace(params_[i].name, i);
  const auto bufs = buffer_names();
  // Validate everything first so a bad dict leaves the optimizer untouched.
  struct Entry {
    size_t param;
    std::string buf;  // "step" for the counter
    Tensor value;
  };
  std::vector<Entry> entries;
  bool have_step = false;
  for (const auto& [key, t] : state) {
    HPDL_CHECK(t.defined(), "{}: load_state_dict: entry '{}' is an undefined tensor", name(), key);
    if (key == "step") {
      HPDL_CHECK(t.numel() == 1, "{}: load_state_dict: 'step' must be a scalar, got {}", name(), shape_str(t.shape()));
      have_step = true;
      continue;
    }
    auto dot = key.rfind('.');
    HPDL_CHECK(dot != std::string::npos, "{}: load_state_dict: unexpected key '{}' (expected '<param>.<buffer>')",
               name(), key);
    std::string pname = key.substr(0, dot), buf = key.substr(dot + 1);
    auto it = index.find(pname);
    HPDL_CHECK(it != index.end(), "{}: load_state_dict: key '{}' names parameter '{}', which this optimizer does not "
               "have", name(), key, pname);
    const Tensor& p = params_[it->second].param;
    if (buf == "step") {
      HPDL_CHECK(t.numel() == 1, "{}: load_state_dict: '{}' must be a scalar, got {}", name(), key,
                 shape_str(t.shape()));
    } else {
      bool known = false;
      for (const auto& b : bufs) known |= b == buf;
      HPDL_CHECK(known, "{}: load_state_dict: key '{}': '{}' is not a buffer of {}", name(), key, buf, name());
      HPDL_CHECK(t.shape() == p.shape(), "{}: load_state_dict: shape mismatch for '{}': checkpoint has {}, parameter "
                 "has {}", name(), key, shape_str(t.shape()), shape_str(p.shape()));
    }
    entries.push_back({it->second, buf, t});
  }
  HPDL_CHECK(have_step, "{}: load_state_dict: missing key 'step'", name());
  NoGradGuard no_grad;
  steps_ = static_cast<int64_t>(state.at("step").item());
  for (auto& st : state_) st = State{};
  for (auto& e : entries) {
    if (e.buf == "step") {
      state_[e.param].step = static_cast<int64_t>(e.value.item());
    } else {
      buffer(e.param, e.buf).copy_(e.value);
    }
  }
}

double l2_norm(const Tensor& t) {
  NoGradGuard no_grad;
  return std::sqrt(sum_square(t.detach()).item());
}

std::vector<double> sums_of_squares(const std::vector<Tensor>& ts) {
  NoGradGuard no_grad;
  std::vector<double> out(ts.size());
  // Per device: the scalars stacked (float64: exact for float32 sums, as item() reads them) and one
  // copy to the host.
  std::vector<bool> done(ts.size(), false);
  for (size_t i = 0; i < ts.size(); ++i) {
    if (done[i]) continue;
    std::vector<size_t> idx;
    std::vector<Tensor> sums;
    for (size_t j = i; j < ts.size(); ++j)
      if (!done[j] && ts[j].device() == ts[i].device()) {
        idx.push_back(j);
        sums.push_back(sum_square(ts[j].detach()).to(DType::f64));
        done[j] = true;
      }
    const std::vector<double> host = stack(sums).to(kCPU).to_vector<double>();
    for (size_t k = 0; k < idx.size(); ++k) out[idx[k]] = host[k];
  }
  return out;
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  HPDL_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got {}", max_norm);
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  double total_sq = 0;
  for (double v : sums_of_squares(grads)) total_sq += v;
  const double total = std::sqrt(total_sq);
  HPDL_CHECK(std::isfinite(total), "clip_grad_norm: the gradient norm is not finite ({}); the loss has diverged "
             "(lower the learning rate or check the inputs)", total);
  // The small epsilon keeps the clipped norm just under max_norm, as PyTorch does.
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1) {
    for (const auto& p : params) {
      if (!p.grad().defined()) continue;
      Tensor g = p.grad();
      g.copy_(mul(g, coef));
    }
  }
  return total;
}

}  // namespace hpdl::optim
