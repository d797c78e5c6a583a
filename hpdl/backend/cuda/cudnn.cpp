// CudaBackend, part two: convolution, pooling, batch norm and softmax through
// cuDNN 9's legacy (descriptor) API, NCHW (with cuda::set_conv_graph, convolutions
// go through cached graph-API plans first: cudnn_graph.cpp). Convolution algorithms come from
// cuDNN's heuristics (cudnnGet*Algorithm_v7), chosen once per shape and cached;
// workspaces come from the caching allocator. With TF32 off (the default) only
// FMA-math algorithms are taken, so float32 results match the reference.
// With cuda::set_compute_precision(bf16 or f16), float32 convolutions run on
// bfloat16 / float16 copies of their operands on tensor cores, accumulating in
// float32.
#include <cudnn.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/backend/cuda/cuda_backend.h"
#include "hpdl/backend/cuda/cudnn_graph.h"
#include "hpdl/backend/cuda/kernels.h"

namespace hpdl::cuda {
namespace {

cudnnDataType_t cudnn_type(DType t) {
  return t == DType::f64    ? CUDNN_DATA_DOUBLE
         : t == DType::bf16 ? CUDNN_DATA_BFLOAT16
         : t == DType::f16  ? CUDNN_DATA_HALF
                            : CUDNN_DATA_FLOAT;
}
// The type cuDNN accumulates in: float for bfloat16 and float16 data.
cudnnDataType_t compute_type(DType t) {
  return t == DType::bf16 || t == DType::f16 ? CUDNN_DATA_FLOAT : cudnn_type(t);
}

// Scaling factors must have the compute type: float for float32 data, double for float64.
struct Scalars {
  float f1 = 1, f0 = 0;
  double d1 = 1, d0 = 0;
  bool dbl;
  explicit Scalars(DType t) : dbl(t == DType::f64) {}  // float for float32 and bfloat16
  const void* one() const { return dbl ? static_cast<const void*>(&d1) : &f1; }
  const void* zero() const { return dbl ? static_cast<const void*>(&d0) : &f0; }
};

int to_int(int64_t v, const char* what) {
  HPDL_CHECK(v >= 0 && v < INT32_MAX, "cuDNN: {} = {} exceeds its 32-bit limit", what, v);
  return static_cast<int>(v);
}

class TensorDesc {
 public:
  // A fully packed NCHW descriptor.
  TensorDesc(DType t, int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last = false) {
    HPDL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_));
    HPDL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d_, channels_last ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW,
                                                cudnn_type(t), to_int(n, "N"), to_int(c, "C"), to_int(h, "H"),
                                                to_int(w, "W")));
  }
  TensorDesc() { HPDL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_)); }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  operator cudnnTensorDescriptor_t() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

// A new tensor shaped like `like`, of dtype t, in like's layout (channels-last or row-major).
Tensor empty_in_layout(const Tensor& like, DType t) {
  return nhwc(like) ? Tensor::empty_channels_last(like.shape(), t, like.device())
                    : Tensor::empty(like.shape(), t, like.device());
}

// Dense in either layout: itself when row-major or channels-last, else a row-major copy.
Tensor dense_any(const Tensor& t) { return nhwc(t) ? t : dense(t); }

// A packed 4-D descriptor in the tensor's layout (NCHW, or NHWC for channels-last). A tensor whose
// layouts coincide (one channel, or 1x1 spatial) is described as NHWC when `cl` says its partners are:
// cuDNN wants one format for the operands of a call.
TensorDesc nchw(const Tensor& t, bool cl = false) {
  const Shape& s = t.shape();
  return TensorDesc(t.dtype(), s[0], s[1], s[2], s[3], nhwc(t) || (cl && t.is_channels_last()));
}

class FilterDesc {
 public:
  explicit FilterDesc(const Tensor& w, bool cl = false) {
    const Shape& s = w.shape();
    const bool khwc = nhwc(w) || (cl && w.is_channels_last());  // 1x1 filters are both
    HPDL_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d_));
    HPDL_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d_, cudnn_type(w.dtype()), khwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW,
                                                to_int(s[0], "K"), to_int(s[1], "C/groups"), to_int(s[2], "R"),
                                                to_int(s[3], "S")));
  }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d_); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
  operator cudnnFilterDescriptor_t() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

