// Module: the base of every layer and model. A module owns named parameters
// (trainable tensors), named buffers (state that is saved but not trained,
// e.g. batch-norm running statistics) and named child modules; names join
// with '.' ("layer1.0.conv1.weight"), as in PyTorch, so state dicts map
// one-to-one onto safetensors files a PyTorch user can load.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl::nn {

class Module : public std::enable_shared_from_this<Module> {
 public:
  virtual ~Module() = default;
  // The forward pass for single-input modules.
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
  // Short type name for printing and errors ("Linear", "Conv2d").
  virtual std::string type_name() const = 0;

  // Parameters and buffers of this module and all descendants, in registration order.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  std::vector<Tensor> parameters() const;
  // Parameters and buffers together: the state dict.
  std::map<std::string, Tensor> state_dict() const;
  // Copies values into this module's tensors (shapes must match; every key
  // present, no unknown keys unless strict is false). Throws naming the key.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Drops (set_to_none) or zeroes every parameter's gradient.
  void zero_grad(bool set_to_none = true);
  // Moves every parameter and buffer to `device` (in place of the handles).
  void to(Device device);
  int64_t num_parameters() const;

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);  // sets requires_grad
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Tensor*>>& out);
  void collect_const(const std::string& prefix, bool params, std::vector<std::pair<std::string, Tensor>>& out) const;

  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace hpdl::nn
