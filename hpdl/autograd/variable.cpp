// The autograd methods of Tensor.
#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/node.h"

namespace hpdl {

AutogradMeta& Tensor::autograd_meta() const {
  auto& im = impl();
  if (!im.autograd) im.autograd = std::make_unique<AutogradMeta>();
  return *im.autograd;
}

bool Tensor::requires_grad() const {
  const auto& im = impl();
  return im.autograd && im.autograd->requires_grad;
}

Tensor& Tensor::set_requires_grad(bool value) {
  HPDL_CHECK(!value || dtype_is_float(dtype()), "set_requires_grad: only floating-point tensors can require "
             "gradients, this one is {}", dtype_name(dtype()));
  HPDL_CHECK(is_leaf(), "set_requires_grad: only leaf tensors can change requires_grad (use detach() first)");
  autograd_meta().requires_grad = value;
  return *this;
}

const Tensor& Tensor::grad() const {
  static const Tensor undefined;
  const auto& im = impl();
  if (!im.autograd || !im.autograd->grad) return undefined;
  return *im.autograd->grad;
}

void Tensor::set_grad(const Tensor& g) {
  HPDL_CHECK(!g.defined() || g.shape() == shape(), "set_grad: gradient {} for tensor {}", shape_str(g.shape()),
             shape_str(shape()));
  autograd_meta().grad = g.defined() ? std::make_shared<Tensor>(g) : nullptr;
}

void Tensor::zero_grad() {
  const auto& im = impl();
  if (im.autograd) im.autograd->grad.reset();
}

bool Tensor::is_leaf() const {
  const auto& im = impl();
  return !im.autograd || !im.autograd->grad_fn;
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> none;
  const auto& im = impl();
  return im.autograd ? im.autograd->grad_fn : none;
}

Tensor Tensor::detach() const {
  return make_view(*this, shape(), strides(), offset());
}

void Tensor::backward(const Tensor& grad, bool retain_graph, bool create_graph) const {
  run_backward({*this}, {grad}, retain_graph, create_graph);
}

}  // namespace hpdl