class ConvDesc {
 public:
  ConvDesc(const Conv2dParams& p, DType t) {
    HPDL_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d_));
    HPDL_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
        d_, to_int(p.pad_h, "pad_h"), to_int(p.pad_w, "pad_w"), to_int(p.stride_h, "stride_h"),
        to_int(p.stride_w, "stride_w"), to_int(p.dilation_h, "dilation_h"), to_int(p.dilation_w, "dilation_w"),
        CUDNN_CROSS_CORRELATION, compute_type(t)));
    HPDL_CUDNN_CHECK(cudnnSetConvolutionGroupCount(d_, to_int(p.groups, "groups")));
    HPDL_CUDNN_CHECK(cudnnSetConvolutionMathType(d_, t == DType::bf16 || t == DType::f16 ? CUDNN_TENSOR_OP_MATH : math()));
  }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d_); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
  operator cudnnConvolutionDescriptor_t() const { return d_; }
  static cudnnMathType_t math() { return allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

// Chosen algorithm and its workspace bytes per (direction, shapes, params, dtype, math, layout,
// search), shared by all devices of one kind. The workspace is cached too: in cuDNN 9 every
// cudnnGet*WorkspaceSize call builds an execution plan (measured: half the host time of a step).
struct AlgoChoice {
  int algo = -1;
  size_t bytes = 0;
};
std::mutex g_algo_mu;
std::map<std::string, AlgoChoice> g_algo_cache;

// Whether any operand of a convolution is channels-last (then all are described as NHWC).
bool conv_cl(const Tensor& a, const Tensor& b, const Tensor& c) { return nhwc(a) || nhwc(b) || nhwc(c); }

std::string conv_key(const char* dir, const Tensor& x, const Tensor& w, const Tensor& y, const Conv2dParams& p) {
  return fmt::format("{}|{}|{}|{}|{},{},{},{},{},{},{}|{}|{}|{}{}{}|{}", dir, shape_str(x.shape()),
                     shape_str(w.shape()), shape_str(y.shape()), p.stride_h, p.stride_w, p.pad_h, p.pad_w,
                     p.dilation_h, p.dilation_w, p.groups, dtype_name(x.dtype()), allow_tf32() ? "tf32" : "fma",
                     conv_cl(x, w, y), "", "", conv_search() ? "find" : "heuristic");
}

// Whether an algorithm result may be taken: it ran (or is predicted to), and for float32 with
// TF32 off it uses FMA math, so float32 results match the reference to float32 rounding.
template <typename Perf>
bool acceptable(const Perf& perf, DType t) {
  return perf.status == CUDNN_STATUS_SUCCESS && (t != DType::f32 || allow_tf32() || perf.mathType == CUDNN_FMA_MATH);
}

// The first acceptable result whose workspace query also succeeds (cuDNN's channels-last bf16
// heuristics can name algorithms that the workspace query then refuses); -1 when none.
template <typename Perf, typename WsOk>
int first_usable(const Perf* perf, int count, DType t, WsOk&& ws_ok) {
  for (int i = 0; i < count; ++i)
    if (acceptable(perf[i], t) && ws_ok(static_cast<int>(perf[i].algo))) return static_cast<int>(perf[i].algo);
  return -1;
}

template <typename Find>
AlgoChoice cached_algo(const std::string& key, Find&& find) {
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    auto it = g_algo_cache.find(key);
    if (it != g_algo_cache.end()) return it->second;
  }
  AlgoChoice c = find();
  std::lock_guard<std::mutex> lock(g_algo_mu);
  g_algo_cache[key] = c;
  return c;
}

Tensor workspace(size_t bytes, Device d) {
  return bytes ? Tensor::empty({static_cast<int64_t>(bytes)}, DType::u8, d) : Tensor();
}
void* ws_ptr(const Tensor& ws) { return ws.defined() ? ws.raw_data() : nullptr; }

// Workspace offered to cudnnFind*Ex: algorithms that need more are not timed.
constexpr size_t kFindWorkspace = size_t{512} << 20;

// Search (cudnnFind*Ex) or heuristics, then every algorithm in turn; fails naming the convolution.
// ws_ok(algo) queries the workspace of algo into `bytes` and says whether cuDNN accepted it.
template <typename Heur, typename Search, typename WsOk>
AlgoChoice choose_algo(const std::string& key, int count, Heur&& heur, Search&& search, WsOk&& ws_ok,
                       const size_t& bytes) {
  return cached_algo(key, [&] {
    int algo = conv_search() ? search() : -1;
    if (algo < 0) algo = heur();
    for (int a = 0; algo < 0 && a < count; ++a)
      if (ws_ok(a)) algo = a;
    HPDL_CHECK(algo >= 0, "cuDNN: no algorithm supports the convolution {}", key);
    HPDL_CHECK(ws_ok(algo), "cuDNN: workspace query failed for algorithm {} of {}", algo, key);
    return AlgoChoice{algo, bytes};
  });
}

}  // namespace

// ---------------------------------------------------------------- convolution

namespace {

// The three convolutions on dense operands of one dtype (float32, float64 or bfloat16).
void conv_forward(const Tensor& xc, const Tensor& wc, const Tensor& y, const Conv2dParams& p) {
  if (!conv_search() && run_graph_conv(ConvDir::fwd, xc, wc, y, p)) return;
  cudnnHandle_t h = cudnn_for(y.device());
  const bool cl = conv_cl(xc, wc, y);
  TensorDesc xd = nchw(xc, cl), yd = nchw(y, cl);
  FilterDesc wd(wc, cl);
  ConvDesc cd(p, xc.dtype());
  size_t bytes = 0;
  auto ws_ok = [&](int a) {
    return cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, yd, static_cast<cudnnConvolutionFwdAlgo_t>(a),
                                                   &bytes) == CUDNN_STATUS_SUCCESS;
  };
  constexpr int kCount = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
  const AlgoChoice choice = choose_algo(
      conv_key("fwd", xc, wc, y, p), kCount,
      [&] {
        cudnnConvolutionFwdAlgoPerf_t perf[kCount];
        int n = 0;
        HPDL_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, kCount, &n, perf));
        return first_usable(perf, n, xc.dtype(), ws_ok);
      },
      [&] {
        cudnnConvolutionFwdAlgoPerf_t perf[kCount];
        int n = 0;
        Tensor ws = workspace(kFindWorkspace, y.device());
        HPDL_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, xd, xc.raw_data(), wd, wc.raw_data(), cd, yd,
                                                                y.raw_data(), kCount, &n, perf, ws.raw_data(),
                                                                kFindWorkspace));
        return first_usable(perf, n, xc.dtype(), ws_ok);
      },
      ws_ok, bytes);
  const auto algo = static_cast<cudnnConvolutionFwdAlgo_t>(choice.algo);
  bytes = choice.bytes;
  Tensor ws = workspace(bytes, y.device());
  Scalars sc(xc.dtype());
  HPDL_CUDNN_CHECK(cudnnConvolutionForward(h, sc.one(), xd, xc.raw_data(), wd, wc.raw_data(), cd, algo, ws_ptr(ws),
                                           bytes, sc.zero(), yd, y.raw_data()));
}

