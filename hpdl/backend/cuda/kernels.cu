// Hand-written kernels of the CUDA backend: strided elementwise (fill, copy
// with dtype conversion, unary, binary with broadcasting), counter-based random
// fills, row reductions, layer norm, indexing and fused optimizer updates. The
// math of each follows backend/cpu/reference.cpp line for line (accumulating in
// double where the reference does) so the two agree to float32 rounding.
#include "hpdl/backend/cuda/kernels.h"

#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>
#include <initializer_list>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace hpdl::cuda::kern {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b > (1 << 20)) b = 1 << 20;  // grid-stride loops cover the rest
  return static_cast<int>(b < 1 ? 1 : b);
}

// bfloat16 as raw bits, converted exactly as hpdl::bf16 does on the host (round to nearest even, quiet NaN).
struct Bf16 {
  uint16_t bits;
};
// Host and device: the fill launcher converts its value on the host.
__host__ __device__ inline float bf16_to_float(Bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
__host__ __device__ inline Bf16 float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return Bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return Bf16{static_cast<uint16_t>(u >> 16)};
}

// float16 is cuda_fp16.h's __half: round to nearest even (__float2half_rn, host
// and device), through float32 like hpdl::f16 on the host (NaN payloads are not
// kept: any NaN stays a NaN).
template <typename To, typename From>
__host__ __device__ inline To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, Bf16>) {
    return convert<To>(bf16_to_float(v));
  } else if constexpr (std::is_same_v<To, Bf16>) {
    return float_to_bf16(convert<float>(v));
  } else if constexpr (std::is_same_v<From, __half>) {
    return convert<To>(__half2float(v));
  } else if constexpr (std::is_same_v<To, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

template <typename F>
cudaError_t dispatch_all(Dt t, F&& f) {
  switch (t) {
    case Dt::f32: return f(float{});
    case Dt::f64: return f(double{});
    case Dt::bf16: return f(Bf16{});
    case Dt::i64: return f(int64_t{});
    case Dt::i32: return f(int32_t{});
    case Dt::u8: return f(uint8_t{});
    case Dt::f16: return f(__half{});
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t dispatch_float(Dt t, F&& f) {
  switch (t) {
    case Dt::f32: return f(float{});
    case Dt::f64: return f(double{});
    default: return cudaErrorInvalidValue;
  }
}

// Float types that arithmetic kernels take, bfloat16 included: a bfloat16 value is
// widened to float for the math (Compute<T>) and rounded back once when stored.
template <typename F>
cudaError_t dispatch_compute(Dt t, F&& f) {
  switch (t) {
    case Dt::f32: return f(float{});
    case Dt::f64: return f(double{});
    case Dt::bf16: return f(Bf16{});
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
struct ComputeOf {
  using type = T;
};
template <>
struct ComputeOf<Bf16> {
  using type = float;
};
template <typename T>
using Compute = typename ComputeOf<T>::type;

// Element offsets of linear index i (row-major over g.shape) for each of the K operands.
template <int K>
__device__ inline void offsets_of(const Strided<K>& g, int64_t i, int64_t (&off)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = i * g.stride[k][g.ndim - 1];
  if (g.ndim == 1) return;  // the common case (dense operands coalesce to one dim): no division
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
  for (int d = g.ndim - 1; d >= 0; --d) {
    int64_t sz = g.shape[d];
    int64_t idx = i % sz;
    i /= sz;
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += idx * g.stride[k][d];
  }
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------- memory

template <typename T>
__global__ void fill_kernel(T* out, Strided<1> g, int64_t n, T v) {
  GRID_STRIDE(i, n) {
    int64_t off[1];
    offsets_of(g, i, off);
    out[off[0]] = v;
  }
}

template <typename D, typename S>
__global__ void copy_kernel(D* out, const S* in, Strided<2> g, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t off[2];
    offsets_of(g, i, off);
    out[off[0]] = convert<D>(in[off[1]]);
  }
}

// SplitMix64 of (seed, counter), as Generator::bits in hpdl/core/random.h.
__device__ inline uint64_t splitmix_bits(uint64_t seed, uint64_t counter) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + counter * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ inline double splitmix_uniform(uint64_t seed, uint64_t counter) {
  return static_cast<double>(splitmix_bits(seed, counter) >> 11) * 0x1.0p-53;
}

// __dmul_rn/__dadd_rn keep nvcc from fusing into an FMA: the host computes low + range*u unfused.
template <typename T>
__global__ void uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double low, double range) {
  GRID_STRIDE(i, n) {
    out[i] = static_cast<T>(__dadd_rn(low, __dmul_rn(range, splitmix_uniform(seed, offset + i))));
  }
}

// Box-Muller on counters (2i, 2i+1), as ReferenceBackend::random_normal.
template <typename T>
__global__ void normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double stddev) {
  GRID_STRIDE(i, n) {
    double u1 = __dadd_rn(1.0, -splitmix_uniform(seed, offset + 2 * i));
    double u2 = splitmix_uniform(seed, offset + 2 * i + 1);
    double z = __dmul_rn(sqrt(__dmul_rn(-2.0, log(u1))), cos(__dmul_rn(6.283185307179586, u2)));
    out[i] = static_cast<T>(__dadd_rn(mean, __dmul_rn(stddev, z)));
  }
}

// ---------------------------------------------------------------- elementwise

template <typename T>
__device__ inline T unary_value(Unary op, T x, T a) {
  switch (op) {
    case Unary::neg: return -x;
    case Unary::exp: return exp(x);
    case Unary::log: return log(x);
    case Unary::sqrt: return sqrt(x);
    case Unary::rsqrt: return T(1) / sqrt(x);
    case Unary::tanh: return tanh(x);
    case Unary::sigmoid: return T(1) / (T(1) + exp(-x));
    case Unary::relu: return x > T(0) ? x : T(0);
    case Unary::leaky_relu: return x > T(0) ? x : a * x;
    case Unary::gelu: return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
    case Unary::abs: return fabs(x);
    case Unary::square: return x * x;
    case Unary::pow_scalar: return pow(x, a);
    case Unary::reciprocal: return T(1) / x;
    case Unary::add_scalar: return x + a;
    case Unary::mul_scalar: return x * a;
    case Unary::sign: return T((x > T(0)) - (x < T(0)));
    case Unary::sin: return sin(x);
    case Unary::cos: return cos(x);
    case Unary::erf: return erf(x);
    default: return x;
  }
}

template <typename T>
__device__ inline T binary_value(Binary op, T a, T b, T alpha) {
  switch (op) {
    case Binary::add: return a + b;
    case Binary::sub: return a - b;
    case Binary::mul: return a * b;
    case Binary::div: return a / b;
    case Binary::pow: return pow(a, b);
    case Binary::maximum: return a > b ? a : b;
    case Binary::minimum: return a < b ? a : b;
    case Binary::gt: return T(a > b);
    case Binary::ge: return T(a >= b);
    case Binary::lt: return T(a < b);
    case Binary::le: return T(a <= b);
    case Binary::eq: return T(a == b);
    case Binary::relu_grad: return b > T(0) ? a : T(0);
    case Binary::leaky_relu_grad: return b > T(0) ? a : alpha * a;
    case Binary::add_relu: return a + b > T(0) ? a + b : T(0);
    default: return a;
  }
}

template <typename T, typename C = Compute<T>>
__global__ void unary_kernel(Unary op, T* out, const T* x, Strided<2> g, int64_t n, C alpha) {
  GRID_STRIDE(i, n) {
    int64_t off[2];
    offsets_of(g, i, off);
    out[off[0]] = convert<T>(unary_value<C>(op, convert<C>(x[off[1]]), alpha));
  }
}

template <typename T, typename C = Compute<T>>
__global__ void binary_kernel(Binary op, T* out, const T* a, const T* b, Strided<3> g, int64_t n, C alpha) {
  GRID_STRIDE(i, n) {
    int64_t off[3];
    offsets_of(g, i, off);
    out[off[0]] = convert<T>(binary_value<C>(op, convert<C>(a[off[1]]), convert<C>(b[off[2]]), alpha));
  }
}

template <typename T, typename C = Compute<T>>
__global__ void axpby_kernel(int64_t n, C a, const T* x, C b, const T* y, T* out) {
  GRID_STRIDE(i, n) out[i] = convert<T>(a * convert<C>(x[i]) + b * convert<C>(y[i]));
}

// Dense operands (one coalesced dim, unit strides, 16-byte aligned, n a multiple of the width):
// 16 bytes per load and store (8 bfloat16, 4 float, 2 double), the rest as above.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kWidth = 16 / sizeof(T);
  T v[kWidth];
};

template <typename T, typename C = Compute<T>>
__global__ void unary_vec_kernel(Unary op, T* out, const T* x, int64_t nvec, C alpha) {
  using V = Vec16<T>;
  GRID_STRIDE(i, nvec) {
    V a = reinterpret_cast<const V*>(x)[i], r;
#pragma unroll
    for (int k = 0; k < V::kWidth; ++k) r.v[k] = convert<T>(unary_value<C>(op, convert<C>(a.v[k]), alpha));
    reinterpret_cast<V*>(out)[i] = r;
  }
}

template <typename T, typename C = Compute<T>>
__global__ void binary_vec_kernel(Binary op, T* out, const T* a, const T* b, int64_t nvec, C alpha) {
  using V = Vec16<T>;
  GRID_STRIDE(i, nvec) {
    V va = reinterpret_cast<const V*>(a)[i], vb = reinterpret_cast<const V*>(b)[i], r;
#pragma unroll
    for (int k = 0; k < V::kWidth; ++k)
      r.v[k] = convert<T>(binary_value<C>(op, convert<C>(va.v[k]), convert<C>(vb.v[k]), alpha));
    reinterpret_cast<V*>(out)[i] = r;
  }
}

template <typename T, typename C = Compute<T>>
__global__ void axpby_vec_kernel(int64_t nvec, C a, const T* x, C b, const T* y, T* out) {
  using V = Vec16<T>;
  GRID_STRIDE(i, nvec) {
    V vx = reinterpret_cast<const V*>(x)[i], vy = reinterpret_cast<const V*>(y)[i], r;
#pragma unroll
    for (int k = 0; k < V::kWidth; ++k) r.v[k] = convert<T>(a * convert<C>(vx.v[k]) + b * convert<C>(vy.v[k]));
    reinterpret_cast<V*>(out)[i] = r;
  }
}

// Whether K operands of g can take the 16-byte path.
template <typename T, int K>
bool vectorizable(const Strided<K>& g, int64_t n, std::initializer_list<const void*> ptrs) {
  if (g.ndim != 1 || n % Vec16<T>::kWidth != 0) return false;
  for (int k = 0; k < K; ++k)
    if (g.stride[k][0] != 1) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// ---------------------------------------------------------------- reductions

struct Acc {
  double v;
  int64_t i;  // argmax: index of the first maximum
};

__device__ inline Acc reduce_init(Reduce op) {
  switch (op) {
    case Reduce::max:
    case Reduce::argmax: return {-INFINITY, INT64_MAX};
    case Reduce::min: return {INFINITY, 0};
    default: return {0.0, 0};
  }
}

__device__ inline Acc reduce_combine(Reduce op, Acc a, Acc b) {
  switch (op) {
    case Reduce::max: return {fmax(a.v, b.v), 0};
    case Reduce::min: return {fmin(a.v, b.v), 0};
    case Reduce::argmax: return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
    default: return {a.v + b.v, 0};
  }
}

__device__ inline Acc reduce_element(Reduce op, double x, int64_t r) {
  return op == Reduce::sum_square ? Acc{x * x, r} : Acc{x, r};
}

template <typename T>
__device__ inline void reduce_store(Reduce op, Acc a, int64_t R, void* out, int64_t m) {
  if (op == Reduce::argmax) {
    static_cast<int64_t*>(out)[m] = a.i == INT64_MAX ? 0 : a.i;
  } else {
    double v = op == Reduce::mean ? a.v / static_cast<double>(R) : a.v;
    static_cast<T*>(out)[m] = convert<T>(v);
  }
}

// Long rows: one block per row, a shared-memory tree over the threads' partial results.
template <typename T>
__global__ void reduce_rows_block(Reduce op, const T* in, void* out, int64_t M, int64_t R) {
  __shared__ double sv[kThreads];
  __shared__ int64_t si[kThreads];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T* row = in + m * R;
    Acc acc = reduce_init(op);
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x)
      acc = reduce_combine(op, acc, reduce_element(op, convert<double>(row[r]), r));
    sv[threadIdx.x] = acc.v;
    si[threadIdx.x] = acc.i;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        Acc o = reduce_combine(op, Acc{sv[threadIdx.x], si[threadIdx.x]},
                               Acc{sv[threadIdx.x + s], si[threadIdx.x + s]});
        sv[threadIdx.x] = o.v;
        si[threadIdx.x] = o.i;
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) reduce_store<T>(op, Acc{sv[0], si[0]}, R, out, m);
    __syncthreads();
  }
}

