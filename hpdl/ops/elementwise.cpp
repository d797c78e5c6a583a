// Elementwise ops. Each forward sits next to its backward; derivatives are
// written with these same ops so they can be differentiated again.
#include "hpdl/ops/elementwise.h"

#include <cmath>

#include "hpdl/ops/op_impl.h"

namespace hpdl {

using detail::check_same;

Tensor sum_to(const Tensor& g, const Shape& shape);

namespace {

// Operands of two float dtypes meet in the wider one (differentiable casts), as
// under autocast when a bfloat16 activation meets a float32 tensor.
#define HPDL_PROMOTE_BINARY(fn, a, b)                                                                        \
  if ((a).defined() && (b).defined() && (a).dtype() != (b).dtype() && dtype_is_float((a).dtype()) &&         \
      dtype_is_float((b).dtype())) {                                                                          \
    DType t_ = detail::promote_types((a).dtype(), (b).dtype());                                               \
    return fn((a).to(t_), (b).to(t_));                                                                        \
  }

Tensor run_binary(BinaryOp op, const Tensor& a, const Tensor& b, double alpha = 0) {
  const char* name = binary_name(op);
  detail::check_defined(a, name, "first operand");
  detail::check_defined(b, name, "second operand");
  check_same(a, b, name);
  detail::check_float(a, name);
  Shape s = broadcast_shapes(a.shape(), b.shape(), name);
  // Channels-last operands of the output's shape give a channels-last output (elementwise, any layout works).
  const Tensor& like = a.shape() == s ? a : b;
  Tensor out = like.shape() == s ? detail::empty_like_layout(s, a.dtype(), like) : Tensor::empty(s, a.dtype(), a.device());
  if (out.numel() > 0) detail::pick(a, OpKind::binary).binary(op, a, b, out, alpha);
  return out;
}

Tensor run_unary(UnaryOp op, const Tensor& x, double alpha = 0) {
  const char* name = unary_name(op);
  detail::check_defined(x, name, "input");
  detail::check_float(x, name);
  Tensor out = detail::empty_like(x);
  if (out.numel() > 0) detail::pick(x, OpKind::unary).unary(op, x, out, alpha);
  return out;
}

}  // namespace

Tensor autograd_add(const Tensor& a, const Tensor& b) { return add(a, b); }

Tensor add(const Tensor& a, const Tensor& b) {
  HPDL_PROMOTE_BINARY(add, a, b)
  Tensor out = run_binary(BinaryOp::add, a, b);
  if (needs_grad({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    record("add", {a, b}, {&out}, [sa, sb](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{sum_to(g[0], sa), sum_to(g[0], sb)};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  HPDL_PROMOTE_BINARY(sub, a, b)
  Tensor out = run_binary(BinaryOp::sub, a, b);
  if (needs_grad({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    record("sub", {a, b}, {&out}, [sa, sb](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{sum_to(g[0], sa), sum_to(neg(g[0]), sb)};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  HPDL_PROMOTE_BINARY(mul, a, b)
  Tensor out = run_binary(BinaryOp::mul, a, b);
  if (needs_grad({&a, &b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Shape sa = a.shape(), sb = b.shape();
    // d(ab)/da = b, d(ab)/db = a: each operand is saved only when the other one's gradient reads it.
    SavedTensor saved_a(gb ? a : Tensor(), "input 'a'"), saved_b(ga ? b : Tensor(), "input 'b'");
    record("mul", {a, b}, {&out}, [saved_a, saved_b, sa, sb, ga, gb](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{ga ? sum_to(mul(g[0], saved_b.get()), sa) : Tensor(),
                                 gb ? sum_to(mul(g[0], saved_a.get()), sb) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  HPDL_PROMOTE_BINARY(div, a, b)
  Tensor out = run_binary(BinaryOp::div, a, b);
  if (needs_grad({&a, &b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    Shape sa = a.shape(), sb = b.shape();
    // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2: b always saved, a only for b's gradient.
    SavedTensor saved_a(gb ? a : Tensor(), "input 'a'"), saved_b(b, "input 'b'");
    record("div", {a, b}, {&out}, [saved_a, saved_b, sa, sb, ga, gb](const std::vector<Tensor>& g) {
      const Tensor& b = saved_b.get();
      return std::vector<Tensor>{ga ? sum_to(div(g[0], b), sa) : Tensor(),
                                 gb ? sum_to(neg(div(mul(g[0], saved_a.get()), square(b))), sb) : Tensor()};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = run_binary(BinaryOp::pow, a, b);
  if (needs_grad({&a, &b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    // d(a^b)/da = b * a^(b-1), d(a^b)/db = a^b * log(a)
    record("pow", {a, b}, {&out}, [saved_a = SavedTensor(a, "input 'a'"), saved_b = SavedTensor(b, "input 'b'"), ga,
                                   gb](const std::vector<Tensor>& g) {
      const Tensor &a = saved_a.get(), &b = saved_b.get();
      return std::vector<Tensor>{ga ? sum_to(mul(g[0], mul(b, pow(a, sub(b, Tensor::ones({}, b.dtype(), b.device()))))), a.shape()) : Tensor(),
                                 gb ? sum_to(mul(g[0], mul(pow(a, b), log(a))), b.shape()) : Tensor()};
    });
  }
  return out;
}

namespace {
Tensor extremum(BinaryOp op, const Tensor& a, const Tensor& b) {
  Tensor out = run_binary(op, a, b);
  if (needs_grad({&a, &b})) {
    record(binary_name(op), {a, b}, {&out}, [saved_a = SavedTensor(a, "input 'a'"),
                                             saved_b = SavedTensor(b, "input 'b'"), op](const std::vector<Tensor>& g) {
      const Tensor &a = saved_a.get(), &b = saved_b.get();
      // The gradient goes to a where a wins (ties to a), to b elsewhere.
      Tensor a_wins = op == BinaryOp::maximum ? ge(a, b) : ge(b, a);
      Tensor b_wins = add(neg(a_wins), 1.0);
      return std::vector<Tensor>{sum_to(mul(g[0], a_wins), a.shape()), sum_to(mul(g[0], b_wins), b.shape())};
    });
  }
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::minimum, a, b); }

Tensor add(const Tensor& a, double s) {
  Tensor out = run_unary(UnaryOp::add_scalar, a, s);
  if (needs_grad({&a})) record("add_scalar", {a}, {&out}, [](const std::vector<Tensor>& g) { return g; });
  return out;
}

Tensor mul(const Tensor& a, double s) {
  Tensor out = run_unary(UnaryOp::mul_scalar, a, s);
  if (needs_grad({&a}))
    record("mul_scalar", {a}, {&out}, [s](const std::vector<Tensor>& g) { return std::vector<Tensor>{mul(g[0], s)}; });
  return out;
}

Tensor neg(const Tensor& a) {
  Tensor out = run_unary(UnaryOp::neg, a);
  if (needs_grad({&a})) record("neg", {a}, {&out}, [](const std::vector<Tensor>& g) { return std::vector<Tensor>{neg(g[0])}; });
  return out;
}

Tensor pow(const Tensor& a, double e) {
  Tensor out = run_unary(UnaryOp::pow_scalar, a, e);
  if (needs_grad({&a})) {
    // d(a^e)/da = e * a^(e-1)
    record("pow_scalar", {a}, {&out}, [saved_a = SavedTensor(a, "input 'a'"), e](const std::vector<Tensor>& g) {
      const Tensor& a = saved_a.get();
      Tensor d = e == 2.0 ? mul(a, 2.0) : mul(pow(a, e - 1), e);
      return std::vector<Tensor>{mul(g[0], d)};
    });
  }
  return out;
}

Tensor exp(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::exp, x);
  if (needs_grad({&x})) {
    record("exp", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'"), saved_y = SavedTensor(out.detach(), "output")](
                                  const std::vector<Tensor>& g) {
      // d exp(x) = exp(x); recomputed from x when building a higher-order graph.
      return std::vector<Tensor>{mul(g[0], grad_enabled() ? exp(saved_x.get()) : saved_y.get())};
    });
  }
  return out;
}

Tensor log(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::log, x);
  if (needs_grad({&x}))
    record("log", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{div(g[0], saved_x.get())};
    });
  return out;
}

Tensor sqrt(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::sqrt, x);
  if (needs_grad({&x})) {
    // d sqrt(x) = 1 / (2 sqrt(x))
    record("sqrt", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(g[0], mul(rsqrt(saved_x.get()), 0.5))};
    });
  }
  return out;
}

Tensor rsqrt(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::rsqrt, x);
  if (needs_grad({&x})) {
    // d x^(-1/2) = -1/2 x^(-3/2)
    record("rsqrt", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(g[0], mul(pow(saved_x.get(), -1.5), -0.5))};
    });
  }
  return out;
}

Tensor tanh(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::tanh, x);
  if (needs_grad({&x})) {
    record("tanh", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'"), saved_y = SavedTensor(out.detach(), "output")](
                                   const std::vector<Tensor>& g) {
      // d tanh(x) = 1 - tanh(x)^2
      Tensor t = grad_enabled() ? tanh(saved_x.get()) : saved_y.get();
      return std::vector<Tensor>{mul(g[0], add(neg(square(t)), 1.0))};
    });
  }
  return out;
}

Tensor sigmoid(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::sigmoid, x);
  if (needs_grad({&x})) {
    record("sigmoid", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'"),
                                    saved_y = SavedTensor(out.detach(), "output")](const std::vector<Tensor>& g) {
      // d s(x) = s(x) (1 - s(x))
      Tensor s = grad_enabled() ? sigmoid(saved_x.get()) : saved_y.get();
      return std::vector<Tensor>{mul(g[0], mul(s, add(neg(s), 1.0)))};
    });
  }
  return out;
}

namespace {
// dx = dy * (x > 0 ? 1 : slope): one fused kernel, itself differentiable in dy
// (the derivative in x is zero almost everywhere).
Tensor relu_backward(const Tensor& dy, const Tensor& x, double slope) {
  BinaryOp op = slope == 0 ? BinaryOp::relu_grad : BinaryOp::leaky_relu_grad;
  Tensor dx = run_binary(op, dy, x, slope);
  if (needs_grad({&dy})) {
    record("relu_backward", {dy}, {&dx}, [saved_x = SavedTensor(x, "input 'x'"), slope](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{relu_backward(g[0], saved_x.get().detach(), slope)};
    });
  }
  return dx;
}
}  // namespace

Tensor relu(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::relu, x);
  if (needs_grad({&x}))
    record("relu", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{relu_backward(g[0], saved_x.get().detach(), 0)};
    });
  return out;
}

Tensor add_relu(const Tensor& a, const Tensor& b) {
  HPDL_PROMOTE_BINARY(add_relu, a, b)
  Tensor out = run_binary(BinaryOp::add_relu, a, b);
  if (needs_grad({&a, &b})) {
    Shape sa = a.shape(), sb = b.shape();
    SavedTensor saved_y(out.detach(), "output");  // y > 0 exactly where a + b > 0
    record("add_relu", {a, b}, {&out}, [sa, sb, saved_y](const std::vector<Tensor>& g) {
      Tensor d = relu_backward(g[0], saved_y.get(), 0);
      return std::vector<Tensor>{sum_to(d, sa), sum_to(d, sb)};
    });
  }
  return out;
}

Tensor leaky_relu(const Tensor& x, double slope) {
  Tensor out = run_unary(UnaryOp::leaky_relu, x, slope);
  if (needs_grad({&x}))
    record("leaky_relu", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'"), slope](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{relu_backward(g[0], saved_x.get().detach(), slope)};
    });
  return out;
}

Tensor gelu(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::gelu, x);
  if (needs_grad({&x})) {
    // gelu(x) = x Phi(x), so d/dx = Phi(x) + x phi(x) with Phi(x) = (1 + erf(x/sqrt2))/2
    // and phi(x) = exp(-x^2/2)/sqrt(2 pi).
    record("gelu", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      const Tensor& x = saved_x.get();
      Tensor Phi = mul(add(erf(mul(x, 0.70710678118654752440)), 1.0), 0.5);
      Tensor phi = mul(exp(mul(square(x), -0.5)), 0.39894228040143267794);
      return std::vector<Tensor>{mul(g[0], add(Phi, mul(x, phi)))};
    });
  }
  return out;
}

Tensor erf(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::erf, x);
  if (needs_grad({&x})) {
    // d erf(x) = 2/sqrt(pi) exp(-x^2)
    record("erf", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(g[0], mul(exp(neg(square(saved_x.get()))), 1.12837916709551257390))};
    });
  }
  return out;
}

Tensor abs(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::abs, x);
  if (needs_grad({&x}))
    record("abs", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      NoGradGuard ng;
      Tensor s = run_unary(UnaryOp::sign, saved_x.get());
      return std::vector<Tensor>{mul(g[0], s)};
    });
  return out;
}

Tensor square(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::square, x);
  if (needs_grad({&x}))
    record("square", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(g[0], mul(saved_x.get(), 2.0))};
    });
  return out;
}

Tensor sin(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::sin, x);
  if (needs_grad({&x}))
    record("sin", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(g[0], cos(saved_x.get()))};
    });
  return out;
}

Tensor cos(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::cos, x);
  if (needs_grad({&x}))
    record("cos", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(g[0], neg(sin(saved_x.get())))};
    });
  return out;
}

Tensor reciprocal(const Tensor& x) {
  Tensor out = run_unary(UnaryOp::reciprocal, x);
  if (needs_grad({&x}))
    record("reciprocal", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{neg(div(g[0], square(saved_x.get())))};
    });
  return out;
}

Tensor gt(const Tensor& a, const Tensor& b) { return run_binary(BinaryOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return run_binary(BinaryOp::ge, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return run_binary(BinaryOp::lt, a, b); }
Tensor eq(const Tensor& a, const Tensor& b) { return run_binary(BinaryOp::eq, a, b); }
Tensor gt(const Tensor& a, double s) { return run_binary(BinaryOp::gt, a, Tensor::scalar(s, a.dtype(), a.device())); }

}  // namespace hpdl
