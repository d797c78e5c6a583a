// CudaBackend, part one: streams and handles, copies between host and device,
// fills, random numbers, elementwise ops, reductions, layer norm, indexing and
// optimizer updates. Geometry (strides, broadcasting, coalescing of dims) is
// worked out here on the host with the CPU backend's plan; kernels.cu walks it.
#include "hpdl/backend/cuda/cuda_backend.h"

#include <cuda_profiler_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hpdl/backend/cpu/strided.h"
#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/backend/cuda/kernels.h"

namespace hpdl::cuda {

static_assert(static_cast<int>(DType::u8) == static_cast<int>(kern::Dt::u8));
static_assert(static_cast<int>(DType::f16) == static_cast<int>(kern::Dt::f16));
static_assert(static_cast<int>(UnaryOp::erf) + 1 == static_cast<int>(kern::Unary::count_));
static_assert(static_cast<int>(UnaryOp::gelu) == static_cast<int>(kern::Unary::gelu));
static_assert(static_cast<int>(BinaryOp::add_relu) + 1 == static_cast<int>(kern::Binary::count_));
static_assert(static_cast<int>(BinaryOp::eq) == static_cast<int>(kern::Binary::eq));
static_assert(static_cast<int>(ReduceOp::sum_square) + 1 == static_cast<int>(kern::Reduce::count_));

namespace {

constexpr int kMaxDevices = 64;
std::mutex g_mu;
cudaStream_t g_streams[kMaxDevices] = {};
cublasHandle_t g_cublas[kMaxDevices] = {};
cudnnHandle_t g_cudnn[kMaxDevices] = {};
std::atomic<bool> g_allow_tf32{false};
std::atomic<DType> g_compute_precision{DType::f32};
std::atomic<int64_t> g_uploads{0}, g_downloads{0};

int set_device(Device d) {
  HPDL_CHECK(d.is_cuda() && d.index >= 0 && d.index < std::min(device_count(), kMaxDevices),
             "device {} is not available ({} CUDA devices visible)", d.str(), device_count());
  int current = -1;
  HPDL_CUDA_CHECK(cudaGetDevice(&current));
  if (current != d.index) HPDL_CUDA_CHECK(cudaSetDevice(d.index));
  return d.index;
}

kern::Dt dt(DType t) { return static_cast<kern::Dt>(t); }

// The device of whichever operand lives on a GPU.
Device gpu_of(const Tensor& a, const Tensor& b) { return a.device().is_cuda() ? a.device() : b.device(); }

// Walks `shape` (coalesced) with K operands; calls launch(geometry, n, base_offsets) once per
// slice of at most kern::kMaxDims dims (one call unless the coalesced view has more dims).
template <int K, typename Launch>
void for_each_slice(const Shape& shape_in, const std::array<Strides, K>& strides_in, Launch&& launch) {
  // Walk the dims in the output's memory order (operand 0, largest stride first; stable, so
  // row-major stays as it is): a channels-last output and operands then coalesce to one dense
  // dim, like row-major ones, instead of four strided dims with a division per element.
  const size_t nd0 = shape_in.size();
  std::vector<size_t> order(nd0);
  for (size_t d = 0; d < nd0; ++d) order[d] = d;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return strides_in[0][a] > strides_in[0][b]; });
  Shape shape(nd0);
  std::array<Strides, K> strides;
  for (int k = 0; k < K; ++k) strides[k].resize(nd0);
  for (size_t d = 0; d < nd0; ++d) {
    shape[d] = shape_in[order[d]];
    for (int k = 0; k < K; ++k) strides[k][d] = strides_in[k][order[d]];
  }
  auto plan = cpu::make_plan<K>(shape, strides);
  const int nd = static_cast<int>(plan.shape.size());
  const int lead = std::max(0, nd - kern::kMaxDims);
  kern::Strided<K> g;
  g.ndim = nd - lead;
  int64_t n = 1;
  for (int d = 0; d < g.ndim; ++d) {
    g.shape[d] = plan.shape[lead + d];
    n *= g.shape[d];
    for (int k = 0; k < K; ++k) g.stride[k][d] = plan.strides[k][lead + d];
  }
  int64_t outer = 1;
  for (int d = 0; d < lead; ++d) outer *= plan.shape[d];
  for (int64_t o = 0; o < outer; ++o) {
    std::array<int64_t, K> base{};
    int64_t r = o;
    for (int d = lead - 1; d >= 0; --d) {
      int64_t idx = r % plan.shape[d];
      r /= plan.shape[d];
      for (int k = 0; k < K; ++k) base[k] += idx * plan.strides[k][d];
    }
    launch(g, n, base);
  }
}