void conv_backward_data(const Tensor& dyc, const Tensor& wc, const Tensor& dx, const Conv2dParams& p) {
  if (!conv_search() && run_graph_conv(ConvDir::bwd_data, dx, wc, dyc, p)) return;
  cudnnHandle_t h = cudnn_for(dx.device());
  const bool cl = conv_cl(dyc, wc, dx);
  TensorDesc dyd = nchw(dyc, cl), dxd = nchw(dx, cl);
  FilterDesc wd(wc, cl);
  ConvDesc cd(p, dyc.dtype());
  size_t bytes = 0;
  auto ws_ok = [&](int a) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(h, wd, dyd, cd, dxd,
                                                        static_cast<cudnnConvolutionBwdDataAlgo_t>(a),
                                                        &bytes) == CUDNN_STATUS_SUCCESS;
  };
  constexpr int kCount = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
  const AlgoChoice choice = choose_algo(
      conv_key("bwd_data", dx, wc, dyc, p), kCount,
      [&] {
        cudnnConvolutionBwdDataAlgoPerf_t perf[kCount];
        int n = 0;
        HPDL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, wd, dyd, cd, dxd, kCount, &n, perf));
        return first_usable(perf, n, dyc.dtype(), ws_ok);
      },
      [&] {
        cudnnConvolutionBwdDataAlgoPerf_t perf[kCount];
        int n = 0;
        Tensor ws = workspace(kFindWorkspace, dx.device());
        HPDL_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, wd, wc.raw_data(), dyd, dyc.raw_data(), cd,
                                                                     dxd, dx.raw_data(), kCount, &n, perf,
                                                                     ws.raw_data(), kFindWorkspace));
        return first_usable(perf, n, dyc.dtype(), ws_ok);
      },
      ws_ok, bytes);
  const auto algo = static_cast<cudnnConvolutionBwdDataAlgo_t>(choice.algo);
  bytes = choice.bytes;
  Tensor ws = workspace(bytes, dx.device());
  Scalars sc(dyc.dtype());
  HPDL_CUDNN_CHECK(cudnnConvolutionBackwardData(h, sc.one(), wd, wc.raw_data(), dyd, dyc.raw_data(), cd, algo,
                                                ws_ptr(ws), bytes, sc.zero(), dxd, dx.raw_data()));
}

void conv_backward_weights(const Tensor& xc, const Tensor& dyc, const Tensor& dw, const Conv2dParams& p) {
  if (!conv_search() && run_graph_conv(ConvDir::bwd_filter, xc, dw, dyc, p)) return;
  cudnnHandle_t h = cudnn_for(dw.device());
  const bool cl = conv_cl(xc, dyc, dw);
  TensorDesc xd = nchw(xc, cl), dyd = nchw(dyc, cl);
  FilterDesc wd(dw, cl);
  ConvDesc cd(p, xc.dtype());
  size_t bytes = 0;
  auto ws_ok = [&](int a) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, xd, dyd, cd, wd,
                                                          static_cast<cudnnConvolutionBwdFilterAlgo_t>(a),
                                                          &bytes) == CUDNN_STATUS_SUCCESS;
  };
  constexpr int kCount = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
  const AlgoChoice choice = choose_algo(
      conv_key("bwd_filter", xc, dw, dyc, p), kCount,
      [&] {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[kCount];
        int n = 0;
        HPDL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, xd, dyd, cd, wd, kCount, &n, perf));
        return first_usable(perf, n, xc.dtype(), ws_ok);
      },
      [&] {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[kCount];
        int n = 0;
        Tensor ws = workspace(kFindWorkspace, dw.device());
        HPDL_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, xd, xc.raw_data(), dyd, dyc.raw_data(), cd,
                                                                       wd, dw.raw_data(), kCount, &n, perf,
                                                                       ws.raw_data(), kFindWorkspace));
        return first_usable(perf, n, xc.dtype(), ws_ok);
      },
      ws_ok, bytes);
  const auto algo = static_cast<cudnnConvolutionBwdFilterAlgo_t>(choice.algo);
  bytes = choice.bytes;
  Tensor ws = workspace(bytes, dw.device());
  Scalars sc(xc.dtype());
  HPDL_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, sc.one(), xd, xc.raw_data(), dyd, dyc.raw_data(), cd, algo,
                                                  ws_ptr(ws), bytes, sc.zero(), wd, dw.raw_data()));
}

