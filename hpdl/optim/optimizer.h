// Optimizer: the base of SGD, AdamW, LARS and LAMB. It holds the parameters
// (with names, so checkpoints are readable and PyTorch-like), per-parameter
// options, per-parameter state (named buffers and a step counter), and turns
// that state into named tensors for checkpoints and back.
// Steps run without autograd and update parameters in place; the elementwise
// SGD and AdamW updates go through Backend::optimizer_update (fused on CUDA).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/nn/module.h"

namespace hpdl::optim {

// One parameter and its options.
struct ParamSpec {
  std::string name;  // unique; "layer1.0.conv1.weight" or "0", "1", ...
  Tensor param;      // a handle sharing the model's TensorImpl (updates are visible to the model)
  bool no_weight_decay = false;  // skip weight decay for this parameter
  bool no_adaptation = false;    // LARS/LAMB: trust ratio 1 for this parameter
};

// Named parameters of a module, in registration order.
std::vector<ParamSpec> param_specs(const nn::Module& module);
// Unnamed tensors, named "0", "1", ... in order.
std::vector<ParamSpec> param_specs(const std::vector<Tensor>& params);

class Optimizer {
 public:
  // Throws on an empty list, duplicate names, a tensor that does not require
  // grad, or a non-positive learning rate.
  Optimizer(std::vector<ParamSpec> params, double lr);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient (those without one are
  // skipped, and their step counters do not advance).
  virtual void step() = 0;
  virtual std::string name() const = 0;
  // Drops (set_to_none) or zeroes every parameter's gradient.
  void zero_grad(bool set_to_none = true);

  double lr() const { return lr_; }
  void set_lr(double lr);
  int64_t step_count() const { return steps_; }  // calls to step()

  const std::vector<ParamSpec>& params() const { return params_; }
  // The spec of the parameter named `name` (to change its options); throws
  // listing a few known names when absent.
  ParamSpec& param(const std::string& name);

  // The state as named tensors (CPU copies): "<param>.<buffer>" for each buffer
  // (e.g. "fc.weight.exp_avg"), "<param>.step" (int64 scalar) for each
  // parameter that has been updated, and "step" (int64 scalar) for step_count().
  // Virtual so that a wrapper holding part of the state (dist::ShardedOptimizer)
  // can gather the full dict under the same keys.
  virtual std::map<std::string, Tensor> state_dict() const;
  // Restores a state_dict() into this optimizer (same parameter names and
  // shapes). Checks every entry before changing anything; throws naming the key
  // for an unknown parameter, unknown buffer, or a shape mismatch.
  virtual void load_state_dict(const std::map<std::string, Tensor>& state);
  // Bytes of optimizer state (the per-parameter buffers) this process holds.
  virtual int64_t state_bytes() const;

 protected:
  struct State {
    int64_t step = 0;
    std::map<std::string, Tensor> buffers;
  };
  // Buffer `buf` of parameter i, created as zeros like the parameter on first use.
  Tensor& buffer(size_t i, const std::string& buf);
  // Buffer names this optimizer keeps per parameter (checked on load).
  virtual std::vector<std::string> buffer_names() const = 0;
  // The contiguous gradient of parameter i, or undefined when it has none.
  Tensor grad_of(size_t i) const;
  void count_step() { ++steps_; }

  std::vector<ParamSpec> params_;
  std::vector<State> state_;
  double lr_;
  int64_t steps_ = 0;
};

// Scales all gradients so their global L2 norm is at most max_norm (no change
// when already below). Returns the norm before clipping. Parameters without a
// gradient are ignored. Throws if max_norm <= 0 or the norm is not finite.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// The L2 norm of one tensor (no autograd), as a double.
double l2_norm(const Tensor& t);
// The sums of squares of many tensors (no autograd), in order, computed on their devices and read
// back together: one synchronization per device on a GPU instead of one per tensor (LARS and LAMB
// need two norms per layer every step).
std::vector<double> sums_of_squares(const std::vector<Tensor>& ts);

}  // namespace hpdl::optim