char* at(const Tensor& t, int64_t elements) {
  return static_cast<char*>(t.raw_data()) + elements * static_cast<int64_t>(dtype_size(t.dtype()));
}

std::atomic<bool> g_deferred_checks{[] {
  const char* e = std::getenv("HPDL_CUDA_DEFERRED_CHECKS");
  return e && std::string(e) == "1";
}()};

// Deferred index checks: a bank of int64 slots per device, preset to -1, one per checked kernel
// since the last synchronization, with the message each slot's op would throw. Kernels write the
// position of a bad index into their slot (and never touch memory out of range); the bank is read
// (one copy) at the next synchronization the program makes anyway: a download, synchronize(), or
// a full bank.
struct CheckBank {
  static constexpr int kSlots = 256;
  Tensor slots;  // [kSlots] int64 on the device
  int used = 0;
  std::vector<std::function<std::string(int64_t)>> messages;  // by slot; empty: the op never got queued
};
std::mutex g_checks_mu;
CheckBank* g_checks[kMaxDevices] = {};  // never freed: device memory outlives static destructors

// Reads and rearms device d's bank; the stream must have been synchronized. Throws the first bad
// index's message.
void flush_index_checks(int d, cudaStream_t s) {
  std::unique_lock<std::mutex> lock(g_checks_mu);
  CheckBank* b = g_checks[d];
  if (!b || b->used == 0) return;
  std::vector<int64_t> host(static_cast<size_t>(b->used));
  HPDL_CUDA_CHECK(cudaMemcpyAsync(host.data(), b->slots.raw_data(), host.size() * sizeof(int64_t),
                                  cudaMemcpyDeviceToHost, s));
  HPDL_CUDA_CHECK(cudaMemsetAsync(b->slots.raw_data(), 0xff, host.size() * sizeof(int64_t), s));
  HPDL_CUDA_CHECK(cudaStreamSynchronize(s));
  auto messages = std::move(b->messages);
  b->messages.clear();
  b->used = 0;
  lock.unlock();
  for (size_t i = 0; i < host.size(); ++i)
    if (host[i] >= 0 && i < messages.size() && messages[i])
      throw Error(__FILE__, __LINE__, messages[i](host[i]) + " (index checks are deferred, "
                  "HPDL_CUDA_DEFERRED_CHECKS: the op ran earlier and this is the first synchronization after it)");
}

// A device int64 slot preset to -1 that kernels set to the position of a bad index. check() throws
// message(position) when one was: at once (reading the slot back, a synchronization), or, with
// deferred checks, at the next synchronization.
class IndexGuard {
 public:
  explicit IndexGuard(Device d) : stream_(stream_for(d)), device_(d.index) {
    if (g_deferred_checks) {
      std::unique_lock<std::mutex> lock(g_checks_mu);
      if (!g_checks[device_]) {  // published only once its slots are preset
        auto bank = std::make_unique<CheckBank>();
        bank->slots = Tensor::empty({CheckBank::kSlots}, DType::i64, d);
        HPDL_CUDA_CHECK(cudaMemsetAsync(bank->slots.raw_data(), 0xff, CheckBank::kSlots * sizeof(int64_t), stream_));
        g_checks[device_] = bank.release();
      }
      while (g_checks[device_]->used == CheckBank::kSlots) {  // full: synchronize now and read the bank
        lock.unlock();
        HPDL_CUDA_CHECK(cudaStreamSynchronize(stream_));
        flush_index_checks(device_, stream_);
        lock.lock();
      }
      CheckBank* b = g_checks[device_];
      slot_index_ = b->used++;
      ptr_ = static_cast<int64_t*>(b->slots.raw_data()) + slot_index_;
      return;
    }
    slot_ = Tensor::empty({1}, DType::i64, d);
    ptr_ = static_cast<int64_t*>(slot_.raw_data());
    HPDL_CUDA_CHECK(cudaMemsetAsync(ptr_, 0xff, sizeof(int64_t), stream_));
  }
  int64_t* ptr() const { return ptr_; }
  // After the kernel was queued.
  void check(std::function<std::string(int64_t)> message) {
    if (slot_index_ >= 0) {
      std::lock_guard<std::mutex> lock(g_checks_mu);
      auto& messages = g_checks[device_]->messages;
      if (messages.size() <= static_cast<size_t>(slot_index_)) messages.resize(static_cast<size_t>(slot_index_) + 1);
      messages[static_cast<size_t>(slot_index_)] = std::move(message);
      return;
    }
    int64_t v = -1;
    HPDL_CUDA_CHECK(cudaMemcpyAsync(&v, ptr_, sizeof v, cudaMemcpyDeviceToHost, stream_));
    HPDL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (v >= 0) throw Error(__FILE__, __LINE__, message(v));
  }

