// The Backend interface: the narrow, coarse set of kernels every device
// provides. Ops (hpdl/ops) check shapes, allocate outputs and record autograd;
// a Backend only computes, into outputs the caller allocated with the right
// shape, dtype and device. Backends never see autograd.
//
// Backends in the tree:
//   reference  plain, readable loops (float32 and float64); the oracle every
//              fast kernel is tested against (backend/cpu/reference.cpp)
//   cpu        oneDNN for convolution, pooling, normalization, matmul,
//              eltwise and softmax; the reference for what oneDNN lacks
//              (backend/cpu/onednn.cpp)
//   cuda       cuDNN, cuBLAS and hand-written kernels (backend/cuda/, built
//              when CMake finds the CUDA toolkit)
//
// Contract for implementers: inputs may be any strided view unless a method
// says "contiguous"; outputs are contiguous and never alias inputs unless a
// method says so. float32 must be supported by every method; `supports` says
// which other dtypes are. A method may throw hpdl::Error naming the backend,
// the op and the dtype for what it does not support; ops call `supports`
// first and fall back to the reference backend on the CPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl {

enum class UnaryOp : uint8_t {
  neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, leaky_relu, gelu, abs, square, pow_scalar, reciprocal,
  add_scalar, mul_scalar, sign, sin, cos, erf
};
// out = f(a, b) with NumPy broadcasting of a and b to out's shape.
enum class BinaryOp : uint8_t {
  add, sub, mul, div, pow, maximum, minimum, gt, ge, lt, le, eq,
  relu_grad,        // a * (b > 0): relu backward with a = dy, b = x
  leaky_relu_grad,  // a * (b > 0 ? 1 : alpha)
  add_relu,         // max(a + b, 0): a residual sum and the ReLU after it in one pass
};
enum class ReduceOp : uint8_t { sum, mean, max, min, argmax, sum_square };
enum class PoolKind : uint8_t { max, avg };

const char* unary_name(UnaryOp op);
const char* binary_name(BinaryOp op);
const char* reduce_name(ReduceOp op);

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
  // Output size along one spatial dim: floor((in + 2*pad - dil*(k-1) - 1) / stride) + 1 (stride >= 1).
  // Rounded down, not toward zero: an input smaller than the dilated kernel gives 0 or less,
  // never 1 (truncation turned (2 - 3) / 2 + 1 into 1, a window that reads only padding).
  static int64_t out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
    const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
    return (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  }
};

// Throws hpdl::Error naming `kernel` and the shapes unless x [N, C, H, W], w [K, C/groups, R, S],
// y [N, K, P, Q] (P, Q from Conv2dParams::out_size) and bias [K] (when defined) agree with p. The
// CPU convolution kernels call it first, so a caller that skipped conv2d's checks gets an error,
// not reads past the end of x or a division by a zero group count.
void check_conv2d_kernel_shapes(const Shape& x, const Shape& w, const Shape& y, const Shape* bias,
                                const Conv2dParams& p, const char* kernel);

struct Pool2dParams {
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;
  int64_t pad_h = 0, pad_w = 0;
  bool count_include_pad = false;  // avg pooling: divide by the full window or only the valid part
};

// One fused, elementwise optimizer update over a flat parameter buffer.
struct OptimizerUpdate {
  enum class Kind : uint8_t { sgd, adamw } kind = Kind::sgd;
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t step = 1;            // AdamW bias correction uses it (1-based)
  double scale = 1.0;          // multiplies the step (LARS/LAMB trust ratio)
  bool decoupled_decay = false;  // AdamW-style decay: p -= lr * wd * p
};

// One parameter's share of a grouped optimizer update (Backend::optimizer_update_many): its tensors
// (as optimizer_update takes them) and what differs from parameter to parameter.
struct UpdateSlot {
  Tensor param, grad, buf1, buf2;
  double weight_decay = 0;
  int64_t step = 1;
};

enum class OpKind : uint8_t {
  fill, copy, random, unary, binary, reduce, matmul, conv2d, pool2d, adaptive_avg_pool2d, batchnorm,
  layernorm, softmax, gather, optimizer, rnn
};

