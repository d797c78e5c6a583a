// Nodes, grad mode and the recording helpers ops use.
#include "hpdl/autograd/node.h"

#include <atomic>

#include "hpdl/backend/backend.h"

namespace hpdl {

// Differentiable addition, defined by the ops layer; the engine sums gradients with it.
Tensor autograd_add(const Tensor& a, const Tensor& b);

namespace {
thread_local bool t_grad_enabled = true;
std::atomic<uint64_t> g_sequence{0};
// The node whose backward runs on this thread, for SavedTensor's error; a nested backward
// (activation checkpointing runs one inside its node) restores the outer one when done.
thread_local const Node* t_running = nullptr;

class RunningScope {
 public:
  explicit RunningScope(const Node* n) : prev_(t_running) { t_running = n; }
  ~RunningScope() { t_running = prev_; }
  RunningScope(const RunningScope&) = delete;
  RunningScope& operator=(const RunningScope&) = delete;

 private:
  const Node* prev_;
};
}  // namespace

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool on) { t_grad_enabled = on; }

std::vector<Tensor> FunctionNode::apply(const std::vector<Tensor>& grads) {
  HPDL_CHECK(fn_ != nullptr, "{}: backward through a graph that was already freed; pass retain_graph=true to the "
             "first backward() if you need a second one", name_);
  HPDL_CHECK(!(first_order_only_ && grad_enabled()), "{}: this fused kernel's backward is first-order only; "
             "create_graph (higher-order gradients) is not supported through it", name_);
  RunningScope running(this);
  return fn_(grads);
}

const Tensor& SavedTensor::get() const {
  if (!t_.defined()) return t_;
  const uint64_t now = t_.version();
  HPDL_CHECK(now == version_, "{}: {}{} {} ({}) needed for this gradient was modified in place after the forward "
             "(saved at version {}, now at version {}), so the gradient would be wrong; write into it only after "
             "backward() (an optimizer step, fill_, copy_), or pass a clone() to the forward",
             t_running ? t_running->name() : "backward", what_, index_ >= 0 ? fmt::format(" {}", index_) : "",
             shape_str(t_.shape()), dtype_name(t_.dtype()), version_, now);
  return t_;
}

std::vector<Tensor> AccumulateGrad::apply(const std::vector<Tensor>& grads) {
  auto impl = leaf_.lock();
  if (!impl || !grads[0].defined()) return {};
  Tensor leaf(impl);
  AutogradMeta& meta = leaf.autograd_meta();
  const Tensor& g = grads[0];
  HPDL_CHECK(g.shape() == leaf.shape(), "AccumulateGrad: gradient {} does not match parameter {}",
             shape_str(g.shape()), shape_str(leaf.shape()));
  if (!meta.grad || !meta.grad->defined()) {
    // Take the incoming buffer when nobody else holds it, else copy it: gradients
    // are shared between the inputs of some nodes (add passes dy to both).
    bool sole_owner = g.impl_ptr().use_count() <= 2 && g.storage().use_count() == 1 && g.is_contiguous();
    Tensor stored = (grad_enabled() || sole_owner) ? g : g.clone();
    if (!grad_enabled()) stored = stored.detach();
    meta.grad = std::make_shared<Tensor>(stored);
  } else if (grad_enabled()) {
    meta.grad = std::make_shared<Tensor>(autograd_add(*meta.grad, g));
  } else {
    // In place: the grad may be a view into a flat bucket (DataParallel).
    Tensor& acc = *meta.grad;
    Tensor gc = g.contiguous();
    if (acc.is_contiguous()) {
      backend_for(acc.device()).axpby(1.0, acc, 1.0, gc, acc);
    } else {
      acc.copy_(autograd_add(acc, gc));
    }
  }
  for (auto& hook : meta.post_accumulate_hooks) hook(leaf);
  return {};
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  AutogradMeta& meta = t.autograd_meta();
  if (meta.grad_fn) return {meta.grad_fn, meta.output_nr};
  auto acc = meta.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    // A sink: run it as soon as its gradient is complete (highest priority), so
    // post-accumulate hooks fire during backward (DataParallel overlaps its
    // bucket allreduces with the rest of backward), not after it.
    acc->sequence = UINT64_MAX;
    meta.grad_accumulator = acc;
  }
  return {acc, 0};
}

Tensor with_gradient_edge(const Tensor& values, const Edge& edge) {
  Tensor t = values.detach();
  if (!edge.fn || !grad_enabled()) return t;
  auto node = std::make_shared<FunctionNode>("saved_input", [](const std::vector<Tensor>& g) {
    return std::vector<Tensor>{g[0]};
  });
  node->sequence = g_sequence.fetch_add(1);
  node->num_outputs = 1;
  node->next.push_back(edge);
  AutogradMeta& meta = t.autograd_meta();
  meta.requires_grad = true;
  meta.grad_fn = node;
  meta.output_nr = 0;
  return t;
}

std::shared_ptr<Node> record(const char* name, const std::vector<Tensor>& inputs, std::vector<Tensor*> outputs,
                             FunctionNode::Backward backward, bool first_order_only) {
  auto node = std::make_shared<FunctionNode>(name, std::move(backward), first_order_only);
  node->sequence = g_sequence.fetch_add(1);
  node->num_outputs = static_cast<uint32_t>(outputs.size());
  node->next.reserve(inputs.size());
  for (const Tensor& in : inputs) node->next.push_back(gradient_edge(in));
  for (uint32_t i = 0; i < outputs.size(); ++i) {
    AutogradMeta& meta = outputs[i]->autograd_meta();
    meta.requires_grad = true;
    meta.grad_fn = node;
    meta.output_nr = i;
  }
  return node;
}

}  // namespace hpdl