 private:
  Tensor slot_;
  int64_t* ptr_ = nullptr;
  cudaStream_t stream_;
  int device_;
  int slot_index_ = -1;  // in the device's bank, with deferred checks
};

}  // namespace

// ---------------------------------------------------------------- streams, handles, options

cudaStream_t stream_for(Device d) {
  int i = set_device(d);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_streams[i]) HPDL_CUDA_CHECK(cudaStreamCreate(&g_streams[i]));
  return g_streams[i];
}

cublasHandle_t cublas_for(Device d) {
  cudaStream_t s = stream_for(d);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_cublas[d.index]) {
    HPDL_CUBLAS_CHECK(cublasCreate(&g_cublas[d.index]));
    HPDL_CUBLAS_CHECK(cublasSetStream(g_cublas[d.index], s));
  }
  return g_cublas[d.index];
}

cudnnHandle_t cudnn_for(Device d) {
  cudaStream_t s = stream_for(d);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_cudnn[d.index]) {
    HPDL_CUDNN_CHECK(cudnnCreate(&g_cudnn[d.index]));
    HPDL_CUDNN_CHECK(cudnnSetStream(g_cudnn[d.index], s));
  }
  return g_cudnn[d.index];
}

namespace {
std::atomic<bool> g_conv_search{[] {
  const char* e = std::getenv("HPDL_CUDNN_FIND");
  return e && std::string(e) == "1";
}()};
}  // namespace
void profiler_start() { HPDL_CUDA_CHECK(cudaProfilerStart()); }
void profiler_stop() { HPDL_CUDA_CHECK(cudaProfilerStop()); }
void set_conv_search(bool on) { g_conv_search = on; }
bool conv_search() { return g_conv_search; }

void set_allow_tf32(bool allow) { g_allow_tf32 = allow; }
bool allow_tf32() { return g_allow_tf32; }
void set_compute_precision(DType t) {
  HPDL_CHECK(t == DType::f32 || t == DType::bf16 || t == DType::f16,
             "cuda::set_compute_precision: {} is not a compute precision (float32, bfloat16 or float16)", dtype_name(t));
  g_compute_precision = t;
}
DType compute_precision() { return g_compute_precision; }
std::optional<DType> reduced_compute_type(DType t) {
  const DType p = g_compute_precision;
  if (t != DType::f32 || p == DType::f32) return std::nullopt;
  return p;
}
TransferStats transfer_stats() { return {g_uploads.load(), g_downloads.load()}; }

void synchronize() {
  if (device_count() == 0) return;
  int dev = 0;
  HPDL_CUDA_CHECK(cudaGetDevice(&dev));
  cudaStream_t s = stream_for(Device{DeviceType::cuda, dev});
  HPDL_CUDA_CHECK(cudaStreamSynchronize(s));
  release_finished_uploads();
  flush_index_checks(dev, s);
}

void set_deferred_index_checks(bool on) {
  if (!on && device_count() > 0) synchronize();  // what was deferred is reported now
  g_deferred_checks = on;
}
bool deferred_index_checks() { return g_deferred_checks; }

