// The Tensor methods that move or fill data: they run on the tensor's device
// backend, so they sit in the backend layer (core only declares them).
#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

#include <cstring>

namespace hpdl {

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
  bump_version();
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
  bump_version();
  return *this;
}

}  // namespace hpdl
