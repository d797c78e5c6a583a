// Views (reshape, permute, slice, expand, ...), copies (contiguous, clone, to)
// and joins (cat, stack, split). Views share storage; their gradients are the
// inverse view or a scatter of the incoming gradient.
#include "hpdl/ops/shape.h"

#include <numeric>

#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"

namespace hpdl {

Tensor sum_to(const Tensor& g, const Shape& shape);

namespace {

Shape infer_shape(const Shape& requested, int64_t numel, const Shape& from) {
  Shape s = requested;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      HPDL_CHECK(infer < 0, "reshape: more than one -1 in {}", shape_str(requested));
      infer = static_cast<int>(i);
    } else {
      HPDL_CHECK(s[i] >= 0, "reshape: negative size in {}", shape_str(requested));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    HPDL_CHECK(known > 0 && numel % known == 0, "reshape: cannot reshape {} ({} elements) into {}", shape_str(from),
               numel, shape_str(requested));
    s[infer] = numel / known;
  }
  HPDL_CHECK(numel_of(s) == numel, "reshape: cannot reshape {} ({} elements) into {}", shape_str(from), numel,
             shape_str(requested));
  return s;
}

}  // namespace

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), this->shape());
  if (s == this->shape()) return *this;
  Tensor src = is_contiguous() ? *this : contiguous();
  Tensor out = make_view(src, s, contiguous_strides(s), src.offset());
  if (needs_grad({&src})) {
    Shape from = this->shape();
    record("reshape", {src}, {&out}, [from](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].reshape(from)}; });
  }
  return out;
}

Tensor Tensor::flatten(int64_t start_axis) const {
  int a = normalize_axis(start_axis, ndim(), "flatten");
  Shape s(shape().begin(), shape().begin() + a);
  s.push_back(-1);
  if (numel() == 0) {
    int64_t rest = 1;
    for (int i = a; i < ndim(); ++i) rest *= shape()[i];
    s.back() = rest;
  }
  return reshape(s);
}

Tensor Tensor::permute(const std::vector<int64_t>& axes) const {
  HPDL_CHECK(static_cast<int>(axes.size()) == ndim(), "permute: {} axes for a tensor of {} dims", axes.size(), ndim());
  Shape s(ndim());
  Strides st(ndim());
  std::vector<int64_t> inverse(ndim(), -1);
  for (int i = 0; i < ndim(); ++i) {
    int a = normalize_axis(axes[i], ndim(), "permute");
    HPDL_CHECK(inverse[a] < 0, "permute: axis {} repeated", a);
    inverse[a] = i;
    s[i] = shape()[a];
    st[i] = strides()[a];
  }
  Tensor out = make_view(*this, s, st, offset());
  if (needs_grad({this})) {
    record("permute", {*this}, {&out}, [inverse](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].permute(inverse)}; });
  }
  return out;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  int ia = normalize_axis(a, ndim(), "transpose"), ib = normalize_axis(b, ndim(), "transpose");
  std::vector<int64_t> axes(ndim());
  std::iota(axes.begin(), axes.end(), 0);
  std::swap(axes[ia], axes[ib]);
  return permute(axes);
}

Tensor Tensor::slice(int64_t axis, int64_t start, int64_t end, int64_t step) const {
  int a = normalize_axis(axis, ndim(), "slice");
  const int64_t n = shape()[a];
  HPDL_CHECK(step >= 1, "slice: step must be positive, got {}", step);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape();
  Strides st = strides();
  s[a] = (end - start + step - 1) / step;
  st[a] *= step;
  Tensor out = make_view(*this, s, st, offset() + start * strides()[a]);
  if (needs_grad({this})) {
    Shape full = shape();
    DType dt = dtype();
    Device dev = device();
    record("slice", {*this}, {&out}, [full, dt, dev, a, start, end, step](const std::vector<Tensor>& g) {
      // Scatter into zeros: the gradient is g at the sliced positions, 0 elsewhere.
      if (grad_enabled()) {
        // Differentiable form: pad g back with concatenated zero blocks (step 1 only).
        HPDL_CHECK(step == 1, "slice: higher-order gradients through a strided slice are not supported");
        std::vector<Tensor> parts;
        Shape sb = full, sa = full;
        sb[a] = start;
        sa[a] = full[a] - end;
        if (start > 0) parts.push_back(Tensor::zeros(sb, dt, dev));
        parts.push_back(g[0]);
        if (end < full[a]) parts.push_back(Tensor::zeros(sa, dt, dev));
        return std::vector<Tensor>{cat(parts, a)};
      }
      // Zeros in the gradient's layout: a channels-last gradient (a cropped convolution
      // input, design decision 75) stays channels-last.
      Tensor z = detail::empty_like_layout(full, dt, g[0]);
      z.fill_(0.0);
      Tensor view = z.slice(a, start, end, step);
      view.copy_(g[0]);
      return std::vector<Tensor>{z};
    });
  }
  return out;
}

Tensor Tensor::select(int64_t axis, int64_t index) const {
  int a = normalize_axis(axis, ndim(), "select");
  HPDL_CHECK(index >= -shape()[a] && index < shape()[a], "select: index {} out of range for axis {} of size {}", index,
             a, shape()[a]);
  if (index < 0) index += shape()[a];
  return slice(a, index, index + 1).squeeze(a);
}