Tensor dense(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  backend_for(t.device()).copy(t, c);
  return c;
}

void require_float(const char* op, DType t) {
  HPDL_CHECK(t == DType::f32 || t == DType::f64,
             "{}: dtype {} is not supported by the cuda backend (use float32 or float64)", op, dtype_name(t));
}

void require_compute(const char* op, DType t) {
  HPDL_CHECK(t == DType::f32 || t == DType::f64 || t == DType::bf16,
             "{}: dtype {} is not supported by the cuda backend (use float32, float64 or bfloat16)", op,
             dtype_name(t));
}

bool CudaBackend::supports(OpKind op, DType dtype) const {
  if (op == OpKind::fill || op == OpKind::copy) return true;
  if (dtype == DType::bf16)  // what autocast keeps in bfloat16; the rest computes in float32
    return op == OpKind::unary || op == OpKind::binary || op == OpKind::reduce || op == OpKind::matmul ||
           op == OpKind::conv2d || op == OpKind::pool2d || op == OpKind::batchnorm;
  return dtype == DType::f32 || dtype == DType::f64;
}

// ---------------------------------------------------------------- memory

void CudaBackend::fill(const Tensor& out, double value) {
  if (out.numel() == 0) return;
  cudaStream_t s = stream_for(out.device());
  if (value == 0 && out.is_contiguous()) {  // all-zero bits for every dtype
    HPDL_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, out.nbytes(), s));
    return;
  }
  for_each_slice<1>(out.shape(), {out.strides()}, [&](const kern::Strided<1>& g, int64_t n, auto base) {
    HPDL_KERNEL_CHECK("fill", kern::fill(dt(out.dtype()), at(out, base[0]), g, n, value, s));
  });
}

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  HPDL_CHECK(src.numel() == dst.numel(), "copy: {} elements into {}", src.numel(), dst.numel());
  if (src.numel() == 0) return;
  const bool src_gpu = src.device().is_cuda(), dst_gpu = dst.device().is_cuda();
  if (src_gpu && dst_gpu) {
    copy_device(src, dst);
  } else if (dst_gpu) {
    copy_upload(src, dst);
  } else {
    HPDL_CHECK(src_gpu, "cuda backend: copy between two CPU tensors ({} -> {})", src.str(), dst.str());
    copy_download(src, dst);
  }
}

void CudaBackend::copy_device(const Tensor& src, const Tensor& dst) {
  HPDL_CHECK(src.device() == dst.device(), "copy: {} -> {} between two GPUs is not supported; copy through the host",
             src.device().str(), dst.device().str());
  cudaStream_t s = stream_for(dst.device());
  Tensor sv = src;
  if (src.shape() != dst.shape()) {  // same numel, different shapes: row-major order
    sv = dense(src);
    sv = make_view(sv, dst.shape(), contiguous_strides(dst.shape()), sv.offset());
  }
  if (sv.dtype() == dst.dtype() && sv.is_contiguous() && dst.is_contiguous()) {
    HPDL_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), sv.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice, s));
    return;
  }
  for_each_slice<2>(dst.shape(), {dst.strides(), sv.strides()}, [&](const kern::Strided<2>& g, int64_t n, auto base) {
    if (sv.dtype() == dst.dtype() && g.ndim == 1 && g.stride[0][0] == 1 && g.stride[1][0] == 1) {  // same layout
      HPDL_CUDA_CHECK(cudaMemcpyAsync(at(dst, base[0]), at(sv, base[1]), n * dtype_size(dst.dtype()),
                                      cudaMemcpyDeviceToDevice, s));
      return;
    }
    HPDL_KERNEL_CHECK("copy", kern::copy(dt(dst.dtype()), at(dst, base[0]), dt(sv.dtype()), at(sv, base[1]), g, n, s));
  });
}