// Few long rows: grid (chunks, M); each block reduces one chunk of a row into partial[m * chunks + c].
template <typename T>
__global__ void reduce_rows_partial(Reduce op, const T* in, Acc* partial, int64_t M, int64_t R, int64_t chunk) {
  __shared__ double sv[kThreads];
  __shared__ int64_t si[kThreads];
  const int64_t m = blockIdx.y, c = blockIdx.x;
  const int64_t begin = c * chunk, end = begin + chunk < R ? begin + chunk : R;
  const T* row = in + m * R;
  Acc acc = reduce_init(op);
  for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x)
    acc = reduce_combine(op, acc, reduce_element(op, convert<double>(row[r]), r));
  sv[threadIdx.x] = acc.v;
  si[threadIdx.x] = acc.i;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      Acc o = reduce_combine(op, Acc{sv[threadIdx.x], si[threadIdx.x]}, Acc{sv[threadIdx.x + s], si[threadIdx.x + s]});
      sv[threadIdx.x] = o.v;
      si[threadIdx.x] = o.i;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[m * gridDim.x + c] = Acc{sv[0], si[0]};
}

// Combines the chunks' partial results of each row (already transformed: no sum_square again).
template <typename T>
__global__ void reduce_rows_final(Reduce op, const Acc* partial, int64_t chunks, void* out, int64_t M, int64_t R) {
  GRID_STRIDE(m, M) {
    Acc acc = reduce_init(op);
    for (int64_t c = 0; c < chunks; ++c) acc = reduce_combine(op, acc, partial[m * chunks + c]);
    reduce_store<T>(op, acc, R, out, m);
  }
}

// Short rows: one thread per row.
template <typename T>
__global__ void reduce_rows_thread(Reduce op, const T* in, void* out, int64_t M, int64_t R) {
  GRID_STRIDE(m, M) {
    const T* row = in + m * R;
    Acc acc = reduce_init(op);
    for (int64_t r = 0; r < R; ++r) acc = reduce_combine(op, acc, reduce_element(op, convert<double>(row[r]), r));
    reduce_store<T>(op, acc, R, out, m);
  }
}

// Sum over the block, returned to every thread; blockDim.x a power of two <= kThreads.
__device__ inline double block_sum(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------- layer norm
// Per row m: mean, biased variance (two passes, as the reference), invstd = 1/sqrt(var + eps),
// y = gamma * (x - mean) * invstd + beta. Backward with g = dy * gamma and xhat = (x - mean) * invstd:
// dx = invstd / D * (D * g - sum(g) - xhat * sum(g * xhat)); dgamma = sum_m dy * xhat; dbeta = sum_m dy.

template <typename T>
__global__ void layernorm_forward_kernel(const T* x, const T* gamma, const T* beta, T* y, T* mean_out, T* invstd_out,
                                         int64_t M, int64_t D, double eps) {
  __shared__ double sh[kThreads];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T* row = x + m * D;
    double s = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) s += row[d];
    double mean = block_sum(s, sh) / static_cast<double>(D);
    double q = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) q += (row[d] - mean) * (row[d] - mean);
    double invstd = 1.0 / sqrt(block_sum(q, sh) / static_cast<double>(D) + eps);
    if (threadIdx.x == 0) {
      mean_out[m] = static_cast<T>(mean);
      invstd_out[m] = static_cast<T>(invstd);
    }
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      y[m * D + d] = static_cast<T>(gamma[d] * (row[d] - mean) * invstd + beta[d]);
  }
}