Tensor Tensor::expand(const Shape& shape) const {
  const int lead = static_cast<int>(shape.size()) - ndim();
  HPDL_CHECK(lead >= 0, "expand: cannot expand {} to fewer dims {}", shape_str(this->shape()), shape_str(shape));
  Strides st(shape.size(), 0);
  for (int i = 0; i < ndim(); ++i) {
    int64_t d = this->shape()[i];
    HPDL_CHECK(d == shape[lead + i] || d == 1, "expand: cannot expand {} to {}", shape_str(this->shape()),
               shape_str(shape));
    st[lead + i] = d == 1 && shape[lead + i] != 1 ? 0 : strides()[i];
  }
  if (shape == this->shape()) return *this;
  Tensor out = make_view(*this, shape, st, offset());
  if (needs_grad({this})) {
    Shape from = this->shape();
    record("expand", {*this}, {&out}, [from](const std::vector<Tensor>& g) { return std::vector<Tensor>{sum_to(g[0], from)}; });
  }
  return out;
}

Tensor Tensor::unsqueeze(int64_t axis) const {
  int a = normalize_axis(axis, ndim() + 1, "unsqueeze");
  Shape s = shape();
  s.insert(s.begin() + a, 1);
  return reshape(s);
}

Tensor Tensor::squeeze(int64_t axis) const {
  int a = normalize_axis(axis, ndim(), "squeeze");
  HPDL_CHECK(shape()[a] == 1, "squeeze: axis {} has size {}, not 1", a, shape()[a]);
  Shape s = shape();
  Strides st = strides();
  s.erase(s.begin() + a);
  st.erase(st.begin() + a);
  Tensor out = make_view(*this, s, st, offset());
  if (needs_grad({this})) {
    Shape from = shape();
    record("squeeze", {*this}, {&out}, [from](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].reshape(from)}; });
  }
  return out;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), dtype(), device());
  out.copy_(*this);
  if (needs_grad({this})) record("clone", {*this}, {&out}, [](const std::vector<Tensor>& g) { return g; });
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = Tensor::empty(shape(), dt, device());
  out.copy_(*this);
  if (needs_grad({this}) && dtype_is_float(dt)) {
    DType from = dtype();
    record("to_dtype", {*this}, {&out}, [from](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].to(from)}; });
  }
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor out = Tensor::empty(shape(), dtype(), dev);
  out.copy_(contiguous());
  if (needs_grad({this})) {
    Device from = device();
    record("to_device", {*this}, {&out}, [from](const std::vector<Tensor>& g) { return std::vector<Tensor>{g[0].to(from)}; });
  }
  return out;
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t axis) {
  HPDL_CHECK(!tensors.empty(), "cat: no tensors given");
  const Tensor& first = tensors[0];
  int a = normalize_axis(axis, first.ndim(), "cat");
  Shape s = first.shape();
  int64_t total = 0;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    detail::check_same(first, t, "cat");
    HPDL_CHECK(t.ndim() == first.ndim(), "cat: tensor {} has shape {}, tensor 0 has {}", i, shape_str(t.shape()),
               shape_str(first.shape()));
    for (int d = 0; d < t.ndim(); ++d)
      HPDL_CHECK(d == a || t.shape()[d] == s[d], "cat: tensor {} has shape {}, tensor 0 has {} (axis {})", i,
                 shape_str(t.shape()), shape_str(first.shape()), a);
    sizes.push_back(t.shape()[a]);
    total += t.shape()[a];
  }
  s[a] = total;
  Tensor out = Tensor::empty(s, first.dtype(), first.device());
  int64_t pos = 0;
  for (const Tensor& t : tensors) {
    Tensor dst = make_view(out, t.shape(), out.strides(), out.offset() + pos * out.strides()[a]);
    if (t.numel() > 0) dst.copy_(t);
    pos += t.shape()[a];
  }
  if (needs_grad(tensors)) {
    record("cat", tensors, {&out}, [sizes, a](const std::vector<Tensor>& g) { return split(g[0], sizes, a); });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t axis) {
  HPDL_CHECK(!tensors.empty(), "stack: no tensors given");
  int a = normalize_axis(axis, tensors[0].ndim() + 1, "stack");
  std::vector<Tensor> expanded;
  for (size_t i = 0; i < tensors.size(); ++i) {
    HPDL_CHECK(tensors[i].shape() == tensors[0].shape(), "stack: tensor {} has shape {}, tensor 0 has {}", i,
               shape_str(tensors[i].shape()), shape_str(tensors[0].shape()));
    expanded.push_back(tensors[i].unsqueeze(a));
  }
  return cat(expanded, a);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis) {
  int a = normalize_axis(axis, x.ndim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  HPDL_CHECK(total == x.shape()[a], "split: sizes add up to {}, axis {} of {} has {}", total, a, shape_str(x.shape()),
             x.shape()[a]);
  std::vector<Tensor> out;
  int64_t pos = 0;
  for (int64_t s : sizes) {
    out.push_back(x.slice(a, pos, pos + s));
    pos += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t axis) {
  int a = normalize_axis(axis, x.ndim(), "chunk");
  HPDL_CHECK(chunks >= 1, "chunk: need at least one chunk, got {}", chunks);
  int64_t n = x.shape()[a], each = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t pos = 0; pos < n; pos += each) sizes.push_back(std::min(each, n - pos));
  return split(x, sizes, a);
}

}  // namespace hpdl
