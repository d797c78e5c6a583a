// The hand-written CUDA kernels of the backend, behind a plain-data interface:
// raw pointers, sizes and small structs, no hpdl headers, so kernels.cu is
// compiled by nvcc without the library's C++20 headers. Each launcher queues
// its kernel on the given stream and returns cudaGetLastError(); the caller
// (backend.cpp) turns a failure into hpdl::Error naming the kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace hpdl::cuda::kern {

constexpr int kMaxDims = 6;

// Same order as hpdl::DType, UnaryOp, BinaryOp, ReduceOp (backend.cpp static_asserts it).
enum class Dt : int { f32, f64, bf16, i64, i32, u8, f16 };
enum class Unary : int {
  neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, leaky_relu, gelu, abs, square, pow_scalar, reciprocal,
  add_scalar, mul_scalar, sign, sin, cos, erf, count_
};
enum class Binary : int { add, sub, mul, div, pow, maximum, minimum, gt, ge, lt, le, eq, relu_grad, leaky_relu_grad, add_relu,
                         count_ };
enum class Reduce : int { sum, mean, max, min, argmax, sum_square, count_ };

// K operands walked over one (coalesced) shape of at most kMaxDims dims; strides in elements.
template <int K>
struct Strided {
  int ndim = 1;
  int64_t shape[kMaxDims] = {1};
  int64_t stride[K][kMaxDims] = {};
};

cudaError_t fill(Dt t, void* out, const Strided<1>& g, int64_t n, double value, cudaStream_t s);
// out (dtype to) <- in (dtype from), elementwise over g (operand 0 = out, 1 = in).
cudaError_t copy(Dt to, void* out, Dt from, const void* in, const Strided<2>& g, int64_t n, cudaStream_t s);
// Contiguous outputs; the counter-based SplitMix64 of hpdl/core/random.h, element i from (seed, offset + i).
cudaError_t random_uniform(Dt t, void* out, int64_t n, uint64_t seed, uint64_t offset, double low, double high,
                           cudaStream_t s);
cudaError_t random_normal(Dt t, void* out, int64_t n, uint64_t seed, uint64_t offset, double mean, double stddev,
                          cudaStream_t s);

// Operand 0 = out, 1 = x (unary) or a, 2 = b (binary); broadcast operands have stride 0.
cudaError_t unary(Dt t, Unary op, void* out, const void* x, const Strided<2>& g, int64_t n, double alpha,
                  cudaStream_t s);
cudaError_t binary(Dt t, Binary op, void* out, const void* a, const void* b, const Strided<3>& g, int64_t n,
                   double alpha, cudaStream_t s);
cudaError_t axpby(Dt t, int64_t n, double a, const void* x, double b, const void* y, void* out, cudaStream_t s);

// in: contiguous [M, R]; out[m] = op(in[m, :]) (int64 for argmax). Accumulates in double.
// Few long rows are split into chunks reduced in two passes through `scratch` (device memory of
// reduce_rows_scratch_bytes(M, R) bytes; may be null when that is 0).
size_t reduce_rows_scratch_bytes(int64_t M, int64_t R);
cudaError_t reduce_rows(Dt t, Reduce op, const void* in, void* out, int64_t M, int64_t R, void* scratch,
                        cudaStream_t s);

// x, y, dy, dx: contiguous [M, D]; mean, invstd: [M]; gamma, beta, dgamma, dbeta: [D] (dgamma/dbeta may be null).
cudaError_t layernorm_forward(Dt t, const void* x, const void* gamma, const void* beta, void* y, void* mean,
                              void* invstd, int64_t M, int64_t D, double eps, cudaStream_t s);
cudaError_t layernorm_backward(Dt t, const void* x, const void* dy, const void* gamma, const void* mean,
                               const void* invstd, void* dx, void* dgamma, void* dbeta, int64_t M, int64_t D,
                               cudaStream_t s);

// Softmax or log_softmax over the rows of contiguous [M, D] (float32 or float64; sums in double).
cudaError_t softmax_rows_forward(Dt t, const void* x, void* y, int64_t M, int64_t D, bool log, cudaStream_t s);
cudaError_t softmax_rows_backward(Dt t, const void* y, const void* dy, void* dx, int64_t M, int64_t D, bool log,
                                  cudaStream_t s);

// Indexing over x viewed as [outer, n, inner]. `bad` (device int64, preset to -1 by the caller) receives
// the position of an out-of-range index, if any.
cudaError_t index_select(Dt t, const void* x, const int64_t* index, void* out, int64_t outer, int64_t nx,
                         int64_t nsel, int64_t inner, int64_t* bad, cudaStream_t s);
