// Reductions and sum_to (the adjoint of broadcasting).
#include "hpdl/ops/reduce.h"

#include <algorithm>

#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"

namespace hpdl {
namespace {

std::vector<int> norm_axes(const Tensor& x, const std::vector<int64_t>& axes, const char* op) {
  std::vector<int> out;
  if (axes.empty()) {
    for (int i = 0; i < x.ndim(); ++i) out.push_back(i);
  } else {
    for (int64_t a : axes) out.push_back(normalize_axis(a, x.ndim(), op));
  }
  std::sort(out.begin(), out.end());
  HPDL_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), "{}: repeated axis in reduction", op);
  return out;
}

Shape keep_shape(const Tensor& x, const std::vector<int>& axes) {
  Shape s = x.shape();
  for (int a : axes) s[a] = 1;
  return s;
}

Shape drop_shape(const Tensor& x, const std::vector<int>& axes) {
  Shape s;
  for (int i = 0; i < x.ndim(); ++i)
    if (std::find(axes.begin(), axes.end(), i) == axes.end()) s.push_back(x.shape()[i]);
  return s;
}

// Runs the backend reduction, returning the keepdim-shaped result (no graph).
Tensor reduce_raw(ReduceOp op, const Tensor& x, const std::vector<int>& axes) {
  detail::check_float(x, reduce_name(op));
  Shape ks = keep_shape(x, axes);
  for (int a : axes)
    HPDL_CHECK(x.shape()[a] > 0 || op == ReduceOp::sum, "{}: reducing an empty axis {} of shape {}",
               reduce_name(op), a, shape_str(x.shape()));
  Tensor out = Tensor::empty(ks, op == ReduceOp::argmax ? DType::i64 : x.dtype(), x.device());
  if (x.numel() == 0) {
    out.fill_(0);
    return out;
  }
  detail::pick(x, OpKind::reduce).reduce(op, x, axes, out);
  return out;
}

int64_t reduced_count(const Tensor& x, const std::vector<int>& axes) {
  int64_t n = 1;
  for (int a : axes) n *= x.shape()[a];
  return n;
}

}  // namespace

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int lead = g.ndim() - static_cast<int>(shape.size());
  HPDL_CHECK(lead >= 0, "sum_to: cannot reduce {} to {}", shape_str(g.shape()), shape_str(shape));
  std::vector<int64_t> axes;
  for (int i = 0; i < g.ndim(); ++i)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) axes.push_back(i);
  Tensor s = axes.empty() ? g : sum(g, axes, true);
  return s.reshape(shape);
}

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  auto ax = norm_axes(x, axes, "sum");
  Tensor out = reduce_raw(ReduceOp::sum, x, ax);
  if (!keepdim) out = make_view(out, drop_shape(x, ax), contiguous_strides(drop_shape(x, ax)), out.offset());
  if (needs_grad({&x})) {
    Shape xs = x.shape(), ks = keep_shape(x, ax);
    record("sum", {x}, {&out}, [xs, ks](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].reshape(ks).expand(xs)};
    });
  }
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  auto ax = norm_axes(x, axes, "mean");
  return mul(sum(x, axes, keepdim), 1.0 / static_cast<double>(reduced_count(x, ax)));
}

namespace {
Tensor extremum(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  auto ax = norm_axes(x, axes, reduce_name(op));
  Tensor out = reduce_raw(op, x, ax);
  Tensor kept = out;
  if (!keepdim) out = make_view(out, drop_shape(x, ax), contiguous_strides(drop_shape(x, ax)), out.offset());
  if (needs_grad({&x})) {
    Shape ks = keep_shape(x, ax);
    std::vector<int64_t> axes64(ax.begin(), ax.end());
    record(reduce_name(op), {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'"),
                                          saved_m = SavedTensor(kept.detach(), "output"), ks,
                                          axes64](const std::vector<Tensor>& g) {
      // Split the gradient evenly among the positions that attain the extremum.
      Tensor mask = eq(saved_x.get().detach(), saved_m.get());
      Tensor count = sum(mask, axes64, true);
      return std::vector<Tensor>{mul(g[0].reshape(ks), div(mask, count))};
    });
  }
  return out;
}
}  // namespace

Tensor max(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  return extremum(ReduceOp::max, x, axes, keepdim);
}
Tensor min(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim) {
  return extremum(ReduceOp::min, x, axes, keepdim);
}

Tensor argmax(const Tensor& x, int64_t axis, bool keepdim) {
  int a = normalize_axis(axis, x.ndim(), "argmax");
  Tensor out = reduce_raw(ReduceOp::argmax, x, {a});
  if (!keepdim) out = make_view(out, drop_shape(x, {a}), contiguous_strides(drop_shape(x, {a})), out.offset());
  return out;
}

Tensor sum_square(const Tensor& x) {
  std::vector<int> ax;
  for (int i = 0; i < x.ndim(); ++i) ax.push_back(i);
  Tensor out = reduce_raw(ReduceOp::sum_square, x, ax);
  out = make_view(out, {}, {}, out.offset());
  if (needs_grad({&x})) {
    record("sum_square", {x}, {&out}, [saved_x = SavedTensor(x, "input 'x'")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{mul(saved_x.get(), mul(g[0], 2.0))};
    });
  }
  return out;
}

}  // namespace hpdl
