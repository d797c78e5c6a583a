// Graph nodes of define-by-run autograd. Each differentiable op, when any input
// requires grad and grad mode is on, creates one Node whose `apply` maps the
// gradients of its outputs to the gradients of its inputs. Backward formulas
// are written with differentiable ops, so running them with grad mode on
// (create_graph) records a graph of the backward pass: higher-order derivatives.
// Nodes whose backward calls a fused library kernel say so with
// `first_order_only` and refuse create_graph with a clear error.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl {

class Node;

struct Edge {
  std::shared_ptr<Node> fn;  // null: that input needs no gradient
  uint32_t input_nr = 0;     // which gradient slot of fn receives it
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  virtual ~Node() = default;
  virtual const char* name() const = 0;
  // grads[i] is the gradient of output i (undefined when none flowed there).
  // Returns one gradient per entry of `next` (undefined when that input needs none).
  virtual std::vector<Tensor> apply(const std::vector<Tensor>& grads) = 0;
  virtual bool first_order_only() const { return false; }
  // Drops saved tensors after a backward without retain_graph.
  virtual void release() {}

  std::vector<Edge> next;      // one per differentiable input
  uint32_t num_outputs = 1;
  uint64_t sequence = 0;       // creation order; the engine runs later nodes first
};

// A node whose backward is a lambda capturing what it saved from the forward.
class FunctionNode final : public Node {
 public:
  using Backward = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;
  FunctionNode(const char* name, Backward fn, bool first_order_only = false)
      : name_(name), fn_(std::move(fn)), first_order_only_(first_order_only) {}
  const char* name() const override { return name_; }
  std::vector<Tensor> apply(const std::vector<Tensor>& grads) override;
  bool first_order_only() const override { return first_order_only_; }
  void release() override { fn_ = nullptr; }

 private:
  const char* name_;
  Backward fn_;
  bool first_order_only_;
};

// The sink of a leaf tensor: adds incoming gradients into its .grad.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf) : leaf_(leaf) {}
  const char* name() const override { return "AccumulateGrad"; }
  std::vector<Tensor> apply(const std::vector<Tensor>& grads) override;

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

// A tensor a node saved for its backward, with its storage's version counter at
// that moment (design decision 73). get() checks that no in-place write (fill_,
// copy_, an optimizer step, an in-place collective; see Tensor::bump_version)
// reached the storage since, through this tensor or any view of it, and
// otherwise throws an hpdl::Error naming the node whose backward runs, the saved
// tensor (`what`: "input 'a'", "output", ..., and `index` when one of several:
// "weight 2") and both versions; the gradient it
// would give is wrong. Ops capture one per input or output their backward
// formula reads, and read it only where the formula needs it: an input a
// backward never reads (add's, sub's) is not saved, and writing into it after
// the forward stays legal. Holds the tensor itself (its graph history too, for
// create_graph). An undefined tensor is allowed (saved only when needed).
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, const char* what, int index = -1)
      : t_(t), version_(t.defined() ? t.version() : 0), what_(what), index_(index) {}
  const Tensor& get() const;
  bool defined() const { return t_.defined(); }

 private:
  Tensor t_;
  uint64_t version_ = 0;
  const char* what_ = "";
  int index_ = -1;
};

// ---- grad mode ----
bool grad_enabled();
void set_grad_enabled(bool on);

// Disables graph recording in its scope (inference, optimizer steps).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

class EnableGradGuard {
 public:
  explicit EnableGradGuard(bool on) : prev_(grad_enabled()) { set_grad_enabled(on); }
  ~EnableGradGuard() { set_grad_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// ---- recording helpers for op implementations ----

// True when grad mode is on and any input requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// The edge through which a gradient for `t` flows (its grad_fn, or its leaf accumulator).
Edge gradient_edge(const Tensor& t);

// Connects `outputs` to a new FunctionNode over `inputs`; returns the node.
// `backward` receives one gradient per output (undefined entries replaced by
// zeros when `zero_fill` is set) and returns one gradient per input.
std::shared_ptr<Node> record(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor*> outputs,
                             FunctionNode::Backward backward, bool first_order_only = false);

// A tensor with the values of `values` (sharing its storage) whose gradient
// flows into `edge` through an identity node; `values` detached when the edge is
// empty or grad mode is off. A backward that saved a detached copy of an input
// and that input's edge (not the input itself, which can hold more memory)
// rejoins the graph with it when its own backward is recorded (create_graph).
Tensor with_gradient_edge(const Tensor& values, const Edge& edge);

// Reduces a broadcast gradient `g` back to `shape` (sums the broadcast axes). Differentiable.
Tensor sum_to(const Tensor& g, const Shape& shape);

}  // namespace hpdl