// Host -> device: the host side made contiguous (a CPU copy), one cudaMemcpy, and a device-side
// strided/converting copy when the destination is a view or has another dtype. From pageable
// memory the stream is synchronized (the caller may free or rewrite its buffer on return); from a
// pinned block (pinned_empty) the copy stays queued and the block is held until it completes.
void CudaBackend::copy_upload(const Tensor& src, const Tensor& dst) {
  ++g_uploads;
  cudaStream_t s = stream_for(dst.device());
  Tensor h = src;
  if (!src.is_contiguous()) {
    h = Tensor::empty(src.shape(), src.dtype());
    backend_for(kCPU).copy(src, h);
  }
  if (dst.is_contiguous() && dst.dtype() == src.dtype()) {
    HPDL_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), h.raw_data(), dst.nbytes(), cudaMemcpyHostToDevice, s));
  } else {
    Tensor stage = Tensor::empty(dst.shape(), src.dtype(), dst.device());
    HPDL_CUDA_CHECK(cudaMemcpyAsync(stage.raw_data(), h.raw_data(), stage.nbytes(), cudaMemcpyHostToDevice, s));
    copy_device(stage, dst);
  }
  if (is_pinned(h))
    hold_until_done(h.storage(), s);
  else
    HPDL_CUDA_CHECK(cudaStreamSynchronize(s));
}

// Device -> host: converted and made contiguous on the device, one cudaMemcpy, and a CPU copy
// into the destination when it is a view.
void CudaBackend::copy_download(const Tensor& src, const Tensor& dst) {
  ++g_downloads;
  cudaStream_t s = stream_for(src.device());
  Tensor d = src;
  if (!src.is_contiguous() || src.dtype() != dst.dtype()) {
    d = Tensor::empty(src.shape(), dst.dtype(), src.device());
    copy_device(src, d);
  }
  if (dst.is_contiguous()) {
    HPDL_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), d.raw_data(), dst.nbytes(), cudaMemcpyDeviceToHost, s));
    HPDL_CUDA_CHECK(cudaStreamSynchronize(s));
  } else {
    Tensor h = Tensor::empty(d.shape(), d.dtype());
    HPDL_CUDA_CHECK(cudaMemcpyAsync(h.raw_data(), d.raw_data(), h.nbytes(), cudaMemcpyDeviceToHost, s));
    HPDL_CUDA_CHECK(cudaStreamSynchronize(s));
    backend_for(kCPU).copy(h, dst);
  }
  flush_index_checks(src.device().index, s);  // the values just read may come from a bad index
}

void CudaBackend::random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double low, double high) {
  HPDL_CHECK(out.is_contiguous(), "random_uniform: output must be contiguous");
  require_float("random_uniform", out.dtype());
  if (out.numel() == 0) return;
  HPDL_KERNEL_CHECK("random_uniform", kern::random_uniform(dt(out.dtype()), out.raw_data(), out.numel(), seed, offset,
                                                           low, high, stream_for(out.device())));
}

void CudaBackend::random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double stddev) {
  HPDL_CHECK(out.is_contiguous(), "random_normal: output must be contiguous");
  require_float("random_normal", out.dtype());
  if (out.numel() == 0) return;
  HPDL_KERNEL_CHECK("random_normal", kern::random_normal(dt(out.dtype()), out.raw_data(), out.numel(), seed, offset,
                                                         mean, stddev, stream_for(out.device())));
}

// ---------------------------------------------------------------- elementwise

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
  require_compute(unary_name(op), out.dtype());
  HPDL_CHECK(x.dtype() == out.dtype() && x.numel() == out.numel(), "{}: input {} and output {} differ", unary_name(op),
             x.str(), out.str());
  if (out.numel() == 0) return;
  cudaStream_t s = stream_for(out.device());
  for_each_slice<2>(out.shape(), {out.strides(), x.strides()}, [&](const kern::Strided<2>& g, int64_t n, auto base) {
    HPDL_KERNEL_CHECK(unary_name(op), kern::unary(dt(out.dtype()), static_cast<kern::Unary>(op), at(out, base[0]),
                                                  at(x, base[1]), g, n, alpha, s));
  });
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out, double alpha) {
  require_compute(binary_name(op), out.dtype());
  HPDL_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), "{}: dtypes {}, {} -> {} must match",
             binary_name(op), dtype_name(a.dtype()), dtype_name(b.dtype()), dtype_name(out.dtype()));
  if (out.numel() == 0) return;
  cudaStream_t s = stream_for(out.device());
  const Shape& sh = out.shape();
  for_each_slice<3>(sh, {out.strides(), cpu::broadcast_strides(a.shape(), a.strides(), sh),
                         cpu::broadcast_strides(b.shape(), b.strides(), sh)},
                    [&](const kern::Strided<3>& g, int64_t n, auto base) {
                      HPDL_KERNEL_CHECK(binary_name(op),
                                        kern::binary(dt(out.dtype()), static_cast<kern::Binary>(op), at(out, base[0]),
                                                     at(a, base[1]), at(b, base[2]), g, n, alpha, s));
                    });
}

