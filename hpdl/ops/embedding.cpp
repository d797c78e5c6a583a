// index_select along an axis and the embedding lookup built on it. The
// gradient of a selection is an index_add of the incoming gradient into zeros
// (repeated indices add up); the gradient of that index_add is the selection
// again, so both are differentiable to any order.
#include "hpdl/ops/embedding.h"

#include "hpdl/ops/op_impl.h"

namespace hpdl {
namespace {

void check_index(const Tensor& index, const char* op) {
  detail::check_defined(index, op, "index");
  HPDL_CHECK(index.dtype() == DType::i64, "{}: index must be int64, got {} {}", op, dtype_name(index.dtype()),
             shape_str(index.shape()));
}

}  // namespace

// out = zeros(shape) with out[..., index[i], ...] += src[..., i, ...] along axis.
Tensor index_add_into_zeros(const Shape& shape, int64_t axis, const Tensor& index, const Tensor& src) {
  detail::check_defined(src, "index_add_into_zeros", "source");
  detail::check_float(src, "index_add_into_zeros");
  check_index(index, "index_add_into_zeros");
  HPDL_CHECK(index.ndim() == 1 && src.ndim() == static_cast<int>(shape.size()) && axis >= 0 &&
                 axis < src.ndim() && src.dim(axis) == index.dim(0),
             "index_add_into_zeros: source {} and index {} do not fit output {} along axis {}", shape_str(src.shape()),
             shape_str(index.shape()), shape_str(shape), axis);
  Tensor out = Tensor::zeros(shape, src.dtype(), src.device());
  Tensor sc = src.contiguous().detach();
  if (sc.numel() > 0) detail::pick(src, OpKind::gather).index_add(out, static_cast<int>(axis), index, sc);
  if (needs_grad({&src})) {
    record("index_add", {src}, {&out}, [axis, saved_index = SavedTensor(index, "index")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{index_select(g[0], axis, saved_index.get())};
    });
  }
  return out;
}

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index) {
  detail::check_defined(x, "index_select", "input");
  detail::check_float(x, "index_select");
  check_index(index, "index_select");
  HPDL_CHECK(index.ndim() == 1, "index_select: index must be 1-D, got {}", shape_str(index.shape()));
  const int a = normalize_axis(axis, x.ndim(), "index_select");
  Shape s = x.shape();
  s[a] = index.dim(0);
  Tensor idx = index.contiguous();
  Tensor out = Tensor::empty(s, x.dtype(), x.device());
  if (out.numel() > 0) detail::pick(x, OpKind::gather).index_select(x.contiguous().detach(), a, idx, out);
  if (needs_grad({&x})) {
    Shape xs = x.shape();
    record("index_select", {x}, {&out}, [xs, a, saved_index = SavedTensor(idx, "index")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{index_add_into_zeros(xs, a, saved_index.get(), g[0])};
    });
  }
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  detail::check_defined(weight, "embedding", "weight");
  detail::check_ndim(weight, 2, "embedding", "weight [V, D]");
  check_index(indices, "embedding");
  // rows [numel(indices), D] -> [..., D]
  Tensor rows = index_select(weight, 0, indices.contiguous().reshape({indices.numel()}));
  Shape s = indices.shape();
  s.push_back(weight.dim(1));
  return rows.reshape(s);
}

}  // namespace hpdl
