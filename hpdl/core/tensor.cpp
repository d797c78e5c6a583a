// Tensor creation, metadata and raw data access. Differentiable views live in
// ops/shape.cpp and autograd methods in autograd/variable.cpp.
#include "hpdl/core/tensor.h"

#include <cstring>

#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"

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

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(i);
  Tensor t = from_vector(v, {n});
  return t.to(dtype).to(device);
}

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

Tensor Tensor::rand(const Shape& shape, Generator& gen, double low, double high, DType dtype) {
  Tensor t = empty(shape, dtype);
  uint64_t off = gen.reserve(static_cast<uint64_t>(t.numel()));
  reference_backend().random_uniform(t, gen.seed(), off, low, high);
  return t;
}

Tensor Tensor::randn(const Shape& shape, Generator& gen, double mean, double stddev, DType dtype) {
  Tensor t = empty(shape, dtype);
  uint64_t off = gen.reserve(2 * static_cast<uint64_t>(t.numel()));
  reference_backend().random_normal(t, gen.seed(), off, mean, stddev);
  return t;
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

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return fmt::format("Tensor({}, {}, {})", dtype_name(dtype()), shape_str(shape()), device().str());
}

void* Tensor::raw_data() const {
  const auto& im = impl();
  if (!im.storage || !im.storage->data()) return nullptr;
  return static_cast<char*>(im.storage->data()) + im.offset * static_cast<int64_t>(dtype_size(im.dtype));
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
template int64_t* Tensor::data() const;
template int32_t* Tensor::data() const;
template uint8_t* Tensor::data() const;

double Tensor::item() const {
  HPDL_CHECK(numel() == 1, "item: tensor {} has {} elements, expected 1", shape_str(shape()), numel());
  return to_vector<double>()[0];
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = Tensor::empty(shape(), dtype_of<T>());
  c.copy_(*this);
  std::vector<T> out(static_cast<size_t>(numel()));
  if (!out.empty()) std::memcpy(out.data(), c.raw_data(), out.size() * sizeof(T));
  return out;
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;

Tensor& Tensor::fill_(double value) {
  if (numel() > 0) backend_for(device()).fill(*this, value);
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  HPDL_CHECK(src.numel() == numel(), "copy_: source {} has {} elements, destination {} has {}", shape_str(src.shape()),
             src.numel(), shape_str(shape()), numel());
  if (numel() == 0) return *this;
  if (src.device() == device()) {
    backend_for(device()).copy(src, *this);
  } else {
    // Cross-device: the non-CPU backend moves the bytes (it sees a CPU pointer on one side).
    Device d = src.device().is_cpu() ? device() : src.device();
    backend_for(d).copy(src, *this);
  }
  return *this;
}

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