template <typename T>
__global__ void layernorm_backward_dx_kernel(const T* x, const T* dy, const T* gamma, const T* mean_in,
                                             const T* invstd_in, T* dx, int64_t M, int64_t D) {
  __shared__ double sh[kThreads];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    double mean = mean_in[m], invstd = invstd_in[m];
    double s1 = 0, s2 = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      double g = static_cast<double>(dy[m * D + d]) * gamma[d], xhat = (x[m * D + d] - mean) * invstd;
      s1 += g;
      s2 += g * xhat;
    }
    s1 = block_sum(s1, sh);
    s2 = block_sum(s2, sh);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      double g = static_cast<double>(dy[m * D + d]) * gamma[d], xhat = (x[m * D + d] - mean) * invstd;
      dx[m * D + d] = static_cast<T>(invstd / static_cast<double>(D) * (static_cast<double>(D) * g - s1 - xhat * s2));
    }
  }
}

// One thread per column d (coalesced across the warp), a serial sum over rows.
template <typename T>
__global__ void layernorm_backward_params_kernel(const T* x, const T* dy, const T* mean_in, const T* invstd_in,
                                                 T* dgamma, T* dbeta, int64_t M, int64_t D) {
  GRID_STRIDE(d, D) {
    double sg = 0, sb = 0;
    for (int64_t m = 0; m < M; ++m) {
      double xhat = (x[m * D + d] - static_cast<double>(mean_in[m])) * invstd_in[m];
      sg += dy[m * D + d] * xhat;
      sb += dy[m * D + d];
    }
    if (dgamma) dgamma[d] = static_cast<T>(sg);
    if (dbeta) dbeta[d] = static_cast<T>(sb);
  }
}

// ---------------------------------------------------------------- softmax over rows
// The reference's math per row of D (max, sum of exp in double): softmax y = exp(x - max) / sum,
// log_softmax y = x - max - log(sum); backward dx = y (dy - sum(dy y)) or dx = dy - exp(y) sum(dy).
// One block per row: cuDNN's channel-mode softmax on [M, D, 1, 1] ran one thread per row (0.5 ms for
// the [128, 1000] classifier of ResNet-50 on an H200).

__device__ inline double block_max(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] = fmax(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

template <typename T>
__global__ void softmax_rows_forward_kernel(const T* x, T* y, int64_t M, int64_t D, bool log) {
  __shared__ double sh[kThreads];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T* row = x + m * D;
    double mx = -INFINITY;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) mx = fmax(mx, static_cast<double>(row[d]));
    mx = block_max(mx, sh);
    double sum = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) sum += exp(static_cast<double>(row[d]) - mx);
    sum = block_sum(sum, sh);
    const double lse = ::log(sum);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const double v = static_cast<double>(row[d]) - mx;
      y[m * D + d] = static_cast<T>(log ? v - lse : exp(v) / sum);
    }
  }
}

template <typename T>
__global__ void softmax_rows_backward_kernel(const T* y, const T* dy, T* dx, int64_t M, int64_t D, bool log) {
  __shared__ double sh[kThreads];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T *yr = y + m * D, *gr = dy + m * D;
    double s = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      s += log ? static_cast<double>(gr[d]) : static_cast<double>(gr[d]) * static_cast<double>(yr[d]);
    s = block_sum(s, sh);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const double g = gr[d], yv = yr[d];
      dx[m * D + d] = static_cast<T>(log ? g - exp(yv) * s : yv * (g - s));
    }
  }
}

// ---------------------------------------------------------------- indexing

template <typename T>
__global__ void index_select_kernel(const T* x, const int64_t* index, T* out, int64_t outer, int64_t nx, int64_t nsel,
                                    int64_t inner, int64_t* bad) {
  GRID_STRIDE(e, outer * nsel * inner) {
    int64_t i = e % inner, j = (e / inner) % nsel, o = e / (inner * nsel);
    int64_t k = index[j];
    if (k < 0 || k >= nx) {
      *bad = j;
      out[e] = T(0);
    } else {
      out[e] = x[(o * nx + k) * inner + i];
    }
  }
}

__device__ inline void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ inline void atomic_add(double* p, double v) { atomicAdd(p, v); }

template <typename T>
__global__ void index_add_kernel(T* out, const int64_t* index, const T* src, int64_t outer, int64_t nout, int64_t nsrc,
                                 int64_t inner, int64_t* bad) {
  GRID_STRIDE(e, outer * nsrc * inner) {
    int64_t i = e % inner, j = (e / inner) % nsrc, o = e / (inner * nsrc);
    int64_t k = index[j];
    if (k < 0 || k >= nout) {
      *bad = j;
    } else {
      atomic_add(out + (o * nout + k) * inner + i, src[e]);
    }
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* x, const int64_t* index, T* out, int64_t M, int64_t C, int64_t* bad) {
  GRID_STRIDE(m, M) {
    int64_t k = index[m];
    if (k >= C) *bad = m;
    out[m] = (k < 0 || k >= C) ? T(0) : x[m * C + k];
  }
}

template <typename T>
__global__ void scatter_rows_kernel(const T* src, const int64_t* index, T* out, int64_t M, int64_t C, int64_t* bad) {
  GRID_STRIDE(m, M) {
    int64_t k = index[m];
    if (k >= C) *bad = m;
    else if (k >= 0) out[m * C + k] = src[m];
  }
}

// ---------------------------------------------------------------- optimizers
// The formulas of ReferenceBackend::optimizer_update, in double per element.

// One element of each update; weight_decay and step come in separately (they differ between the
// parameters of a grouped update).
template <typename T>
__device__ inline void sgd_element(const Optim& u, double weight_decay, int64_t step_no, T* p, const T* g, T* buf,
                                   int64_t i) {
  const double lr = u.lr * u.scale;
  double gi = g[i];
  if (u.decoupled_decay) {
    p[i] = static_cast<T>(p[i] - u.lr * weight_decay * p[i]);
  } else {
    gi += weight_decay * p[i];
  }
  double step = gi;
  if (buf && u.momentum != 0) {
    double b = step_no <= 1 ? gi : u.momentum * buf[i] + (1 - u.dampening) * gi;
    buf[i] = static_cast<T>(b);
    step = u.nesterov ? gi + u.momentum * b : b;
  }
  p[i] = static_cast<T>(p[i] - lr * step);
}

template <typename T>
__device__ inline void adamw_element(const Optim& u, double weight_decay, T* p, const T* g, T* m, T* v, int64_t i,
                                     double bc1, double bc2) {
  const double lr = u.lr * u.scale;
  double gi = g[i];
  double pi = p[i] * (1 - u.lr * weight_decay);
  double mi = u.beta1 * m[i] + (1 - u.beta1) * gi;
  double vi = u.beta2 * v[i] + (1 - u.beta2) * gi * gi;
  m[i] = static_cast<T>(mi);
  v[i] = static_cast<T>(vi);
  p[i] = static_cast<T>(pi - lr * (mi / bc1) / (sqrt(vi / bc2) + u.eps));
}

template <typename T>
__global__ void sgd_kernel(Optim u, T* p, const T* g, T* buf, int64_t n) {
  GRID_STRIDE(i, n) sgd_element(u, u.weight_decay, u.step, p, g, buf, i);
}

template <typename T>
__global__ void adamw_kernel(Optim u, T* p, const T* g, T* m, T* v, int64_t n, double bc1, double bc2) {
  GRID_STRIDE(i, n) adamw_element(u, u.weight_decay, p, g, m, v, i, bc1, bc2);
}

// Up to kMaxSlots parameters in one launch (their pointers travel as a kernel argument): every
// thread walks each slot's elements with the grid's stride.
template <typename T>
__global__ void optimizer_many_kernel(Optim u, OptimSlots slots) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int k = 0; k < slots.count; ++k) {
    const OptimSlot& s = slots.s[k];
    T* p = static_cast<T*>(s.p);
    const T* g = static_cast<const T*>(s.g);
    T *b1 = static_cast<T*>(s.buf1), *b2 = static_cast<T*>(s.buf2);
    for (int64_t i = first; i < s.n; i += stride) {
      if (u.adamw)
        adamw_element(u, s.weight_decay, p, g, b1, b2, i, s.bc1, s.bc2);
      else
        sgd_element(u, s.weight_decay, s.step, p, g, b1, i);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- launchers

cudaError_t fill(Dt t, void* out, const Strided<1>& g, int64_t n, double value, cudaStream_t s) {
  return dispatch_all(t, [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(static_cast<T*>(out), g, n, convert<T>(value));
    return cudaGetLastError();
  });
}

cudaError_t copy(Dt to, void* out, Dt from, const void* in, const Strided<2>& g, int64_t n, cudaStream_t s) {
  return dispatch_all(to, [&](auto dtag) {
    using D = decltype(dtag);
    return dispatch_all(from, [&](auto stag) {
      using S = decltype(stag);
      copy_kernel<D, S><<<blocks_for(n), kThreads, 0, s>>>(static_cast<D*>(out), static_cast<const S*>(in), g, n);
      return cudaGetLastError();
    });
  });
}

cudaError_t random_uniform(Dt t, void* out, int64_t n, uint64_t seed, uint64_t offset, double low, double high,
                           cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    uniform_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(static_cast<T*>(out), n, seed, offset, low, high - low);
    return cudaGetLastError();
  });
}