void CudaBackend::axpby(double a, const Tensor& x, double b, const Tensor& y, const Tensor& out) {
  require_compute("axpby", out.dtype());
  HPDL_CHECK(out.is_contiguous(), "axpby: output must be contiguous");
  if (out.numel() == 0) return;
  Tensor xc = dense(x), yc = dense(y);
  HPDL_KERNEL_CHECK("axpby", kern::axpby(dt(out.dtype()), out.numel(), a, xc.raw_data(), b, yc.raw_data(),
                                         out.raw_data(), stream_for(out.device())));
}

// ---------------------------------------------------------------- reductions
// The reduced axes are moved last and made contiguous (skipped when they already are),
// then every output is the reduction of one row of length R.

void CudaBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<int>& axes, const Tensor& out) {
  require_compute(reduce_name(op), x.dtype());
  HPDL_CHECK(out.is_contiguous(), "{}: output must be contiguous", reduce_name(op));
  if (op == ReduceOp::argmax) HPDL_CHECK(out.dtype() == DType::i64, "argmax: output must be int64");
  const int nd = x.ndim();
  std::vector<int> perm;
  for (int i = 0; i < nd; ++i)
    if (std::find(axes.begin(), axes.end(), i) == axes.end()) perm.push_back(i);
  int64_t R = 1;
  for (int ax : axes) {
    perm.push_back(ax);
    R *= x.shape()[ax];
  }
  const int64_t M = out.numel();
  if (M == 0) return;
  cudaStream_t s = stream_for(x.device());
  if (R == 0) {  // empty reduction: the reference's initial values
    fill(out, op == ReduceOp::max ? -INFINITY : op == ReduceOp::min ? INFINITY : op == ReduceOp::mean ? NAN : 0.0);
    return;
  }
  bool identity = true;
  for (int i = 0; i < nd; ++i) identity = identity && perm[i] == i;
  Tensor rows = x;
  if (!identity || !x.is_contiguous()) {
    Shape ps(nd);
    Strides pst(nd);
    for (int i = 0; i < nd; ++i) ps[i] = x.shape()[perm[i]], pst[i] = x.strides()[perm[i]];
    rows = dense(make_view(x, ps, pst, x.offset()));
  }
  const size_t scratch_bytes = kern::reduce_rows_scratch_bytes(M, R);
  Tensor scratch = scratch_bytes ? Tensor::empty({static_cast<int64_t>(scratch_bytes)}, DType::u8, x.device()) : Tensor();
  HPDL_KERNEL_CHECK(reduce_name(op), kern::reduce_rows(dt(x.dtype()), static_cast<kern::Reduce>(op), rows.raw_data(),
                                                       out.raw_data(), M, R,
                                                       scratch.defined() ? scratch.raw_data() : nullptr, s));
}

// ---------------------------------------------------------------- layer norm

void CudaBackend::layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                    const Tensor& save_mean, const Tensor& save_invstd, double eps) {
  require_float("layernorm", x.dtype());
  Tensor xc = dense(x), gc = dense(gamma), bc = dense(beta);
  const int64_t D = x.shape().back(), M = D == 0 ? 0 : x.numel() / D;
  if (M == 0) return;
  HPDL_KERNEL_CHECK("layernorm", kern::layernorm_forward(dt(x.dtype()), xc.raw_data(), gc.raw_data(), bc.raw_data(),
                                                         y.raw_data(), save_mean.raw_data(), save_invstd.raw_data(),
                                                         M, D, eps, stream_for(x.device())));
}