// Reduced (bfloat16 or float16) compute for a float32 convolution
// (cuda::set_compute_precision); the names predate float16.
bool use_bf16(DType t) { return reduced_compute_type(t).has_value(); }

Tensor to_bf16(const Tensor& t) {
  const DType r = reduced_compute_type(t.dtype()).value();
  Tensor b = empty_in_layout(t, r);
  backend_for(t.device()).copy(t, b);
  return b;
}

// Runs `conv(out')` into a reduced-precision temporary when out is float32 under bf16/f16 compute, then widens
// it into out.
template <typename Conv>
void into(const Tensor& out, bool bf16, Conv&& conv) {
  if (!bf16) return conv(out);
  const DType r = reduced_compute_type(out.dtype()).value();
  Tensor ob = empty_in_layout(out, r);
  conv(ob);
  backend_for(out.device()).copy(ob, out);
}

}  // namespace

void CudaBackend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                                 const Conv2dParams& p) {
  const Shape bs = bias.defined() ? bias.shape() : Shape();
  check_conv2d_kernel_shapes(x.shape(), w.shape(), y.shape(), bias.defined() ? &bs : nullptr, p, "conv2d_forward");
  require_compute("conv2d", x.dtype());
  const bool bf = use_bf16(x.dtype());
  Tensor xc = bf ? to_bf16(x) : dense_any(x), wc = bf ? to_bf16(w) : dense_any(w);
  into(y, bf, [&](const Tensor& out) { conv_forward(xc, wc, out, p); });
  if (bias.defined() && y.dtype() == DType::bf16) {  // autocast: a broadcast add in float, rounded once
    binary(BinaryOp::add, y, make_view(bias, {1, bias.numel(), 1, 1}, {bias.strides()[0], bias.strides()[0], 0, 0},
                                       bias.offset()),
           y, 0);
  } else if (bias.defined()) {
    Tensor bc = dense(bias);
    Scalars sc(y.dtype());
    TensorDesc bd(y.dtype(), 1, bias.numel(), 1, 1), yd = nchw(y);
    HPDL_CUDNN_CHECK(cudnnAddTensor(cudnn_for(y.device()), sc.one(), bd, bc.raw_data(), sc.one(), yd, y.raw_data()));
  }
}

void CudaBackend::conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p) {
  check_conv2d_kernel_shapes(dx.shape(), w.shape(), dy.shape(), nullptr, p, "conv2d_backward_data");
  require_compute("conv2d_backward_data", dy.dtype());
  const bool bf = use_bf16(dy.dtype());
  Tensor dyc = bf ? to_bf16(dy) : dense_any(dy), wc = bf ? to_bf16(w) : dense_any(w);
  into(dx, bf, [&](const Tensor& out) { conv_backward_data(dyc, wc, out, p); });
}

void CudaBackend::conv2d_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                                          const Conv2dParams& p) {
  const Shape bs = db.defined() ? db.shape() : Shape();
  check_conv2d_kernel_shapes(x.shape(), dw.shape(), dy.shape(), db.defined() ? &bs : nullptr, p,
                             "conv2d_backward_weights");
  require_compute("conv2d_backward_weights", x.dtype());
  const bool bf = use_bf16(x.dtype());
  Tensor xc = bf ? to_bf16(x) : dense_any(x), dyc = bf ? to_bf16(dy) : dense_any(dy);
  into(dw, bf, [&](const Tensor& out) { conv_backward_weights(xc, dyc, out, p); });
  if (db.defined() && db.dtype() == DType::bf16) {  // autocast: summed in double by the reduction kernel
    reduce(ReduceOp::sum, dy, {0, 2, 3}, make_view(db, {1, db.numel(), 1, 1}, contiguous_strides({1, db.numel(), 1, 1}),
                                                    db.offset()));
  } else if (db.defined()) {  // the bias gradient sums dy in float32 either way
    Tensor dyf = dense(dy);
    Scalars sc(db.dtype());
    TensorDesc bd(db.dtype(), 1, db.numel(), 1, 1), dyd = nchw(dyf);
    HPDL_CUDNN_CHECK(cudnnConvolutionBackwardBias(cudnn_for(db.device()), sc.one(), dyd, dyf.raw_data(), sc.zero(), bd,
                                                  db.raw_data()));
  }
}

// ---------------------------------------------------------------- pooling

namespace {
class PoolDesc {
 public:
  PoolDesc(PoolKind kind, const Pool2dParams& p) {
    cudnnPoolingMode_t mode = kind == PoolKind::max ? CUDNN_POOLING_MAX_DETERMINISTIC
                              : p.count_include_pad ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                                    : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
    HPDL_CUDNN_CHECK(cudnnCreatePoolingDescriptor(&d_));
    HPDL_CUDNN_CHECK(cudnnSetPooling2dDescriptor(d_, mode, CUDNN_NOT_PROPAGATE_NAN, to_int(p.kernel_h, "kernel_h"),
                                                 to_int(p.kernel_w, "kernel_w"), to_int(p.pad_h, "pad_h"),
                                                 to_int(p.pad_w, "pad_w"), to_int(p.stride_h, "stride_h"),
                                                 to_int(p.stride_w, "stride_w")));
  }
  ~PoolDesc() { cudnnDestroyPoolingDescriptor(d_); }
  PoolDesc(const PoolDesc&) = delete;
  PoolDesc& operator=(const PoolDesc&) = delete;
  operator cudnnPoolingDescriptor_t() const { return d_; }