cudaError_t random_normal(Dt t, void* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double stddev,
                          cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    normal_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(static_cast<T*>(out), n, seed, offset, mean, stddev);
    return cudaGetLastError();
  });
}

cudaError_t unary(Dt t, Unary op, void* out, const void* x, const Strided<2>& g, int64_t n, double alpha,
                  cudaStream_t s) {
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    if (vectorizable<T, 2>(g, n, {out, x})) {
      const int64_t nvec = n / Vec16<T>::kWidth;
      unary_vec_kernel<T><<<blocks_for(nvec), kThreads, 0, s>>>(op, static_cast<T*>(out), static_cast<const T*>(x),
                                                                 nvec, static_cast<Compute<T>>(alpha));
      return cudaGetLastError();
    }
    unary_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(op, static_cast<T*>(out), static_cast<const T*>(x), g, n,
                                                        static_cast<Compute<T>>(alpha));
    return cudaGetLastError();
  });
}

cudaError_t binary(Dt t, Binary op, void* out, const void* a, const void* b, const Strided<3>& g, int64_t n,
                   double alpha, cudaStream_t s) {
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    if (vectorizable<T, 3>(g, n, {out, a, b})) {
      const int64_t nvec = n / Vec16<T>::kWidth;
      binary_vec_kernel<T><<<blocks_for(nvec), kThreads, 0, s>>>(op, static_cast<T*>(out), static_cast<const T*>(a),
                                                                  static_cast<const T*>(b), nvec,
                                                                  static_cast<Compute<T>>(alpha));
      return cudaGetLastError();
    }
    binary_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(op, static_cast<T*>(out), static_cast<const T*>(a),
                                                         static_cast<const T*>(b), g, n,
                                                         static_cast<Compute<T>>(alpha));
    return cudaGetLastError();
  });
}

cudaError_t axpby(Dt t, int64_t n, double a, const void* x, double b, const void* y, void* out, cudaStream_t s) {
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    using C = Compute<T>;
    Strided<3> dense1;
    dense1.stride[0][0] = dense1.stride[1][0] = dense1.stride[2][0] = 1;
    if (vectorizable<T, 3>(dense1, n, {out, x, y})) {
      const int64_t nvec = n / Vec16<T>::kWidth;
      axpby_vec_kernel<T><<<blocks_for(nvec), kThreads, 0, s>>>(nvec, static_cast<C>(a), static_cast<const T*>(x),
                                                                 static_cast<C>(b), static_cast<const T*>(y),
                                                                 static_cast<T*>(out));
      return cudaGetLastError();
    }
    axpby_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(n, static_cast<C>(a), static_cast<const T*>(x),
                                                        static_cast<C>(b), static_cast<const T*>(y), static_cast<T*>(out));
    return cudaGetLastError();
  });
}

namespace {
constexpr int64_t kReduceChunk = 32768;
// Rows split into chunks only when there are too few rows to fill the GPU and each is long.
int64_t reduce_chunks(int64_t M, int64_t R) {
  if (M >= 1024 || R < 2 * kReduceChunk) return 1;
  return (R + kReduceChunk - 1) / kReduceChunk;
}
}  // namespace

size_t reduce_rows_scratch_bytes(int64_t M, int64_t R) {
  int64_t c = reduce_chunks(M, R);
  return c > 1 ? static_cast<size_t>(M * c) * sizeof(Acc) : 0;
}

cudaError_t reduce_rows(Dt t, Reduce op, const void* in, void* out, int64_t M, int64_t R, void* scratch,
                        cudaStream_t s) {
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    const int64_t chunks = reduce_chunks(M, R);
    if (chunks > 1 && scratch && M < 65536) {
      Acc* partial = static_cast<Acc*>(scratch);
      reduce_rows_partial<T><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(M)), kThreads, 0, s>>>(
          op, static_cast<const T*>(in), partial, M, R, kReduceChunk);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
      reduce_rows_final<T><<<blocks_for(M), kThreads, 0, s>>>(op, partial, chunks, out, M, R);
    } else if (R <= 64) {
      reduce_rows_thread<T><<<blocks_for(M), kThreads, 0, s>>>(op, static_cast<const T*>(in), out, M, R);
    } else {
      int grid = static_cast<int>(M < (1 << 20) ? M : (1 << 20));
      reduce_rows_block<T><<<grid, kThreads, 0, s>>>(op, static_cast<const T*>(in), out, M, R);
    }
    return cudaGetLastError();
  });
}

cudaError_t layernorm_forward(Dt t, const void* x, const void* gamma, const void* beta, void* y, void* mean,
                              void* invstd, int64_t M, int64_t D, double eps, cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    int grid = static_cast<int>(M < (1 << 20) ? M : (1 << 20));
    layernorm_forward_kernel<T><<<grid, kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(gamma), static_cast<const T*>(beta), static_cast<T*>(y),
        static_cast<T*>(mean), static_cast<T*>(invstd), M, D, eps);
    return cudaGetLastError();
  });
}

cudaError_t softmax_rows_forward(Dt t, const void* x, void* y, int64_t M, int64_t D, bool log, cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    const int grid = static_cast<int>(M < (1 << 20) ? M : (1 << 20));
    softmax_rows_forward_kernel<T><<<grid, kThreads, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(y), M, D, log);
    return cudaGetLastError();
  });
}

cudaError_t softmax_rows_backward(Dt t, const void* y, const void* dy, void* dx, int64_t M, int64_t D, bool log,
                                  cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    const int grid = static_cast<int>(M < (1 << 20) ? M : (1 << 20));
    softmax_rows_backward_kernel<T><<<grid, kThreads, 0, s>>>(static_cast<const T*>(y), static_cast<const T*>(dy),
                                                              static_cast<T*>(dx), M, D, log);
    return cudaGetLastError();
  });
}

cudaError_t layernorm_backward(Dt t, const void* x, const void* dy, const void* gamma, const void* mean,
                               const void* invstd, void* dx, void* dgamma, void* dbeta, int64_t M, int64_t D,
                               cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    int grid = static_cast<int>(M < (1 << 20) ? M : (1 << 20));
    layernorm_backward_dx_kernel<T><<<grid, kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<const T*>(gamma),
        static_cast<const T*>(mean), static_cast<const T*>(invstd), static_cast<T*>(dx), M, D);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || (!dgamma && !dbeta)) return e;
    layernorm_backward_params_kernel<T><<<blocks_for(D), kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<const T*>(mean),
        static_cast<const T*>(invstd), static_cast<T*>(dgamma), static_cast<T*>(dbeta), M, D);
    return cudaGetLastError();
  });
}