void CudaBackend::layernorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                                     const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                                     const Tensor& dbeta) {
  require_float("layernorm_backward", x.dtype());
  Tensor xc = dense(x), dyc = dense(dy), gc = dense(gamma);
  const int64_t D = x.shape().back(), M = D == 0 ? 0 : x.numel() / D;
  if (M == 0) return;
  HPDL_KERNEL_CHECK("layernorm_backward",
                    kern::layernorm_backward(dt(x.dtype()), xc.raw_data(), dyc.raw_data(), gc.raw_data(),
                                             save_mean.raw_data(), save_invstd.raw_data(), dx.raw_data(),
                                             dgamma.defined() ? dgamma.raw_data() : nullptr,
                                             dbeta.defined() ? dbeta.raw_data() : nullptr, M, D,
                                             stream_for(x.device())));
}

// ---------------------------------------------------------------- indexing
// Index checks run on the device; reading the flag back synchronizes the stream, the price of
// an error that names the bad position rather than silently wrong data.

namespace {
struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
  AxisSplit(const Shape& s, int axis) {
    for (int i = 0; i < axis; ++i) outer *= s[i];
    n = s[axis];
    for (size_t i = axis + 1; i < s.size(); ++i) inner *= s[i];
  }
};
}  // namespace

void CudaBackend::index_select(const Tensor& x, int axis, const Tensor& index, const Tensor& out) {
  require_float("index_select", x.dtype());
  HPDL_CHECK(index.dtype() == DType::i64, "index_select: index must be int64, got {}", dtype_name(index.dtype()));
  if (out.numel() == 0) return;
  Tensor xc = dense(x), ic = dense(index);
  AxisSplit sx(x.shape(), axis), so(out.shape(), axis);
  IndexGuard guard(x.device());
  HPDL_KERNEL_CHECK("index_select", kern::index_select(dt(x.dtype()), xc.raw_data(),
                                                       static_cast<const int64_t*>(ic.raw_data()), out.raw_data(),
                                                       so.outer, sx.n, so.n, so.inner, guard.ptr(),
                                                       stream_for(x.device())));
  guard.check([n = sx.n](int64_t bad) {
    return fmt::format("index_select: index at position {} out of range [0, {})", bad, n);
  });
}

void CudaBackend::index_add(const Tensor& out, int axis, const Tensor& index, const Tensor& src) {
  require_float("index_add", out.dtype());
  HPDL_CHECK(index.dtype() == DType::i64, "index_add: index must be int64, got {}", dtype_name(index.dtype()));
  HPDL_CHECK(out.is_contiguous(), "index_add: output must be contiguous");
  if (src.numel() == 0) return;
  Tensor sc = dense(src), ic = dense(index);
  AxisSplit so(out.shape(), axis), ss(src.shape(), axis);
  IndexGuard guard(out.device());
  HPDL_KERNEL_CHECK("index_add", kern::index_add(dt(out.dtype()), out.raw_data(),
                                                 static_cast<const int64_t*>(ic.raw_data()), sc.raw_data(), so.outer,
                                                 so.n, ss.n, ss.inner, guard.ptr(), stream_for(out.device())));
  guard.check([n = so.n](int64_t bad) {
    return fmt::format("index_add: index at position {} out of range [0, {})", bad, n);
  });
}

void CudaBackend::gather_rows(const Tensor& x, const Tensor& index, const Tensor& out) {
  require_float("gather_rows", x.dtype());
  HPDL_CHECK(index.dtype() == DType::i64, "gather_rows: index must be int64, got {}", dtype_name(index.dtype()));
  const int64_t M = x.shape()[0], C = x.shape()[1];
  if (M == 0) return;
  Tensor xc = dense(x), ic = dense(index);
  IndexGuard guard(x.device());
  HPDL_KERNEL_CHECK("gather_rows", kern::gather_rows(dt(x.dtype()), xc.raw_data(),
                                                     static_cast<const int64_t*>(ic.raw_data()), out.raw_data(), M, C,
                                                     guard.ptr(), stream_for(x.device())));
  guard.check([C](int64_t bad) {
    return fmt::format("gather_rows: class index >= number of classes {} in row {}", C, bad);
  });
}

