// Module bookkeeping: dotted names, recursive traversal, state dicts, and
// moving tensors between devices/dtypes in place. Moving swaps the storage
// inside the shared TensorImpl, so every handle to a parameter (a layer's
// member, an optimizer's list) follows the move without re-registration.
#include "hpdl/nn/module.h"

#include <set>

#include "hpdl/autograd/node.h"

namespace hpdl::nn {

void Module::check_new_name(const std::string& name) const {
  HPDL_CHECK(!name.empty() && name.find('.') == std::string::npos,
             "{}: invalid member name '{}' (must be non-empty and contain no '.')", type_name(), name);
  auto taken = [&](const auto& v) {
    for (const auto& [n, _] : v)
      if (n == name) return true;
    return false;
  };
  HPDL_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_),
             "{}: member name '{}' is already registered", type_name(), name);
}

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name);
  HPDL_CHECK(t.defined(), "{}: parameter '{}' is an undefined tensor", type_name(), name);
  HPDL_CHECK(t.is_leaf(), "{}: parameter '{}' must be a leaf tensor (detach() it first)", type_name(), name);
  t.set_requires_grad(true);
  params_.emplace_back(name, std::move(t));
  return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name);
  HPDL_CHECK(t.defined(), "{}: buffer '{}' is an undefined tensor", type_name(), name);
  buffers_.emplace_back(name, std::move(t));
  return buffers_.back().second;
}

void Module::register_generator(const std::string& name, Generator* gen) {
  HPDL_CHECK(gen != nullptr, "{}: generator '{}' is null", type_name(), name);
  generators_.emplace_back(name, gen);
}

void Module::collect(const std::string& prefix, bool params,
                     std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [name, t] : params ? params_ : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", true, out);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", false, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [_, t] : named_parameters()) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  out.emplace_back("", shared_from_this());
  for (const auto& [name, child] : children_)
    for (auto& [sub, m] : child->named_modules()) out.emplace_back(sub.empty() ? name : name + "." + sub, m);
  return out;
}

std::vector<std::pair<std::string, Generator*>> Module::named_generators() {
  std::vector<std::pair<std::string, Generator*>> out;
  for (const auto& [name, g] : generators_) out.emplace_back(name, g);
  for (const auto& [name, child] : children_)
    for (auto& [sub, g] : child->named_generators()) out.emplace_back(name + "." + sub, g);
  return out;
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (auto& [name, t] : named_parameters()) out.emplace(name, t);
  for (auto& [name, t] : named_buffers()) out.emplace(name, t);
  return out;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  auto own = state_dict();
  // Check everything before copying anything, so a bad dict leaves the module untouched.
  std::vector<std::string> missing;
  for (const auto& [name, t] : own) {
    auto it = state.find(name);
    if (it == state.end()) {
      missing.push_back(name);
      continue;
    }
    HPDL_CHECK(it->second.defined(), "load_state_dict: {}: entry '{}' is an undefined tensor", type_name(), name);
    HPDL_CHECK(it->second.shape() == t.shape(), "load_state_dict: {}: shape mismatch for '{}': checkpoint has {}, model has {}",
               type_name(), name, shape_str(it->second.shape()), shape_str(t.shape()));
  }
  if (strict) {
    HPDL_CHECK(missing.empty(), "load_state_dict: {}: missing key '{}' ({} missing in all; pass strict=false to skip)",
               type_name(), missing.front(), missing.size());
    for (const auto& [name, _] : state)
      HPDL_CHECK(own.count(name), "load_state_dict: {}: unexpected key '{}' (not a parameter or buffer of this model; "
                 "pass strict=false to ignore)", type_name(), name);
  }
  NoGradGuard no_grad;
  for (auto& [name, t] : own) {
    auto it = state.find(name);
    if (it != state.end()) t.copy_(it->second);
  }
}

void Module::train(bool on) {
  training_ = on;
  on_train(on);
  for (auto& [_, child] : children_) child->train(on);
}

void Module::zero_grad(bool set_to_none) {
  for (auto& [_, p] : named_parameters()) {
    if (set_to_none) {
      p.zero_grad();
    } else if (p.grad().defined()) {
      Tensor g = p.grad();
      g.zero_();
    }
  }
}

namespace {

// Points t's TensorImpl at `moved`'s data (same shape), so every handle follows.
void rebind(Tensor& t, const Tensor& moved) {
  Tensor c = moved.contiguous();
  TensorImpl& im = t.impl();
  im.storage = c.storage();
  im.offset = c.offset();
  im.strides = c.strides();
  im.dtype = c.dtype();
  if (im.autograd) im.autograd->grad.reset();
}

}  // namespace

void Module::to(Device device) {
  for (auto& [_, t] : named_parameters())
    if (t.device() != device) rebind(t, t.detach().to(device));
  for (auto& [_, t] : named_buffers())
    if (t.device() != device) rebind(t, t.to(device));
}

void Module::to(DType dtype) {
  HPDL_CHECK(dtype_is_float(dtype), "Module::to: parameters must stay floating point, got {}", dtype_name(dtype));
  for (auto& [_, t] : named_parameters())
    if (t.dtype() != dtype) rebind(t, t.detach().to(dtype));
  // Integer buffers (counters such as num_batches_tracked) keep their dtype.
  for (auto& [_, t] : named_buffers())
    if (dtype_is_float(t.dtype()) && t.dtype() != dtype) rebind(t, t.to(dtype));
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [_, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::str_into(std::string& out, const std::string& name, int indent) const {
  out += std::string(static_cast<size_t>(indent) * 2, ' ');
  if (!name.empty()) out += name + ": ";
  out += type_name();
  for (const auto& [n, t] : params_) out += " " + n + shape_str(t.shape());
  out += "\n";
  for (const auto& [n, child] : children_) child->str_into(out, n, indent + 1);
}

std::string Module::str() const {
  std::string out;
  str_into(out, "", 0);
  return out;
}

}  // namespace hpdl::nn