cudaError_t index_select(Dt t, const void* x, const int64_t* index, void* out, int64_t outer, int64_t nx, int64_t nsel,
                         int64_t inner, int64_t* bad, cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    index_select_kernel<T><<<blocks_for(outer * nsel * inner), kThreads, 0, s>>>(
        static_cast<const T*>(x), index, static_cast<T*>(out), outer, nx, nsel, inner, bad);
    return cudaGetLastError();
  });
}

cudaError_t index_add(Dt t, void* out, const int64_t* index, const void* src, int64_t outer, int64_t nout,
                      int64_t nsrc, int64_t inner, int64_t* bad, cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    index_add_kernel<T><<<blocks_for(outer * nsrc * inner), kThreads, 0, s>>>(
        static_cast<T*>(out), index, static_cast<const T*>(src), outer, nout, nsrc, inner, bad);
    return cudaGetLastError();
  });
}

cudaError_t gather_rows(Dt t, const void* x, const int64_t* index, void* out, int64_t M, int64_t C, int64_t* bad,
                        cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    gather_rows_kernel<T><<<blocks_for(M), kThreads, 0, s>>>(static_cast<const T*>(x), index, static_cast<T*>(out), M,
                                                              C, bad);
    return cudaGetLastError();
  });
}

cudaError_t scatter_rows(Dt t, const void* src, const int64_t* index, void* out, int64_t M, int64_t C, int64_t* bad,
                         cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    scatter_rows_kernel<T><<<blocks_for(M), kThreads, 0, s>>>(static_cast<const T*>(src), index,
                                                               static_cast<T*>(out), M, C, bad);
    return cudaGetLastError();
  });
}

cudaError_t optimizer_update(Dt t, const Optim& u, void* p, const void* g, void* buf1, void* buf2, int64_t n,
                             cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    if (!u.adamw) {
      sgd_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(u, static_cast<T*>(p), static_cast<const T*>(g),
                                                        static_cast<T*>(buf1), n);
    } else {
      double bc1 = 1 - std::pow(u.beta1, static_cast<double>(u.step));
      double bc2 = 1 - std::pow(u.beta2, static_cast<double>(u.step));
      adamw_kernel<T><<<blocks_for(n), kThreads, 0, s>>>(u, static_cast<T*>(p), static_cast<const T*>(g),
                                                          static_cast<T*>(buf1), static_cast<T*>(buf2), n, bc1, bc2);
    }
    return cudaGetLastError();
  });
}

cudaError_t optimizer_update_many(Dt t, const Optim& u, OptimSlots& slots, cudaStream_t s) {
  if (slots.count <= 0) return cudaSuccess;
  int64_t largest = 0;
  for (int k = 0; k < slots.count; ++k) {
    OptimSlot& o = slots.s[k];
    largest = o.n > largest ? o.n : largest;
    o.bc1 = 1 - std::pow(u.beta1, static_cast<double>(o.step));
    o.bc2 = 1 - std::pow(u.beta2, static_cast<double>(o.step));
  }
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    optimizer_many_kernel<T><<<blocks_for(largest), kThreads, 0, s>>>(u, slots);
    return cudaGetLastError();
  });
}

// ---------------------------------------------------------------- batch norm (mixed precision)
// x, y, dy, dx: [N, C, HW] of T (bfloat16 under autocast); statistics and parameters float32.
// Per-channel sums go through double accumulators acc[2C] (zeroed by the caller) with one atomicAdd
// per block; each block reduces one slice of one channel's N*HW values.

namespace {

struct BnGrid {
  dim3 grid;
  int64_t chunk;  // values of one channel per block
};

BnGrid bn_grid(int64_t N, int64_t C, int64_t HW) {
  const int64_t M = N * HW;
  int64_t splits = (4 * 132 + C - 1) / C;               // about four blocks per SM on an H100/H200
  const int64_t max_splits = (M + 4 * kThreads - 1) / (4 * kThreads);  // at least ~4 values per thread
  if (splits > max_splits) splits = max_splits;
  if (splits < 1) splits = 1;
  if (splits > 65535) splits = 65535;
  const int64_t chunk = (M + splits - 1) / splits;
  return {dim3(static_cast<unsigned>(C), static_cast<unsigned>(splits)), chunk};
}

// Two sums over this block's slice of channel blockIdx.x, each added to acc[c] and acc[C + c].
// With Grad = false: sum x and sum x^2. With Grad = true: sum dy and sum dy * (x - mean).
// With a ReLU after the batch norm (mask != null: the forward's k0, k1 per channel), dy counts only
// where the forward output x * k0 + k1 was positive.
template <typename T, bool Grad>
__global__ void bn_sums_kernel(const T* x, const T* dy, const float* mean, const float* mask, double* acc, int64_t C,
                               int64_t HW, int64_t M, int64_t chunk) {
  __shared__ double sh[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t begin = blockIdx.y * chunk, end = begin + chunk < M ? begin + chunk : M;
  const double mu = Grad ? static_cast<double>(mean[c]) : 0.0;
  const float m0 = mask ? mask[c] : 0.f, m1 = mask ? mask[C + c] : 0.f;
  double s1 = 0, s2 = 0;
  for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
    const int64_t n = e / HW, r = e - n * HW;
    const int64_t at = (n * C + c) * HW + r;
    const double v = convert<double>(x[at]);
    if (Grad) {
      const double g = (mask && !(fmaf(static_cast<float>(v), m0, m1) > 0.f)) ? 0.0 : convert<double>(dy[at]);
      s1 += g;
      s2 += g * (v - mu);
    } else {
      s1 += v;
      s2 += v * v;
    }
  }
  s1 = block_sum(s1, sh);
  s2 = block_sum(s2, sh);
  if (threadIdx.x == 0) {
    atomicAdd(&acc[c], s1);
    atomicAdd(&acc[C + c], s2);
  }
}

// Channels-last x [N*HW, C]: a (32 channels x 8 rows) block walks its share of the rows,
// coalesced along the channels; the 8 row-partials are combined in shared memory.
template <typename T, bool Grad>
__global__ void bn_sums_nhwc_kernel(const T* x, const T* dy, const float* mean, const float* mask, double* acc,
                                    int64_t C, int64_t M, int64_t chunk) {
  __shared__ double sh1[8][33], sh2[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t begin = blockIdx.y * chunk, end = begin + chunk < M ? begin + chunk : M;
  double s1 = 0, s2 = 0;
  if (c < C) {
    const double mu = Grad ? static_cast<double>(mean[c]) : 0.0;
    const float m0 = mask ? mask[c] : 0.f, m1 = mask ? mask[C + c] : 0.f;
    for (int64_t r = begin + threadIdx.y; r < end; r += 8) {
      const double v = convert<double>(x[r * C + c]);
      if (Grad) {
        const double g =
            (mask && !(fmaf(static_cast<float>(v), m0, m1) > 0.f)) ? 0.0 : convert<double>(dy[r * C + c]);
        s1 += g;
        s2 += g * (v - mu);
      } else {
        s1 += v;
        s2 += v * v;
      }
    }
  }
  sh1[threadIdx.y][threadIdx.x] = s1;
  sh2[threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int k = 1; k < 8; ++k) s1 += sh1[k][threadIdx.x], s2 += sh2[k][threadIdx.x];
    atomicAdd(&acc[c], s1);
    atomicAdd(&acc[C + c], s2);
  }
}

// Channels-last with C a multiple of the vector width: 16-byte loads of W consecutive channels. A block's
// threads take `tpr` vectors of a row side by side (coalesced) and blockDim.x / tpr rows at a time, two rows
// in flight per thread; the row-partials of each channel are combined in shared memory, then one atomicAdd
// per channel and block. (The one-channel-per-thread kernel above kept a single 2-byte load in flight.)
template <typename T, bool Grad>
__global__ void bn_sums_nhwc_vec_kernel(const T* x, const T* dy, const float* mean, const float* mask, double* acc,
                                        int64_t C, int64_t M, int64_t chunk, int tpr) {
  using V = Vec16<T>;
  constexpr int W = V::kWidth;
  __shared__ double sh1[kThreads * W], sh2[kThreads * W];
  const int64_t nv = C / W;
  const int lane = threadIdx.x % tpr, r0 = threadIdx.x / tpr, rstep = blockDim.x / tpr;
  const int64_t v = blockIdx.x * static_cast<int64_t>(tpr) + lane;
  const int64_t begin = blockIdx.y * chunk, end = begin + chunk < M ? begin + chunk : M;
  double s1[W], s2[W];
  float mu[W], m0[W], m1[W];
#pragma unroll
  for (int k = 0; k < W; ++k) s1[k] = s2[k] = 0, mu[k] = m0[k] = 0, m1[k] = 0;
  const bool active = v < nv && r0 < rstep;
  if (active) {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const int64_t c = v * W + k;
      if (Grad) mu[k] = mean[c];
      if (mask) m0[k] = mask[c], m1[k] = mask[C + c];
    }
    const V* xv = reinterpret_cast<const V*>(x);
    const V* gv = reinterpret_cast<const V*>(dy);
    auto add = [&](const V& a, const V& g) {
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const double val = convert<double>(a.v[k]);
        if (Grad) {
          const double d = (mask && !(fmaf(static_cast<float>(val), m0[k], m1[k]) > 0.f)) ? 0.0 : convert<double>(g.v[k]);
          s1[k] += d;
          s2[k] += d * (val - static_cast<double>(mu[k]));
        } else {
          s1[k] += val;
          s2[k] += val * val;
        }
      }
    };
    int64_t r = begin + r0;
    for (; r + rstep < end; r += 2 * static_cast<int64_t>(rstep)) {
      const V a0 = xv[r * nv + v], a1 = xv[(r + rstep) * nv + v];
      V g0 = a0, g1 = a1;
      if (Grad) g0 = gv[r * nv + v], g1 = gv[(r + rstep) * nv + v];
      add(a0, g0);
      add(a1, g1);
    }
    if (r < end) {
      const V a0 = xv[r * nv + v];
      V g0 = a0;
      if (Grad) g0 = gv[r * nv + v];
      add(a0, g0);
    }
  }
