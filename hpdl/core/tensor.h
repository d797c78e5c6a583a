// Tensor: a strided view (offset, shape, strides) into a reference-counted
// Storage, with a dtype and a device, plus the autograd fields a define-by-run
// graph needs. Copying a Tensor copies a handle, not data (like a shared_ptr).
//
// Differentiable ops are free functions in hpdl/ops (add, matmul, conv2d, ...);
// the view methods below (reshape, permute, slice, expand, ...) are
// differentiable too and are implemented in ops/shape.cpp. The autograd
// methods (backward, grad) are implemented in autograd/.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "hpdl/core/dtype.h"
#include "hpdl/core/error.h"
#include "hpdl/core/shape.h"
#include "hpdl/core/storage.h"

namespace hpdl {

class Node;
class Tensor;
class Generator;

// Autograd state of one tensor. Kept beside the data so a view or a detached
// copy can share data without sharing graph history.
struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Tensor> grad;             // accumulated gradient of a leaf (or retained non-leaf)
  std::shared_ptr<Node> grad_fn;            // the node that produced this tensor; null for leaves
  uint32_t output_nr = 0;                   // which output of grad_fn this tensor is
  std::weak_ptr<Node> grad_accumulator;     // a leaf's AccumulateGrad node, created lazily
  // Called after a gradient has been accumulated into this leaf's .grad during
  // backward (DataParallel uses it to launch a bucket's allreduce early).
  std::vector<std::function<void(Tensor&)>> post_accumulate_hooks;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Strides strides;
  DType dtype = DType::f32;
  std::unique_ptr<AutogradMeta> autograd;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation (contiguous, row-major) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
  // A 4-D [N, C, H, W] tensor laid out as N, H, W, C in memory ("channels last",
  // NHWC), the layout cuDNN's tensor-core convolutions read; logically still NCHW.
  static Tensor empty_channels_last(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = kCPU);
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = kCPU);  // shape []
  static Tensor arange(int64_t n, DType dtype = DType::f32, Device device = kCPU);
  // Copies `values` (must hold numel(shape) elements) into a new CPU tensor of dtype_of<T>.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  // Wraps memory owned elsewhere (must outlive every view); no copy.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device = kCPU);
  // Seeded random fills: the same numbers for any number of threads (counter-based).
  static Tensor rand(const Shape& shape, Generator& gen, double low = 0, double high = 1, DType dtype = DType::f32);
  static Tensor randn(const Shape& shape, Generator& gen, double mean = 0, double stddev = 1,
                      DType dtype = DType::f32);

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Strides& strides() const { return impl().strides; }
  int ndim() const { return static_cast<int>(impl().shape.size()); }
  int64_t dim(int64_t axis) const;  // size along an axis, negative counts from the end
  int64_t numel() const { return numel_of(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage ? impl().storage->device() : kCPU; }
  int64_t offset() const { return impl().offset; }
  bool is_contiguous() const;
  bool is_channels_last() const;  // 4-D with NHWC strides (size-1 dims ignored)
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  std::string str() const;  // "Tensor(float32, [2, 3], cpu)"

  // ---- data access (no autograd) ----
  void* raw_data() const;  // pointer to element 0 of this view
  template <typename T>
  T* data() const;  // checks dtype_of<T>() == dtype()
  double item() const;  // numel must be 1; converts to double
  template <typename T>
  std::vector<T> to_vector() const;  // CPU copy in row-major order, converted to T
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }

  // ---- differentiable views and copies (ops/shape.cpp) ----
  Tensor reshape(const Shape& shape) const;  // a view when contiguous, else a copy; one -1 allowed
  Tensor flatten(int64_t start_axis = 1) const;
  Tensor permute(const std::vector<int64_t>& axes) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor t() const { return transpose(-2, -1); }
  Tensor slice(int64_t axis, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t axis, int64_t index) const;  // removes the axis
  Tensor narrow(int64_t axis, int64_t start, int64_t length) const { return slice(axis, start, start + length); }
  Tensor expand(const Shape& shape) const;  // broadcast view (stride 0)
  Tensor unsqueeze(int64_t axis) const;
  Tensor squeeze(int64_t axis) const;
  Tensor contiguous() const;  // self when already contiguous
  Tensor clone() const;       // always a new contiguous copy
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;

  // ---- in-place, no autograd (optimizers, init, loaders) ----
  // Each bumps the storage's version counter: a backward that saved this tensor
  // (or another view of its storage) before the write refuses to run.
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0); }
  Tensor& copy_(const Tensor& src);  // same numel; converts dtype; any device pair
  // The version counter shared by every view of this tensor's storage (0 without
  // storage). Code that writes into an existing tensor by other means than the
  // methods above (raw_data()/data<T>(), a Backend kernel, MPI) calls
  // bump_version() so that autograd sees the write (design decision 73).
  uint64_t version() const;
  void bump_version() const;

  // ---- autograd (autograd/variable.cpp) ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool value = true);
  const Tensor& grad() const;  // undefined Tensor when none
  void set_grad(const Tensor& g);
  void zero_grad();            // drops the gradient
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  Tensor detach() const;       // same data, no history
  // Accumulates d(this)/d(leaf) into every leaf's grad. `grad` defaults to 1 for a scalar.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false, bool create_graph = false) const;
  AutogradMeta& autograd_meta() const;  // creates it on first use

  // ---- identity ----
  TensorImpl& impl() const {
    HPDL_CHECK(impl_ != nullptr, "use of an undefined Tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// A new tensor header over `base`'s storage with the given geometry (no autograd state).
Tensor make_view(const Tensor& base, const Shape& shape, const Strides& strides, int64_t offset);

}  // namespace hpdl
