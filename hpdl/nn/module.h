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

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

namespace hpdl::nn {

class Module : public std::enable_shared_from_this<Module> {
 public:
  Module() = default;
  // Modules hold tensors by handle and are shared through ModulePtr; a copy
  // would silently share parameters, so copying is disabled.
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;
  // The forward pass for single-input modules.
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
  // Short type name for printing and errors ("Linear", "Conv2d").
  virtual std::string type_name() const = 0;

  // Parameters and buffers of this module and all descendants, in registration
  // order (own entries first, then each child's, depth first). The returned
  // tensors are handles to the module's own tensors, not copies.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  std::vector<Tensor> parameters() const;
  // This module ("") and every descendant, depth first, with dotted names.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules();
  // Random generators owned by modules (Dropout's), with dotted names, so a
  // checkpoint can save and restore their state for an exact resume.
  std::vector<std::pair<std::string, Generator*>> named_generators();
  // Parameters and buffers together: the state dict. Values are handles (no copy).
  std::map<std::string, Tensor> state_dict() const;
  // Copies values into this module's tensors (in place: handles held by layers
  // and optimizers stay valid). Shapes must match exactly; dtype and device are
  // converted. With strict, every key must be present and no unknown key may
  // appear. Throws hpdl::Error naming the key and both shapes.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

  // Sets training mode on this module and every descendant.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Drops (set_to_none) or zeroes every parameter's gradient.
  void zero_grad(bool set_to_none = true);
  // Moves every parameter and buffer to `device`, or converts floating-point
  // ones to `dtype`, in place of the handles: every Tensor handle that shares
  // the parameter's TensorImpl (the layer's member, an optimizer's list) sees
  // the new data. Gradients are dropped. Optimizers built before the call keep
  // state on the old device; build them after moving the model.
  void to(Device device);
  void to(DType dtype);
  int64_t num_parameters() const;

  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  // An indented tree of the module and its children with parameter shapes.
  std::string str() const;

 protected:
  // Registers a trainable tensor (sets requires_grad). Names must be unique
  // within the module and must not contain '.'. Returns the stored handle;
  // layers keep a copy of the handle (it shares the TensorImpl).
  Tensor& register_parameter(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor t);
  void register_generator(const std::string& name, Generator* gen);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    check_new_name(name);
    children_.emplace_back(name, m);
    return m;
  }
  // Called by train(); layers with mode-dependent state may override (call the base).
  virtual void on_train(bool on) {}

 private:
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Tensor>>& out) const;
  void str_into(std::string& out, const std::string& name, int indent) const;

  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, Generator*>> generators_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace hpdl::nn