#pragma unroll
  for (int k = 0; k < W; ++k) sh1[threadIdx.x * W + k] = s1[k], sh2[threadIdx.x * W + k] = s2[k];
  __syncthreads();
  if (active && r0 == 0) {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      double t1 = s1[k], t2 = s2[k];
      for (int j = 1; j < rstep; ++j) t1 += sh1[(j * tpr + lane) * W + k], t2 += sh2[(j * tpr + lane) * W + k];
      atomicAdd(&acc[v * W + k], t1);
      atomicAdd(&acc[C + v * W + k], t2);
    }
  }
}

// The affine map of the output pass, y = x * k0 + k1 (k0 = gamma invstd, k1 = beta - mean k0), from
// the saved float32 statistics: the backward recomputes the same floats for its ReLU mask.
__device__ inline void bn_affine(float gamma, float beta, float mean, float invstd, float& k0, float& k1) {
  const double d0 = static_cast<double>(gamma) * static_cast<double>(invstd);
  k0 = static_cast<float>(d0);
  k1 = static_cast<float>(static_cast<double>(beta) - static_cast<double>(mean) * static_cast<double>(k0));
}

// Per channel: mean, invstd, and the output pass's k0, k1, so that pass reads two floats per channel.
__global__ void bn_finalize_stats_kernel(const double* acc, int64_t C, int64_t M, double eps, const float* gamma,
                                         const float* beta, float* mean, float* invstd, float* coef) {
  GRID_STRIDE(c, C) {
    const double mu = acc[c] / static_cast<double>(M);
    double var = acc[C + c] / static_cast<double>(M) - mu * mu;
    if (var < 0) var = 0;
    mean[c] = static_cast<float>(mu);
    invstd[c] = static_cast<float>(1.0 / sqrt(var + eps));
    bn_affine(gamma[c], beta[c], mean[c], invstd[c], coef[c], coef[C + c]);
  }
}

// The forward's k0, k1 again (for the backward's ReLU mask).
__global__ void bn_mask_coef_kernel(int64_t C, const float* gamma, const float* beta, const float* mean,
                                    const float* invstd, float* mask) {
  GRID_STRIDE(c, C) bn_affine(gamma[c], beta[c], mean[c], invstd[c], mask[c], mask[C + c]);
}

// Inference: the same map from the running statistics.
__global__ void bn_infer_coef_kernel(int64_t C, double eps, const float* gamma, const float* beta, const float* mean,
                                     const float* var, float* coef) {
  GRID_STRIDE(c, C) {
    const double k0 = static_cast<double>(gamma[c]) / sqrt(static_cast<double>(var[c]) + eps);
    coef[c] = static_cast<float>(k0);
    coef[C + c] = static_cast<float>(static_cast<double>(beta[c]) - static_cast<double>(mean[c]) * k0);
  }
}

// Backward per channel: dgamma = invstd sum dy (x - mean), dbeta = sum dy, and
// dx = k0 dy + k1 x + k2 with k0 = gamma invstd, k1 = -k0 invstd^2 sum(dy (x - mean)) / M,
// k2 = -k0 sum(dy) / M - k1 mean.
__global__ void bn_backward_coef_kernel(const double* acc, const float* gamma, const float* mean, const float* invstd,
                                        int64_t C, int64_t M, float* dgamma, float* dbeta, float* coef) {
  GRID_STRIDE(c, C) {
    const double is = invstd[c], sdy = acc[c], sdyx = acc[C + c];
    dbeta[c] = static_cast<float>(sdy);
    dgamma[c] = static_cast<float>(sdyx * is);
    const double k0 = static_cast<double>(gamma[c]) * is;
    const double k1 = -k0 * is * is * sdyx / static_cast<double>(M);
    coef[c] = static_cast<float>(k0);
    coef[C + c] = static_cast<float>(k1);
    coef[2 * C + c] = static_cast<float>(-k0 * sdy / static_cast<double>(M) - k1 * static_cast<double>(mean[c]));
  }
}

template <typename T, bool Nhwc>
__device__ inline int64_t bn_channel(int64_t i, int64_t C, int64_t HW) {
  return Nhwc ? i % C : (i / HW) % C;
}

// y = x * k0[c] + k1[c], then max(0, y) with Relu; with a residual r (Relu), max(0, y + r), a NaN sum
// giving 0 as in the add_relu binary op.
template <typename T, bool Relu>
__device__ inline T bn_out(float v, const T* r, int64_t i) {
  if (r) {
    v += convert<float>(r[i]);
    return convert<T>(v > 0.f ? v : 0.f);
  }
  return convert<T>(Relu ? (v > 0.f ? v : 0.f) : v);
}

template <typename T, bool Nhwc, bool Relu>
__global__ void bn_apply_kernel(const T* x, const T* r, T* y, int64_t C, int64_t HW, int64_t n, const float* coef) {
  GRID_STRIDE(i, n) {
    const int64_t c = bn_channel<T, Nhwc>(i, C, HW);
    y[i] = bn_out<T, Relu>(fmaf(convert<float>(x[i]), coef[c], coef[C + c]), r, i);
  }
}

// dx = k0[c] dy + k1[c] x + k2[c], with dy masked by the forward ReLU (mask: its k0, k1) when given
template <typename T, bool Nhwc>
__global__ void bn_dx_kernel(const T* x, const T* dy, T* dx, int64_t C, int64_t HW, int64_t n, const float* coef,
                             const float* mask) {
  GRID_STRIDE(i, n) {
    const int64_t c = bn_channel<T, Nhwc>(i, C, HW);
    const float xv = convert<float>(x[i]);
    const float g = (mask && !(fmaf(xv, mask[c], mask[C + c]) > 0.f)) ? 0.f : convert<float>(dy[i]);
    dx[i] = convert<T>(coef[c] * g + coef[C + c] * xv + coef[2 * C + c]);
  }
}