// ---- recurrent networks (rnn_* methods of Backend) ----
// A stack of LSTM or GRU layers run over a whole, time-major sequence. Gate
// order and weight layout follow PyTorch (and match cuDNN's linear-layer ids):
// per (layer l, direction d) four tensors, in the order l0, l0_reverse, l1, ...
//   w_ih [G*H, in_l]  w_hh [G*H, H]  b_ih [G*H]  b_hh [G*H]
// with G = 4 gates i, f, g, o (LSTM) or G = 3 gates r, z, n (GRU), in_0 = I and
// in_l = H * dirs above. Equations (sigma the logistic function, * elementwise):
//   LSTM  i = sigma(W_ii x + b_ii + W_hi h + b_hi)   f = sigma(W_if x + b_if + W_hf h + b_hf)
//         g = tanh(W_ig x + b_ig + W_hg h + b_hg)    o = sigma(W_io x + b_io + W_ho h + b_ho)
//         c' = f * c + i * g                         h' = o * tanh(c')
//   GRU   r = sigma(W_ir x + b_ir + W_hr h + b_hr)   z = sigma(W_iz x + b_iz + W_hz h + b_hz)
//         n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
//         h' = (1 - z) * n + z * h
// The reverse direction runs the same cell from t = T-1 down to 0. Layer l > 0
// reads layer l-1's output [T, N, H * dirs] (forward half first).
enum class RnnMode : uint8_t { lstm, gru };

struct RnnParams {
  RnnMode mode = RnnMode::lstm;
  int64_t seq_len = 0;      // T
  int64_t batch = 0;        // N
  int64_t input_size = 0;   // I
  int64_t hidden_size = 0;  // H
  int64_t num_layers = 1;   // L
  bool bidirectional = false;
  int64_t dirs() const { return bidirectional ? 2 : 1; }
  int64_t gates() const { return mode == RnnMode::lstm ? 4 : 3; }
  int64_t layer_input(int64_t layer) const { return layer == 0 ? input_size : hidden_size * dirs(); }
  // Number of weight tensors: 4 per (layer, direction).
  int64_t num_weights() const { return 4 * num_layers * dirs(); }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual bool supports(OpKind op, DType dtype) const = 0;
  // Whether every method reads and writes channels-last (NHWC-strided) 4-D
  // activations correctly and fast: convolution, pooling, batch norm and the
  // elementwise ops (ops keep such tensors channels-last only on such a backend).
  virtual bool reads_channels_last() const { return false; }
  // Whether a convolution of these shapes should take and give channels-last activations
  // when the ops may choose (cpu_channels_last()): false where a row-major kernel is faster.
  virtual bool conv2d_channels_last(const Shape& /*x*/, const Shape& /*w*/, const Conv2dParams& /*p*/) const {
    return reads_channels_last();
  }

