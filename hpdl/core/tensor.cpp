// Tensor creation, metadata and raw data access. Methods that move data
// (fill, copy, random fills) run on a backend and live in backend/tensor_data.cpp;
// differentiable views live in ops/shape.cpp, autograd methods in autograd/variable.cpp.
#include "hpdl/core/tensor.h"

#include <cstring>


namespace hpdl {

namespace {

std::shared_ptr<TensorImpl> new_impl(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) HPDL_CHECK(d >= 0, "Tensor: negative dimension in shape {}", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(numel_of(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return impl;
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) { return Tensor(new_impl(shape, dtype, device)); }

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  HPDL_CHECK(static_cast<int64_t>(values.size()) == numel_of(shape), "from_vector: {} values for shape {} ({} elements)",
             values.size(), shape_str(shape), numel_of(shape));
  Tensor t = empty(shape, dtype_of<T>());
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}
template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&);

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(data, static_cast<size_t>(numel_of(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

int64_t Tensor::dim(int64_t axis) const { return shape()[normalize_axis(axis, ndim(), "Tensor::dim")]; }

bool Tensor::is_contiguous() const {
  const auto& s = shape();
  const auto& st = strides();
  int64_t expected = 1;
  for (size_t i = s.size(); i-- > 0;) {
    if (s[i] != 1 && st[i] != expected) return false;
    expected *= s[i];
  }
  return true;
}

namespace {
Strides channels_last_strides(const Shape& s) {
  // [N, C, H, W] stored as [N, H, W, C]
  return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]};
}
}  // namespace

Tensor Tensor::empty_channels_last(const Shape& shape, DType dtype, Device device) {
  HPDL_CHECK(shape.size() == 4, "empty_channels_last: shape {} is not 4-D [N, C, H, W]", shape_str(shape));
  Tensor flat = empty({numel_of(shape)}, dtype, device);
  return make_view(flat, shape, channels_last_strides(shape), 0);
}

bool Tensor::is_channels_last() const {
  const auto& s = shape();
  if (s.size() != 4) return false;
  const Strides want = channels_last_strides(s);
  const auto& st = strides();
  for (size_t i = 0; i < 4; ++i)
    if (s[i] != 1 && st[i] != want[i]) return false;
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return fmt::format("Tensor({}, {}, {})", dtype_name(dtype()), shape_str(shape()), device().str());
}

void* Tensor::raw_data() const {
  const auto& im = impl();
  if (!im.storage || !im.storage->data()) return nullptr;
  return static_cast<char*>(im.storage->data()) + im.offset * static_cast<int64_t>(dtype_size(im.dtype));
}

uint64_t Tensor::version() const {
  const auto& st = impl().storage;
  return st ? st->version() : 0;
}

void Tensor::bump_version() const {
  if (const auto& st = impl().storage) st->bump_version();
}

template <typename T>
T* Tensor::data() const {
  HPDL_CHECK(dtype() == dtype_of<T>(), "Tensor::data: tensor is {}, accessed as {}", dtype_name(dtype()),
             dtype_name(dtype_of<T>()));
  return static_cast<T*>(raw_data());
}
template float* Tensor::data() const;
template double* Tensor::data() const;
template bf16* Tensor::data() const;
template f16* Tensor::data() const;
template int64_t* Tensor::data() const;
template int32_t* Tensor::data() const;
template uint8_t* Tensor::data() const;

Tensor make_view(const Tensor& base, const Shape& shape, const Strides& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(impl);
}

}  // namespace hpdl