// First channel of 16-byte vector i of a channels-last tensor with nv vectors per row: (i * W) % C with
// C = nv * W, by a 32-bit division when the operands fit (a 64-bit one costs dozens of instructions).
__device__ inline int64_t vec_channel0(int64_t i, int64_t nv, int W) {
  const int64_t v = (i <= 0xffffffffLL && nv <= 0xffffffffLL)
                        ? static_cast<int64_t>(static_cast<uint32_t>(i) % static_cast<uint32_t>(nv))
                        : i % nv;
  return v * W;
}

// Channels-last with C a multiple of the vector width: 16-byte loads of consecutive channels.
template <typename T, bool Relu, bool Res>
__global__ void bn_apply_nhwc_vec_kernel(const T* x, const T* res, T* y, int64_t C, int64_t nvec, const float* coef) {
  using V = Vec16<T>;
  GRID_STRIDE(i, nvec) {
    const int64_t c0 = vec_channel0(i, C / V::kWidth, V::kWidth);
    V a = reinterpret_cast<const V*>(x)[i], r, b;
    if (Res) b = reinterpret_cast<const V*>(res)[i];
#pragma unroll
    for (int k = 0; k < V::kWidth; ++k) {
      float v = fmaf(convert<float>(a.v[k]), coef[c0 + k], coef[C + c0 + k]);
      if (Res) v += convert<float>(b.v[k]);
      r.v[k] = convert<T>((Relu || Res) ? (v > 0.f ? v : 0.f) : v);
    }
    reinterpret_cast<V*>(y)[i] = r;
  }
}

template <typename T>
__global__ void bn_dx_nhwc_vec_kernel(const T* x, const T* dy, T* dx, int64_t C, int64_t nvec, const float* coef,
                                      const float* mask) {
  using V = Vec16<T>;
  GRID_STRIDE(i, nvec) {
    const int64_t c0 = vec_channel0(i, C / V::kWidth, V::kWidth);
    V vx = reinterpret_cast<const V*>(x)[i], vdy = reinterpret_cast<const V*>(dy)[i], r;
#pragma unroll
    for (int k = 0; k < V::kWidth; ++k) {
      const int64_t c = c0 + k;
      const float xv = convert<float>(vx.v[k]);
      const float g = (mask && !(fmaf(xv, mask[c], mask[C + c]) > 0.f)) ? 0.f : convert<float>(vdy.v[k]);
      r.v[k] = convert<T>(coef[c] * g + coef[C + c] * xv + coef[2 * C + c]);
    }
    reinterpret_cast<V*>(dx)[i] = r;
  }
}

bool bn_vec(bool nhwc, int64_t C, int width, std::initializer_list<const void*> ptrs) {
  if (!nhwc || C % width != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// The per-channel sums of x (Grad = false) or of dy and dy * (x - mean) (Grad = true) into acc.
template <typename T, bool Grad>
cudaError_t bn_sums(const T* x, const T* dy, const float* mean, const float* mask, double* acc, int64_t N, int64_t C,
                    int64_t HW, bool nhwc, cudaStream_t s) {
  const int64_t M = N * HW;
  constexpr int W = Vec16<T>::kWidth;
  if (nhwc && C % W == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
      (dy == nullptr || reinterpret_cast<uintptr_t>(dy) % 16 == 0)) {
    const int64_t nv = C / W;
    const int tpr = static_cast<int>(nv < kThreads ? nv : kThreads);
    const int64_t rstep = kThreads / tpr, tiles = (nv + tpr - 1) / tpr;
    int64_t splits = (4 * 132 + tiles - 1) / tiles;          // about four blocks per SM
    const int64_t max_splits = (M + 8 * rstep - 1) / (8 * rstep);  // at least ~8 rows per thread
    splits = splits > max_splits ? max_splits : splits;
    splits = splits < 1 ? 1 : (splits > 65535 ? 65535 : splits);
    const int64_t chunk = (M + splits - 1) / splits;
    bn_sums_nhwc_vec_kernel<T, Grad><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits)), kThreads,
                                       0, s>>>(x, dy, mean, mask, acc, C, M, chunk, tpr);
  } else if (nhwc) {
    const int64_t tiles = (C + 31) / 32;
    int64_t splits = (8 * 132 + tiles - 1) / tiles;
    const int64_t max_splits = (M + 63) / 64;  // at least 8 rows per thread row
    splits = splits > max_splits ? max_splits : splits;
    splits = splits < 1 ? 1 : (splits > 65535 ? 65535 : splits);
    const int64_t chunk = (M + splits - 1) / splits;
    bn_sums_nhwc_kernel<T, Grad><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits)), dim3(32, 8), 0,
                                   s>>>(x, dy, mean, mask, acc, C, M, chunk);
  } else {
    const BnGrid bg = bn_grid(N, C, HW);
    bn_sums_kernel<T, Grad><<<bg.grid, kThreads, 0, s>>>(x, dy, mean, mask, acc, C, HW, M, bg.chunk);
  }
  return cudaGetLastError();
}

// The output pass y = x k0 + k1 (then max(0, y) with Relu, max(0, y + r) with a residual r) in the
// layout's kernel.
template <typename T, bool Relu>
void bn_apply_layout(const T* x, const T* r, T* y, int64_t N, int64_t C, int64_t HW, bool nhwc, const float* coef,
                     cudaStream_t s) {
  const int64_t n = N * C * HW;
  const int64_t nv = n / Vec16<T>::kWidth;
  if (bn_vec(nhwc, C, Vec16<T>::kWidth, {x, y, r ? r : x})) {
    if (r)
      bn_apply_nhwc_vec_kernel<T, Relu, true><<<blocks_for(nv), kThreads, 0, s>>>(x, r, y, C, nv, coef);
    else
      bn_apply_nhwc_vec_kernel<T, Relu, false><<<blocks_for(nv), kThreads, 0, s>>>(x, r, y, C, nv, coef);
  } else if (nhwc) {
    bn_apply_kernel<T, true, Relu><<<blocks_for(n), kThreads, 0, s>>>(x, r, y, C, HW, n, coef);
  } else {
    bn_apply_kernel<T, false, Relu><<<blocks_for(n), kThreads, 0, s>>>(x, r, y, C, HW, n, coef);
  }
}

template <typename T>
cudaError_t bn_apply(const T* x, const T* r, T* y, int64_t N, int64_t C, int64_t HW, bool nhwc, bool relu,
                     const float* coef, cudaStream_t s) {
  if (relu || r)
    bn_apply_layout<T, true>(x, r, y, N, C, HW, nhwc, coef, s);
  else
    bn_apply_layout<T, false>(x, r, y, N, C, HW, nhwc, coef, s);
  return cudaGetLastError();
}

// acc (5C doubles): 2C double sums, then floats: the backward's k0, k1, k2 (3C), the mask's k0, k1 (2C).
float* bn_coef(double* acc, int64_t C) { return reinterpret_cast<float*>(acc + 2 * C); }
float* bn_mask(double* acc, int64_t C) { return bn_coef(acc, C) + 3 * C; }

}  // namespace

cudaError_t bn_forward_train(Dt t, const void* x, const void* residual, void* y, int64_t N, int64_t C, int64_t HW,
                             bool nhwc, bool relu, const float* gamma, const float* beta, float* mean, float* invstd,
                             double eps, double* acc, cudaStream_t s) {
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    cudaError_t e = bn_sums<T, false>(static_cast<const T*>(x), nullptr, nullptr, nullptr, acc, N, C, HW, nhwc, s);
    if (e != cudaSuccess) return e;
    bn_finalize_stats_kernel<<<blocks_for(C), kThreads, 0, s>>>(acc, C, N * HW, eps, gamma, beta, mean, invstd,
                                                                bn_coef(acc, C));
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    return bn_apply<T>(static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<T*>(y), N, C, HW, nhwc,
                       relu, bn_coef(acc, C), s);
  });
}

namespace {
template <typename T>
__global__ void bn_update_running_kernel(T* rm, T* rv, const T* mean, const T* invstd, int64_t C, double momentum,
                                         double eps, double unbias) {
  GRID_STRIDE(c, C) {
    const double is = static_cast<double>(invstd[c]);
    const double var = (1.0 / (is * is) - eps) * unbias;
    rm[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rm[c]) + momentum * static_cast<double>(mean[c]));
    rv[c] = static_cast<T>((1.0 - momentum) * static_cast<double>(rv[c]) + momentum * var);
  }
}