cudaError_t index_add(Dt t, void* out, const int64_t* index, const void* src, int64_t outer, int64_t nout,
                      int64_t nsrc, int64_t inner, int64_t* bad, cudaStream_t s);
// x/out [M, C], index [M]; a negative index gives 0 (gather) or writes nothing (scatter; out zeroed by the caller).
cudaError_t gather_rows(Dt t, const void* x, const int64_t* index, void* out, int64_t M, int64_t C, int64_t* bad,
                        cudaStream_t s);
cudaError_t scatter_rows(Dt t, const void* src, const int64_t* index, void* out, int64_t M, int64_t C, int64_t* bad,
                         cudaStream_t s);

// Batch norm over x [N, C, HW] (or [N, HW, C] in memory when nhwc) of dtype t (float32 or bfloat16) with float32 gamma, beta and
// statistics; accumulates per-channel sums in double through acc (5C doubles: 2C sums, zeroed by the
// caller, then room for the per-channel coefficients of the output passes). relu: max(0, y) fused.
// Training forward writes y, the batch mean and 1/sqrt(var + eps) (var biased), with a residual
// (x's layout, or null) y = max(0, bn(x) + residual); inference uses the given mean and var;
// backward writes dx, dgamma and dbeta from the saved mean and invstd.
cudaError_t bn_forward_train(Dt t, const void* x, const void* residual, void* y, int64_t N, int64_t C, int64_t HW,
                             bool nhwc, bool relu, const float* gamma, const float* beta, float* mean, float* invstd,
                             double eps, double* acc, cudaStream_t s);
// Max pooling backward for channels-last x, dx [N, H, W, C] and dy [N, P, Q, C] (float32, float64 or
// bfloat16; sums in float32 for bfloat16): the reference's first-maximum rule, deterministic.
// scratch: N*P*Q*C bytes of device memory. Every size and index must fit in 32 bits; kh*kw <= 255.
struct PoolGeom {
  int kh, kw, sh, sw, ph, pw;
};
cudaError_t maxpool_backward_nhwc(Dt t, const void* x, const void* dy, void* dx, uint8_t* scratch, int N, int H,
                                  int W, int C, int P, int Q, PoolGeom g, cudaStream_t s);

// Running statistics after a batch of M per channel, in double, rounded once (see
// Backend::batchnorm_update_running): float32 or float64, all four [C].
cudaError_t bn_update_running(Dt t, void* running_mean, void* running_var, const void* save_mean,
                              const void* save_invstd, int64_t C, double momentum, double eps, int64_t M,
                              cudaStream_t s);
// *counter += 1 (one int64 on the device).
cudaError_t increment(int64_t* counter, cudaStream_t s);
cudaError_t bn_forward_infer(Dt t, const void* x, void* y, int64_t N, int64_t C, int64_t HW, bool nhwc,
                             const float* gamma, const float* beta, const float* mean, const float* var, double eps,
                             double* acc, cudaStream_t s);
// relu_beta: null, or the forward's beta when a ReLU followed (dy is then masked where x * gamma invstd +
// beta - mean gamma invstd <= 0, recomputed from the saved statistics).
cudaError_t bn_backward(Dt t, const void* x, const void* dy, void* dx, int64_t N, int64_t C, int64_t HW, bool nhwc,
                        const float* gamma, const float* relu_beta, const float* mean, const float* invstd,
                        float* dgamma, float* dbeta, double* acc, cudaStream_t s);

struct Optim {
  int adamw = 0;
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  int nesterov = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t step = 1;
  double scale = 1;
  int decoupled_decay = 0;
};
// p, g, buf1, buf2 contiguous of n elements; buf1 may be null for SGD without momentum.
cudaError_t optimizer_update(Dt t, const Optim& u, void* p, const void* g, void* buf1, void* buf2, int64_t n,
                             cudaStream_t s);
// Many parameters of one dtype in one launch, each with its own weight decay and step (u's are
// ignored); bc1/bc2 are filled in by the launcher. 32 slots of 72 bytes stay well inside the 4 KB
// of kernel arguments.
struct OptimSlot {
  void* p = nullptr;
  const void* g = nullptr;
  void *buf1 = nullptr, *buf2 = nullptr;
  int64_t n = 0;
  double weight_decay = 0;
  int64_t step = 1;
  double bc1 = 0, bc2 = 0;
};
constexpr int kMaxSlots = 32;
struct OptimSlots {
  OptimSlot s[kMaxSlots];
  int count = 0;
};
cudaError_t optimizer_update_many(Dt t, const Optim& u, OptimSlots& slots, cudaStream_t s);

}  // namespace hpdl::cuda::kern