void CudaBackend::scatter_rows(const Tensor& src, const Tensor& index, const Tensor& out) {
  require_float("scatter_rows", out.dtype());
  HPDL_CHECK(index.dtype() == DType::i64, "scatter_rows: index must be int64, got {}", dtype_name(index.dtype()));
  HPDL_CHECK(out.is_contiguous(), "scatter_rows: output must be contiguous");
  const int64_t M = out.shape()[0], C = out.shape()[1];
  cudaStream_t s = stream_for(out.device());
  HPDL_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), 0, out.nbytes(), s));
  if (M == 0) return;
  Tensor sc = dense(src), ic = dense(index);
  IndexGuard guard(out.device());
  HPDL_KERNEL_CHECK("scatter_rows", kern::scatter_rows(dt(out.dtype()), sc.raw_data(),
                                                       static_cast<const int64_t*>(ic.raw_data()), out.raw_data(), M,
                                                       C, guard.ptr(), s));
  guard.check([C](int64_t bad) {
    return fmt::format("scatter_rows: class index >= number of classes {} in row {}", C, bad);
  });
}

// ---------------------------------------------------------------- optimizers

namespace {
kern::Optim optim_of(const OptimizerUpdate& u) {
  kern::Optim k;
  k.adamw = u.kind == OptimizerUpdate::Kind::adamw;
  k.lr = u.lr, k.momentum = u.momentum, k.dampening = u.dampening, k.weight_decay = u.weight_decay;
  k.nesterov = u.nesterov, k.beta1 = u.beta1, k.beta2 = u.beta2, k.eps = u.eps, k.step = u.step;
  k.scale = u.scale, k.decoupled_decay = u.decoupled_decay;
  return k;
}

void check_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad, const Tensor& buf1,
                  const Tensor& buf2) {
  require_float("optimizer_update", param.dtype());
  HPDL_CHECK(param.is_contiguous() && grad.is_contiguous(), "optimizer_update: param and grad must be contiguous");
  const bool adamw = u.kind == OptimizerUpdate::Kind::adamw;
  HPDL_CHECK(!adamw || (buf1.defined() && buf2.defined()), "optimizer_update: adamw needs both moment buffers");
}
}  // namespace

// Slots of one dtype and device, 32 per launch (the kernel's argument limit); anything mixed goes
// through the per-parameter default.
void CudaBackend::optimizer_update_many(const OptimizerUpdate& u, const std::vector<UpdateSlot>& slots) {
  if (slots.empty()) return;
  const DType t = slots[0].param.dtype();
  const Device d = slots[0].param.device();
  for (const UpdateSlot& s : slots) {
    check_update(u, s.param, s.grad, s.buf1, s.buf2);
    if (s.param.dtype() != t || s.param.device() != d) return Backend::optimizer_update_many(u, slots);
  }
  const kern::Optim k = optim_of(u);
  kern::OptimSlots batch;
  auto flush = [&] {
    HPDL_KERNEL_CHECK("optimizer_update_many", kern::optimizer_update_many(dt(t), k, batch, stream_for(d)));
    batch.count = 0;
  };
  for (const UpdateSlot& s : slots) {
    if (s.param.numel() == 0) continue;
    kern::OptimSlot& o = batch.s[batch.count++];
    o.p = s.param.raw_data();
    o.g = s.grad.raw_data();
    o.buf1 = s.buf1.defined() ? s.buf1.raw_data() : nullptr;
    o.buf2 = s.buf2.defined() ? s.buf2.raw_data() : nullptr;
    o.n = s.param.numel();
    o.weight_decay = s.weight_decay;
    o.step = s.step;
    if (batch.count == kern::kMaxSlots) flush();
  }
  if (batch.count > 0) flush();
}

void CudaBackend::optimizer_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad,
                                   const Tensor& buf1, const Tensor& buf2) {
  check_update(u, param, grad, buf1, buf2);
  if (param.numel() == 0) return;
  HPDL_KERNEL_CHECK("optimizer_update",
                    kern::optimizer_update(dt(param.dtype()), optim_of(u), param.raw_data(), grad.raw_data(),
                                           buf1.defined() ? buf1.raw_data() : nullptr,
                                           buf2.defined() ? buf2.raw_data() : nullptr, param.numel(),
                                           stream_for(param.device())));
}

}  // namespace hpdl::cuda
