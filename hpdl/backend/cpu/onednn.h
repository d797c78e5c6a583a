// OneDnnBackend: the fast CPU backend. oneDNN primitives (convolution,
// pooling, batch/layer normalization, matmul, eltwise, softmax) for float32,
// cached per shape; hand-written vector loops where oneDNN has only scalar
// kernels for plain layouts (tiled pooling, NCHW batch norm); everything else
// (float64, non-contiguous operands, shapes oneDNN cannot express) from the
// inherited reference kernels.
#pragma once

#include "hpdl/backend/cpu/reference.h"

namespace hpdl::cpu {

class OneDnnBackend : public ReferenceBackend {
 public:
  OneDnnBackend();
  ~OneDnnBackend() override;
  const char* name() const override { return "cpu"; }
  // float32 and float64 for every kind (float64 through the reference kernels).
  bool supports(OpKind op, DType dtype) const override;
  // Channels-last float32 activations run NHWC kernels (convolution on oneDNN without
  // reorders, batch norm and pooling loops over rows of channels, flat elementwise);
  // other strided layouts run on row-major copies (design decision 75).
  bool reads_channels_last() const override { return true; }
  bool conv2d_channels_last(const Shape& x, const Shape& w, const Conv2dParams& p) const override;

  // Row-major <-> channels-last float32 copies as oneDNN reorders; the rest as the reference.
  void copy(const Tensor& src, const Tensor& dst) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override;
  void matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, double alpha,
              double beta) override;
  // SGD with momentum as one branch-free, vectorized float32 pass (the
  // reference computes each element in double with per-element branches).
  void optimizer_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad, const Tensor& buf1,
                        const Tensor& buf2) override;

  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                      const Conv2dParams& p) override;
  void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p) override;
  void conv2d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                       const Tensor& db, const Conv2dParams& p) override;
  void conv2d_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                               const Conv2dParams& p) override;
  void pool2d_forward(PoolKind kind, const Tensor& x, const Tensor& y, const Pool2dParams& p) override;
  void pool2d_backward(PoolKind kind, const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& dx,
                       const Pool2dParams& p) override;

  void batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                               const Tensor& save_mean, const Tensor& save_invstd, double eps) override;
  void batchnorm_forward_infer(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
                               const Tensor& var, const Tensor& y, double eps) override;
  void batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                          const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                          const Tensor& dbeta) override;
  // ReLU fused into the batch-norm passes: y is clamped as it is written; backward masks dy by y > 0 as it reads it.
  void batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                    const Tensor& save_mean, const Tensor& save_invstd, double eps) override;
  void batchnorm_forward_infer_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                    const Tensor& beta, const Tensor& mean, const Tensor& var, const Tensor& y,
                                    double eps) override;
  void batchnorm_add_relu_forward_train(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                        const Tensor& beta, const Tensor& y, const Tensor& save_mean,
                                        const Tensor& save_invstd, double eps) override;
  void batchnorm_relu_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& gamma,
                               const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx,
                               const Tensor& dgamma, const Tensor& dbeta) override;
  void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                         const Tensor& save_mean, const Tensor& save_invstd, double eps) override;
  void layernorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                          const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                          const Tensor& dbeta) override;

  void softmax_forward(const Tensor& x, const Tensor& y, int axis, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int axis, bool log) override;

  // rnn.cpp: LSTM / GRU stacks in float32 as GEMMs (dnnl_sgemm): one for the input projection
  // of all timesteps, one per step for the recurrent part; float64 from the reference
  int64_t rnn_reserve_size(const RnnParams& p, const Tensor& x) override;
  void rnn_forward_train(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                         const std::vector<Tensor>& weights, const Tensor& y, const Tensor& hy, const Tensor& cy,
                         const Tensor& reserve) override;
  void rnn_backward_data(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                         const std::vector<Tensor>& weights, const Tensor& y, const Tensor& dy, const Tensor& dhy,
                         const Tensor& dcy, const Tensor& reserve, const Tensor& dx, const Tensor& dhx,
                         const Tensor& dcx) override;
  void rnn_backward_weights(const RnnParams& p, const Tensor& x, const Tensor& hx, const std::vector<Tensor>& weights,
                            const Tensor& y, const Tensor& reserve, const std::vector<Tensor>& dweights) override;

  struct Impl;  // primitive cache (onednn.cpp)
  struct SharedDy;  // dy reordered once for both backward convolutions (onednn.cpp)

 private:
  void conv_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p,
                          SharedDy* shared);
  void conv_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                             const Conv2dParams& p, SharedDy* shared);
  Impl* impl_;
};

// oneDNN's version and the ISA its JIT uses on this CPU ("avx512_core_bf16", ...).
std::string onednn_version();
std::string onednn_isa();
// Whether oneDNN runs bfloat16 convolutions and matmuls natively here (AVX512_BF16 or AMX):
// what CpuComputeScope(DType::bf16) needs (design decision 69).
bool onednn_bf16_supported();
// The implementation oneDNN picks for the convolution forward (x, w -> y) and the matmul
// [M, K] @ [K, N] under this thread's CPU compute dtype, e.g. "brg:avx512_core_bf16" (tests).
std::string onednn_conv_impl(const Shape& xs, const Shape& ws, const Conv2dParams& p);
std::string onednn_matmul_impl(int64_t M, int64_t N, int64_t K);

}  // namespace hpdl::cpu