 private:
  cudnnPoolingDescriptor_t d_ = nullptr;
};
}  // namespace

namespace {
// bfloat16 pooling runs in cuDNN where this cuDNN build takes it; where it answers "not supported"
// the operands are widened to float32 around the float32 call (remembered, so tried once).
std::atomic<bool> g_pool_bf16_unsupported{false};

bool pool_in_float(const Tensor& x) { return x.dtype() == DType::bf16 && g_pool_bf16_unsupported; }

Tensor widened(const Tensor& t) {
  Tensor f = empty_in_layout(t, DType::f32);
  backend_for(t.device()).copy(t, f);
  return f;
}

// The status of a bfloat16 cuDNN call: true when it ran, false (and remembered) when not supported.
bool bf16_ran(cudnnStatus_t st, const char* call) {
  if (st == CUDNN_STATUS_NOT_SUPPORTED || st == CUDNN_STATUS_BAD_PARAM) {
    g_pool_bf16_unsupported = true;
    return false;
  }
  HPDL_CHECK(st == CUDNN_STATUS_SUCCESS, "cuDNN {} failed: {}", call, cudnnGetErrorString(st));
  return true;
}
}  // namespace

void CudaBackend::pool2d_forward(PoolKind kind, const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  require_compute("pool2d", x.dtype());
  if (pool_in_float(x)) {
    Tensor yf = widened(y);
    pool2d_forward(kind, widened(x), yf, p);
    copy(yf, y);
    return;
  }
  Tensor xc = dense_any(x);
  PoolDesc pd(kind, p);
  const bool cl = nhwc(xc) || nhwc(y);
  TensorDesc xd = nchw(xc, cl), yd = nchw(y, cl);
  Scalars sc(x.dtype());
  cudnnStatus_t st = cudnnPoolingForward(cudnn_for(y.device()), pd, sc.one(), xd, xc.raw_data(), sc.zero(), yd,
                                         y.raw_data());
  if (x.dtype() == DType::bf16) {
    if (!bf16_ran(st, "cudnnPoolingForward")) pool2d_forward(kind, x, y, p);
    return;
  }
  HPDL_CUDNN_CHECK(st);
}

namespace {
// Max pooling backward of channels-last operands through the backend's two-pass gather (cuDNN's NHWC
// max-pool backward took 1.0 ms of a ResNet-50 step at batch 128 on an H200); false when it does not apply.
bool maxpool_backward_channels_last(PoolKind kind, const Tensor& x, const Tensor& dy, const Tensor& dx,
                                    const Pool2dParams& p) {
  if (kind != PoolKind::max || !nhwc(x) || !nhwc(dy) || !nhwc(dx) || p.kernel_h * p.kernel_w > 255) return false;
  const Shape &xs = x.shape(), &ys = dy.shape();
  const int64_t limit = INT32_MAX;
  if (x.numel() >= limit || dy.numel() >= limit || p.stride_h >= limit || p.stride_w >= limit || p.pad_h >= limit ||
      p.pad_w >= limit)
    return false;
  Tensor scratch = Tensor::empty({dy.numel()}, DType::u8, dx.device());
  const kern::PoolGeom g{static_cast<int>(p.kernel_h), static_cast<int>(p.kernel_w), static_cast<int>(p.stride_h),
                         static_cast<int>(p.stride_w), static_cast<int>(p.pad_h),    static_cast<int>(p.pad_w)};
  const kern::Dt t = x.dtype() == DType::bf16 ? kern::Dt::bf16 : x.dtype() == DType::f64 ? kern::Dt::f64 : kern::Dt::f32;
  HPDL_KERNEL_CHECK("max_pool2d_backward",
                    kern::maxpool_backward_nhwc(t, x.raw_data(), dy.raw_data(), dx.raw_data(),
                                                static_cast<uint8_t*>(scratch.raw_data()), static_cast<int>(xs[0]),
                                                static_cast<int>(xs[2]), static_cast<int>(xs[3]),
                                                static_cast<int>(xs[1]), static_cast<int>(ys[2]),
                                                static_cast<int>(ys[3]), g, stream_for(dx.device())));
  return true;
}
}  // namespace

void CudaBackend::pool2d_backward(PoolKind kind, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx,
                                  const Pool2dParams& p) {
  require_compute("pool2d_backward", x.dtype());
  if (maxpool_backward_channels_last(kind, x, dy, dx, p)) return;
  if (pool_in_float(x)) {
    Tensor dxf = widened(dx);
    pool2d_backward(kind, widened(x), widened(y), widened(dy), dxf, p);
    copy(dxf, dx);
    return;
  }
  Tensor xc = dense_any(x), yc = dense_any(y), dyc = dense_any(dy);
  PoolDesc pd(kind, p);
  const bool cl = nhwc(xc) || nhwc(yc) || nhwc(dyc) || nhwc(dx);
  TensorDesc xd = nchw(xc, cl), yd = nchw(yc, cl), dyd = nchw(dyc, cl), dxd = nchw(dx, cl);
  Scalars sc(x.dtype());
  cudnnStatus_t st = cudnnPoolingBackward(cudnn_for(dx.device()), pd, sc.one(), yd, yc.raw_data(), dyd,
                                          dyc.raw_data(), xd, xc.raw_data(), sc.zero(), dxd, dx.raw_data());
  if (x.dtype() == DType::bf16) {
    if (!bf16_ran(st, "cudnnPoolingBackward")) pool2d_backward(kind, x, y, dy, dx, p);
    return;
  }
  HPDL_CUDNN_CHECK(st);
}