  // ---- memory ----
  virtual void fill(const Tensor& out, double value) = 0;
  // dst (contiguous or any view) <- src (any view), same numel, dtype converted. Both on this backend's device.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  // uniform [low, high) or normal(mean, std) with counter-based numbers from (seed, offset + i).
  virtual void random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double low, double high) = 0;
  virtual void random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double stddev) = 0;

  // ---- elementwise ----
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) = 0;
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out, double alpha) = 0;
  // out = a * x + b * y (same shapes, contiguous); the workhorse of gradient accumulation.
  virtual void axpby(double a, const Tensor& x, double b, const Tensor& y, const Tensor& out) = 0;

  // ---- reductions ----
  // out has x's rank with the reduced axes set to 1 (keepdim); `axes` sorted, unique.
  // argmax writes int64 indices along a single axis.
  virtual void reduce(ReduceOp op, const Tensor& x, const std::vector<int>& axes, const Tensor& out) = 0;

  // ---- linear algebra ----
  // c[b] = alpha * op(a[b]) @ op(b[b]) + beta * c[b], with op = transpose when the flag is set.
  // a: [B?, M, K] (or [B?, K, M] when trans_a), b: [B?, K, N] (or [B?, N, K]), c: [B?, M, N];
  // rank 2 or 3; a batch dim of 1 broadcasts. a and b contiguous.
  virtual void matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, double alpha,
                      double beta) = 0;

  // ---- convolution: x [N, C, H, W], w [K, C/groups, R, S], bias [K] or undefined, y [N, K, P, Q] ----
  virtual void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                              const Conv2dParams& p) = 0;
  virtual void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p) = 0;
  // db may be undefined (no bias).
  virtual void conv2d_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                                       const Conv2dParams& p) = 0;

  // Both backward convolutions of one dy: dx (skipped when undefined) and dw with db (dw undefined:
  // skipped; db may be undefined). The default calls the two methods above; a backend may share
  // work between them (oneDNN: dy reordered into the primitives' layout once).
  virtual void conv2d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                               const Tensor& db, const Conv2dParams& p);

  // ---- pooling: x [N, C, H, W], y [N, C, P, Q] ----
  virtual void pool2d_forward(PoolKind kind, const Tensor& x, const Tensor& y, const Pool2dParams& p) = 0;
  // Max pooling backward routes dy to the first maximum of each window of x.
  virtual void pool2d_backward(PoolKind kind, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx,
                               const Pool2dParams& p) = 0;

  // ---- batch normalization over N, H, W per channel: x [N, C, ...] ----
  // training: writes y, the batch mean and 1/sqrt(var + eps) per channel (var biased).
  virtual void batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                       const Tensor& save_mean, const Tensor& save_invstd, double eps) = 0;
  virtual void batchnorm_forward_infer(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                       const Tensor& mean, const Tensor& var, const Tensor& y, double eps) = 0;
  virtual void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                                  const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                                  const Tensor& dbeta) = 0;

  // Batch norm followed by ReLU, y = max(0, bn(x)) (training statistics), and its backward, which
  // masks dy by y > 0 before the batch-norm backward. The defaults compose the methods above (a
  // separate ReLU pass and a masked copy of dy); a backend may fuse them into its batch-norm passes.
  virtual void batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                            const Tensor& save_mean, const Tensor& save_invstd, double eps);
  virtual void batchnorm_relu_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& gamma,
                                       const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                                       const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta);

  // Batch norm, residual add and ReLU, y = max(0, bn(x) + residual) (training statistics): the last
  // layer of a residual block in one output pass. residual has x's shape and strides. The default
  // composes batchnorm_forward_train and the add_relu binary op; the backward needs no method of its
  // own (mask dy by y > 0 once: that is the residual's gradient and batchnorm_backward's dy).
  virtual void batchnorm_add_relu_forward_train(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                                const Tensor& beta, const Tensor& y, const Tensor& save_mean,
                                                const Tensor& save_invstd, double eps);

  // Inference batch norm followed by ReLU, y = max(0, bn(x)), or with a residual (x's shape and
  // strides; may be undefined) y = max(0, bn(x) + residual), rounded as the add_relu binary op. The
  // default composes batchnorm_forward_infer with the ReLU or add_relu pass; a backend may fuse them.
  virtual void batchnorm_forward_infer_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                            const Tensor& beta, const Tensor& mean, const Tensor& var,
                                            const Tensor& y, double eps);

  // The running statistics after a training batch of M values per channel (all [C], contiguous):
  // running_mean = (1 - momentum) running_mean + momentum save_mean, and running_var likewise with the
  // unbiased batch variance (1 / save_invstd^2 - eps) M / (M - 1). The default composes unary and
  // axpby (six kernels); a backend may do it in one.
  virtual void batchnorm_update_running(const Tensor& running_mean, const Tensor& running_var,
                                        const Tensor& save_mean, const Tensor& save_invstd, double momentum,
                                        double eps, int64_t M);
  // counter += 1 for an int64 scalar (a module's num_batches_tracked), without a host round trip
  // for a device tensor.
  virtual void increment(const Tensor& counter);

  // ---- layer normalization over the last axis: x [M, D], gamma/beta [D] ----
  virtual void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                 const Tensor& save_mean, const Tensor& save_invstd, double eps) = 0;
  virtual void layernorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                                  const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                                  const Tensor& dbeta) = 0;

  // ---- softmax along one axis (contiguous x) ----
  virtual void softmax_forward(const Tensor& x, const Tensor& y, int axis, bool log) = 0;
  virtual void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int axis, bool log) = 0;

  // ---- indexing ----
  // out[..., i, ...] = x[..., index[i], ...] along `axis`; index int64 1-D.
  virtual void index_select(const Tensor& x, int axis, const Tensor& index, const Tensor& out) = 0;
  // out[..., index[i], ...] += src[..., i, ...] along `axis` (out pre-initialized).
  virtual void index_add(const Tensor& out, int axis, const Tensor& index, const Tensor& src) = 0;
  // out[i] = x[i, index[i]] for x [M, C], index [M] int64 (negative index: out 0); and its scatter.
  virtual void gather_rows(const Tensor& x, const Tensor& index, const Tensor& out) = 0;
  virtual void scatter_rows(const Tensor& src, const Tensor& index, const Tensor& out) = 0;  // out zeroed first

  // ---- optimizers: p, g, state buffers contiguous, same numel ----
  // sgd: buf1 = momentum buffer (may be undefined when momentum == 0); adamw: buf1 = m, buf2 = v.
  virtual void optimizer_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad,
                                const Tensor& buf1, const Tensor& buf2) = 0;
  // The update u over many parameters, slot i with its own weight_decay and step: one optimizer step.
  // The default calls optimizer_update per slot; a backend may launch one kernel for many of them.
  virtual void optimizer_update_many(const OptimizerUpdate& u, const std::vector<UpdateSlot>& slots);

  // ---- recurrent networks: LSTM / GRU stacks over a sequence (see RnnParams above) ----
  // Shapes (all contiguous, one dtype): x [T, N, I], hx and cx [L*dirs, N, H] (cx: LSTM only,
  // undefined for GRU), y [T, N, H*dirs], hy and cy like hx and cx, weights and dweights as
  // described at RnnParams (p.num_weights() tensors). `reserve` is a 1-D tensor of
  // rnn_reserve_size(p, x) elements of x's dtype that holds what backward needs; its
  // contents are the backend's own. The three calls of one step share the reserve and run in
  // order: forward, backward_data (which may update the reserve), backward_weights.
  // The defaults throw "not supported" naming the backend; ops check supports(OpKind::rnn).
  virtual int64_t rnn_reserve_size(const RnnParams& p, const Tensor& x);
  virtual void rnn_forward_train(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                                 const std::vector<Tensor>& weights, const Tensor& y, const Tensor& hy,
                                 const Tensor& cy, const Tensor& reserve);
  // dy [T, N, H*dirs], dhy and dcy like hy and cy (zeros when no gradient reached them) ->
  // dx, dhx, dcx (written).
  virtual void rnn_backward_data(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                                 const std::vector<Tensor>& weights, const Tensor& y, const Tensor& dy,
                                 const Tensor& dhy, const Tensor& dcy, const Tensor& reserve, const Tensor& dx,
                                 const Tensor& dhx, const Tensor& dcx);
  // dweights (written, not accumulated): the gradients of the weights, same shapes and order.
  virtual void rnn_backward_weights(const RnnParams& p, const Tensor& x, const Tensor& hx,
                                    const std::vector<Tensor>& weights, const Tensor& y, const Tensor& reserve,
                                    const std::vector<Tensor>& dweights);
};

// The reference backend (always available, CPU).
Backend& reference_backend();
// The fast CPU backend (oneDNN).
Backend& cpu_backend();
// The backend for a device; CUDA's registers itself when built in.
Backend& backend_for(Device device);
void register_backend(DeviceType type, Backend* backend);

// Within its scope, ops on CPU tensors use `b` (tests compare fast vs reference).
class ScopedCpuBackend {
 public:
  explicit ScopedCpuBackend(Backend& b);
  ~ScopedCpuBackend();
  ScopedCpuBackend(const ScopedCpuBackend&) = delete;
  ScopedCpuBackend& operator=(const ScopedCpuBackend&) = delete;

 private:
  Backend* previous_;
};

}  // namespace hpdl