__global__ void increment_kernel(int64_t* counter) { *counter += 1; }
}  // namespace

// ---------------------------------------------------------------- max pooling backward, channels-last
// The reference's rule: each output's gradient goes to the first strict maximum of its window in
// row-major window order. Pass 1 stores that position (0 .. KH*KW-1, or 255 for an empty window) per
// output; pass 2 gathers, for each input, the gradients of the outputs whose window covers it and
// chose it, in output order: no atomics, no zero fill, deterministic. x, dx [N, H, W, C] and
// dy [N, P, Q, C] in memory; 32-bit indices (the caller checks the sizes).
namespace {
template <typename T>
__global__ void maxpool_argmax_nhwc_kernel(const T* x, uint8_t* arg, int N, int H, int W, int C, int P, int Q,
                                           PoolGeom g) {
  const int64_t total = static_cast<int64_t>(N) * P * Q * C;
  GRID_STRIDE(o, total) {
    const int c = static_cast<int>(o % C);
    int64_t r = o / C;
    const int q = static_cast<int>(r % Q);
    r /= Q;
    const int pp = static_cast<int>(r % P), n = static_cast<int>(r / P);
    const int h0 = pp * g.sh - g.ph, w0 = q * g.sw - g.pw;
    int best = 255;
    Compute<T> bv = 0;
    for (int kh = 0; kh < g.kh; ++kh) {
      const int h = h0 + kh;
      if (h < 0 || h >= H) continue;
      for (int kw = 0; kw < g.kw; ++kw) {
        const int w = w0 + kw;
        if (w < 0 || w >= W) continue;
        const Compute<T> v = convert<Compute<T>>(x[((static_cast<int64_t>(n) * H + h) * W + w) * C + c]);
        if (best == 255 || v > bv) bv = v, best = kh * g.kw + kw;
      }
    }
    arg[o] = static_cast<uint8_t>(best);
  }
}

template <typename T>
__global__ void maxpool_gather_nhwc_kernel(const T* dy, const uint8_t* arg, T* dx, int N, int H, int W, int C, int P,
                                           int Q, PoolGeom g) {
  const int64_t total = static_cast<int64_t>(N) * H * W * C;
  GRID_STRIDE(i, total) {
    const int c = static_cast<int>(i % C);
    int64_t r = i / C;
    const int w = static_cast<int>(r % W);
    r /= W;
    const int h = static_cast<int>(r % H), n = static_cast<int>(r / H);
    // Outputs pp with pp*sh - ph <= h < pp*sh - ph + kh, likewise q.
    const int hp = h + g.ph, wp = w + g.pw;
    const int p_lo = hp >= g.kh ? (hp - g.kh) / g.sh + 1 : 0, p_hi = min(P - 1, hp / g.sh);
    const int q_lo = wp >= g.kw ? (wp - g.kw) / g.sw + 1 : 0, q_hi = min(Q - 1, wp / g.sw);
    Compute<T> acc = 0;
    for (int pp = p_lo; pp <= p_hi; ++pp)
      for (int q = q_lo; q <= q_hi; ++q) {
        const int64_t o = ((static_cast<int64_t>(n) * P + pp) * Q + q) * C + c;
        const int a = arg[o];
        if (a != 255 && pp * g.sh - g.ph + a / g.kw == h && q * g.sw - g.pw + a % g.kw == w)
          acc += convert<Compute<T>>(dy[o]);
      }
    dx[i] = convert<T>(acc);
  }
}
}  // namespace

cudaError_t maxpool_backward_nhwc(Dt t, const void* x, const void* dy, void* dx, uint8_t* scratch, int N, int H,
                                  int W, int C, int P, int Q, PoolGeom g, cudaStream_t s) {
  if (g.kh * g.kw > 255) return cudaErrorInvalidValue;
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    const int64_t nout = static_cast<int64_t>(N) * P * Q * C, nin = static_cast<int64_t>(N) * H * W * C;
    maxpool_argmax_nhwc_kernel<T><<<blocks_for(nout), kThreads, 0, s>>>(static_cast<const T*>(x), scratch, N, H, W,
                                                                          C, P, Q, g);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    maxpool_gather_nhwc_kernel<T><<<blocks_for(nin), kThreads, 0, s>>>(static_cast<const T*>(dy), scratch,
                                                                         static_cast<T*>(dx), N, H, W, C, P, Q, g);
    return cudaGetLastError();
  });
}

cudaError_t bn_update_running(Dt t, void* running_mean, void* running_var, const void* save_mean,
                              const void* save_invstd, int64_t C, double momentum, double eps, int64_t M,
                              cudaStream_t s) {
  return dispatch_float(t, [&](auto tag) {
    using T = decltype(tag);
    bn_update_running_kernel<T><<<blocks_for(C), kThreads, 0, s>>>(
        static_cast<T*>(running_mean), static_cast<T*>(running_var), static_cast<const T*>(save_mean),
        static_cast<const T*>(save_invstd), C, momentum, eps, static_cast<double>(M) / static_cast<double>(M - 1));
    return cudaGetLastError();
  });
}

cudaError_t increment(int64_t* counter, cudaStream_t s) {
  increment_kernel<<<1, 1, 0, s>>>(counter);
  return cudaGetLastError();
}

cudaError_t bn_forward_infer(Dt t, const void* x, void* y, int64_t N, int64_t C, int64_t HW, bool nhwc,
                             const float* gamma, const float* beta, const float* mean, const float* var, double eps,
                             double* acc, cudaStream_t s) {
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    bn_infer_coef_kernel<<<blocks_for(C), kThreads, 0, s>>>(C, eps, gamma, beta, mean, var, bn_coef(acc, C));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    return bn_apply<T>(static_cast<const T*>(x), nullptr, static_cast<T*>(y), N, C, HW, nhwc, false, bn_coef(acc, C),
                       s);
  });
}

cudaError_t bn_backward(Dt t, const void* x, const void* dy, void* dx, int64_t N, int64_t C, int64_t HW, bool nhwc,
                        const float* gamma, const float* relu_beta, const float* mean, const float* invstd,
                        float* dgamma, float* dbeta, double* acc, cudaStream_t s) {
  return dispatch_compute(t, [&](auto tag) {
    using T = decltype(tag);
    const T *xp = static_cast<const T*>(x), *dyp = static_cast<const T*>(dy);
    const float* mask = nullptr;
    if (relu_beta) {  // the forward's k0, k1 recomputed: dy counts where x * k0 + k1 > 0
      bn_mask_coef_kernel<<<blocks_for(C), kThreads, 0, s>>>(C, gamma, relu_beta, mean, invstd, bn_mask(acc, C));
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
      mask = bn_mask(acc, C);
    }
    cudaError_t e = bn_sums<T, true>(xp, dyp, mean, mask, acc, N, C, HW, nhwc, s);
    if (e != cudaSuccess) return e;
    float* coef = bn_coef(acc, C);
    bn_backward_coef_kernel<<<blocks_for(C), kThreads, 0, s>>>(acc, gamma, mean, invstd, C, N * HW, dgamma, dbeta,
                                                               coef);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
    const int64_t n = N * C * HW;
    if (bn_vec(nhwc, C, Vec16<T>::kWidth, {x, dy, dx}))
      bn_dx_nhwc_vec_kernel<T><<<blocks_for(n / Vec16<T>::kWidth), kThreads, 0, s>>>(
          xp, dyp, static_cast<T*>(dx), C, n / Vec16<T>::kWidth, coef, mask);
    else if (nhwc)
      bn_dx_kernel<T, true><<<blocks_for(n), kThreads, 0, s>>>(xp, dyp, static_cast<T*>(dx), C, HW, n, coef, mask);
    else
      bn_dx_kernel<T, false><<<blocks_for(n), kThreads, 0, s>>>(xp, dyp, static_cast<T*>(dx), C, HW, n, coef, mask);
    return cudaGetLastError();
  });
}

}  // namespace hpdl::cuda::kern