// ---------------------------------------------------------------- batch norm
// x [N, C, ...] is described as [N, C, prod(...), 1] in cuDNN's spatial mode: statistics per channel
// over N and every spatial position, as the reference computes them.

namespace {
TensorDesc bn_view(const Tensor& x) {
  int64_t inner = 1;
  for (int i = 2; i < x.ndim(); ++i) inner *= x.shape()[i];
  return TensorDesc(x.dtype(), x.shape()[0], x.shape()[1], inner, 1);
}
}  // namespace

namespace {
// Mixed precision batch norm (bfloat16 x, float32 parameters and statistics) runs on the
// hand-written kernels: one pass for the per-channel sums, one for the output.
struct BnShape {
  int64_t N, C, HW;
  bool nhwc;
  explicit BnShape(const Tensor& x)
      : N(x.shape()[0]), C(x.shape()[1]), HW(x.numel() / std::max<int64_t>(1, N * C)), nhwc(cuda::nhwc(x)) {}
};

// t copied into the layout of `like` (channels-last or row-major) unless it already has it.
Tensor in_layout_of(const Tensor& like, const Tensor& t) {
  if (t.strides() == like.strides()) return t;
  Tensor c = empty_in_layout(like, t.dtype());  // same shape as t
  backend_for(t.device()).copy(t, c);
  return c;
}

// Output written in the input's layout.
void check_layout(const Tensor& x, const Tensor& out, const char* op) {
  HPDL_CHECK(out.strides() == x.strides() || (out.is_contiguous() && x.is_contiguous()),
             "{}: output {} must have the input's layout", op, out.str());
}

// 2C double sums (zeroed) and room for the kernels' per-channel coefficients (kernels.h).
Tensor bn_acc(int64_t C, Device d) {
  Tensor acc = Tensor::empty({5 * C}, DType::f64, d);
  HPDL_CUDA_CHECK(cudaMemsetAsync(acc.raw_data(), 0, 2 * C * sizeof(double), stream_for(d)));
  return acc;
}

const float* fptr(const Tensor& t) {
  HPDL_CHECK(t.dtype() == DType::f32 && t.is_contiguous(), "batchnorm (bfloat16): parameter {} must be contiguous "
             "float32", t.str());
  return static_cast<const float*>(t.raw_data());
}
float* fptr_mut(const Tensor& t) { return const_cast<float*>(fptr(t)); }
}  // namespace

void CudaBackend::batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                          const Tensor& save_mean, const Tensor& save_invstd, double eps) {
  require_compute("batchnorm", x.dtype());
  if (x.dtype() == DType::bf16) return bn_train_bf16(x, gamma, beta, y, save_mean, save_invstd, eps, false);
  Tensor xc = dense(x), gc = dense(gamma), bc = dense(beta);
  TensorDesc xd = bn_view(xc), pd;
  HPDL_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, xd, CUDNN_BATCHNORM_SPATIAL));
  Scalars sc(x.dtype());
  // No running statistics here (both null): the ops layer keeps them from save_mean and the batch variance.
  HPDL_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
      cudnn_for(y.device()), CUDNN_BATCHNORM_SPATIAL, sc.one(), sc.zero(), xd, xc.raw_data(), xd, y.raw_data(), pd,
      gc.raw_data(), bc.raw_data(), 0.0, nullptr, nullptr, std::max(eps, CUDNN_BN_MIN_EPSILON), save_mean.raw_data(),
      save_invstd.raw_data()));
}

void CudaBackend::batchnorm_forward_infer(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
                                          const Tensor& var, const Tensor& y, double eps) {
  require_compute("batchnorm", x.dtype());
  if (x.dtype() == DType::bf16) {
    Tensor xc = dense_any(x), gc = dense(gamma), bc = dense(beta), mc = dense(mean), vc = dense(var);
    BnShape b(xc);
    check_layout(xc, y, "batchnorm");
    Tensor acc = bn_acc(b.C, x.device());
    HPDL_KERNEL_CHECK("batchnorm_forward_infer",
                      kern::bn_forward_infer(kern::Dt::bf16, xc.raw_data(), y.raw_data(), b.N, b.C, b.HW, b.nhwc, fptr(gc),
                                             fptr(bc), fptr(mc), fptr(vc), eps, static_cast<double*>(acc.raw_data()),
                                             stream_for(x.device())));
    return;
  }
  Tensor xc = dense(x), gc = dense(gamma), bc = dense(beta), mc = dense(mean), vc = dense(var);
  TensorDesc xd = bn_view(xc), pd;
  HPDL_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, xd, CUDNN_BATCHNORM_SPATIAL));
  Scalars sc(x.dtype());
  HPDL_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
      cudnn_for(y.device()), CUDNN_BATCHNORM_SPATIAL, sc.one(), sc.zero(), xd, xc.raw_data(), xd, y.raw_data(), pd,
      gc.raw_data(), bc.raw_data(), mc.raw_data(), vc.raw_data(), std::max(eps, CUDNN_BN_MIN_EPSILON)));
}

void CudaBackend::batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                                     const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                                     const Tensor& dbeta) {
  require_compute("batchnorm_backward", x.dtype());
  if (x.dtype() == DType::bf16)
    return bn_backward_bf16(x, dy, gamma, Tensor(), save_mean, save_invstd, dx, dgamma, dbeta);
  Tensor xc = dense(x), dyc = dense(dy), gc = dense(gamma);
  const int64_t C = x.shape()[1];
  // cuDNN always writes both parameter gradients; scratch buffers stand in for undefined ones.
  Tensor dg = dgamma.defined() ? dgamma : Tensor::empty({C}, x.dtype(), x.device());
  Tensor db = dbeta.defined() ? dbeta : Tensor::empty({C}, x.dtype(), x.device());
  TensorDesc xd = bn_view(xc), pd;
  HPDL_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(pd, xd, CUDNN_BATCHNORM_SPATIAL));
  Scalars sc(x.dtype());
  // eps is unused when the saved mean and inverse std are given (as here).
  HPDL_CUDNN_CHECK(cudnnBatchNormalizationBackward(
      cudnn_for(dx.device()), CUDNN_BATCHNORM_SPATIAL, sc.one(), sc.zero(), sc.one(), sc.zero(), xd, xc.raw_data(), xd,
      dyc.raw_data(), xd, dx.raw_data(), pd, gc.raw_data(), dg.raw_data(), db.raw_data(), 1e-5,
      save_mean.raw_data(), save_invstd.raw_data()));
}

void CudaBackend::bn_train_bf16(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                const Tensor& save_mean, const Tensor& save_invstd, double eps, bool relu,
                                const Tensor& residual) {
  Tensor xc = dense_any(x), gc = dense(gamma), bc = dense(beta);
  BnShape b(xc);
  check_layout(xc, y, "batchnorm");
  Tensor rc;
  if (residual.defined()) {
    HPDL_CHECK(residual.dtype() == DType::bf16 && residual.shape() == xc.shape(),
               "batchnorm_add_relu: residual {} must be bfloat16 of the input's shape {}", residual.str(),
               shape_str(xc.shape()));
    rc = residual.strides() == xc.strides() ? residual : in_layout_of(xc, residual);
  }
  Tensor acc = bn_acc(b.C, x.device());
  HPDL_KERNEL_CHECK("batchnorm_forward_train",
                    kern::bn_forward_train(kern::Dt::bf16, xc.raw_data(), rc.defined() ? rc.raw_data() : nullptr,
                                           y.raw_data(), b.N, b.C, b.HW, b.nhwc, relu, fptr(gc), fptr(bc),
                                           fptr_mut(save_mean), fptr_mut(save_invstd), eps,
                                           static_cast<double*>(acc.raw_data()), stream_for(x.device())));
}

void CudaBackend::bn_backward_bf16(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& relu_beta,
                                   const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx,
                                   const Tensor& dgamma, const Tensor& dbeta) {
  Tensor xc = dense_any(x), gc = dense(gamma);
  Tensor bc = relu_beta.defined() ? dense(relu_beta) : Tensor();
  BnShape b(xc);
  Tensor dyc = dy.strides() == xc.strides() ? dy : in_layout_of(xc, dy);
  check_layout(xc, dx, "batchnorm_backward");
  Tensor dg = dgamma.defined() ? dgamma : Tensor::empty({b.C}, DType::f32, x.device());
  Tensor db = dbeta.defined() ? dbeta : Tensor::empty({b.C}, DType::f32, x.device());
  Tensor acc = bn_acc(b.C, x.device());
  HPDL_KERNEL_CHECK("batchnorm_backward",
                    kern::bn_backward(kern::Dt::bf16, xc.raw_data(), dyc.raw_data(), dx.raw_data(), b.N, b.C, b.HW,
                                      b.nhwc, fptr(gc), bc.defined() ? fptr(bc) : nullptr, fptr(save_mean),
                                      fptr(save_invstd), fptr_mut(dg), fptr_mut(db),
                                      static_cast<double*>(acc.raw_data()), stream_for(x.device())));
}

// Fused ReLU: only the bfloat16 kernels fuse it; other dtypes take the composed default.
void CudaBackend::batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               const Tensor& y, const Tensor& save_mean, const Tensor& save_invstd,
                                               double eps) {
  if (x.dtype() != DType::bf16) return Backend::batchnorm_relu_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps);
  bn_train_bf16(x, gamma, beta, y, save_mean, save_invstd, eps, true);
}

namespace {
std::atomic<bool> g_fused_residual{[] {
  const char* e = std::getenv("HPDL_CUDA_FUSED_RESIDUAL");
  return e && std::string(e) == "1";
}()};
}  // namespace

void set_fused_residual(bool on) { g_fused_residual = on; }
bool fused_residual() { return g_fused_residual; }

void CudaBackend::batchnorm_add_relu_forward_train(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                                   const Tensor& beta, const Tensor& y, const Tensor& save_mean,
                                                   const Tensor& save_invstd, double eps) {
  if (!g_fused_residual || x.dtype() != DType::bf16 || residual.dtype() != DType::bf16)
    return Backend::batchnorm_add_relu_forward_train(x, residual, gamma, beta, y, save_mean, save_invstd, eps);
  bn_train_bf16(x, gamma, beta, y, save_mean, save_invstd, eps, true, residual);
}

void CudaBackend::batchnorm_relu_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& gamma,
                                          const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                                          const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) {
  if (x.dtype() != DType::bf16)
    return Backend::batchnorm_relu_backward(x, y, dy, gamma, beta, save_mean, save_invstd, dx, dgamma, dbeta);
  bn_backward_bf16(x, dy, gamma, beta, save_mean, save_invstd, dx, dgamma, dbeta);  // mask recomputed from x
}

void CudaBackend::batchnorm_update_running(const Tensor& running_mean, const Tensor& running_var,
                                           const Tensor& save_mean, const Tensor& save_invstd, double momentum,
                                           double eps, int64_t M) {
  const DType t = running_mean.dtype();
  const bool one_pass = (t == DType::f32 || t == DType::f64) && running_var.dtype() == t && save_mean.dtype() == t &&
                        save_invstd.dtype() == t && running_mean.is_contiguous() && running_var.is_contiguous() &&
                        save_mean.is_contiguous() && save_invstd.is_contiguous();
  if (!one_pass)
    return Backend::batchnorm_update_running(running_mean, running_var, save_mean, save_invstd, momentum, eps, M);
  HPDL_KERNEL_CHECK("batchnorm running statistics",
                    kern::bn_update_running(t == DType::f64 ? kern::Dt::f64 : kern::Dt::f32, running_mean.raw_data(),
                                            running_var.raw_data(), save_mean.raw_data(), save_invstd.raw_data(),
                                            running_mean.numel(), momentum, eps, M,
                                            stream_for(running_mean.device())));
}

void CudaBackend::increment(const Tensor& counter) {
  if (counter.dtype() != DType::i64 || counter.numel() != 1) return Backend::increment(counter);  // names the error
  HPDL_KERNEL_CHECK("increment", kern::increment(static_cast<int64_t*>(counter.raw_data()),
                                                 stream_for(counter.device())));
}

// ---------------------------------------------------------------- softmax
// Over the last axis (inner = 1): the backend's row kernels. Otherwise x viewed as [outer, n, inner, 1];
// cuDNN's channel mode normalizes over n at each (outer, inner).

namespace {
int64_t inner_of(const Tensor& t, int axis) {
  int64_t inner = 1;
  for (int i = axis + 1; i < t.ndim(); ++i) inner *= t.shape()[i];
  return inner;
}

TensorDesc softmax_view(const Tensor& t, int axis) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; ++i) outer *= t.shape()[i];
  for (int i = axis + 1; i < t.ndim(); ++i) inner *= t.shape()[i];
  return TensorDesc(t.dtype(), outer, t.shape()[axis], inner, 1);
}
}  // namespace

void CudaBackend::softmax_forward(const Tensor& x, const Tensor& y, int axis, bool log) {
  require_float(log ? "log_softmax" : "softmax", x.dtype());
  if (x.numel() == 0) return;
  Tensor xc = dense(x);
  if (inner_of(x, axis) == 1 && y.is_contiguous()) {  // rows: one block per row
    const int64_t D = x.shape()[axis];
    HPDL_KERNEL_CHECK(log ? "log_softmax" : "softmax",
                      kern::softmax_rows_forward(x.dtype() == DType::f64 ? kern::Dt::f64 : kern::Dt::f32,
                                                 xc.raw_data(), y.raw_data(), x.numel() / D, D, log,
                                                 stream_for(y.device())));
    return;
  }
  TensorDesc d = softmax_view(xc, axis);
  Scalars sc(x.dtype());
  HPDL_CUDNN_CHECK(cudnnSoftmaxForward(cudnn_for(y.device()), log ? CUDNN_SOFTMAX_LOG : CUDNN_SOFTMAX_ACCURATE,
                                       CUDNN_SOFTMAX_MODE_CHANNEL, sc.one(), d, xc.raw_data(), sc.zero(), d,
                                       y.raw_data()));
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int axis, bool log) {
  require_float(log ? "log_softmax_backward" : "softmax_backward", y.dtype());
  if (y.numel() == 0) return;
  Tensor yc = dense(y), dyc = dense(dy);
  if (inner_of(y, axis) == 1 && dx.is_contiguous()) {
    const int64_t D = y.shape()[axis];
    HPDL_KERNEL_CHECK(log ? "log_softmax_backward" : "softmax_backward",
                      kern::softmax_rows_backward(y.dtype() == DType::f64 ? kern::Dt::f64 : kern::Dt::f32,
                                                  yc.raw_data(), dyc.raw_data(), dx.raw_data(), y.numel() / D, D, log,
                                                  stream_for(dx.device())));
    return;
  }
  TensorDesc d = softmax_view(yc, axis);
  Scalars sc(y.dtype());
  HPDL_CUDNN_CHECK(cudnnSoftmaxBackward(cudnn_for(dx.device()), log ? CUDNN_SOFTMAX_LOG : CUDNN_SOFTMAX_ACCURATE,
                                        CUDNN_SOFTMAX_MODE_CHANNEL, sc.one(), d, yc.raw_data(), d, dyc.raw_data(),
                                        sc.zero(), d, dx.raw_data()));
}

}  // namespace hpdl::cuda
