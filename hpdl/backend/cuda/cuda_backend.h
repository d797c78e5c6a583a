// CudaBackend: the Backend interface on NVIDIA GPUs. cuBLAS for matmul, cuDNN
// for convolution, pooling, batch norm and softmax, hand-written kernels
// (kernels.cu) for the rest. All work of a device goes on its one compute
// stream; copies to and from the host synchronize it, except uploads from
// pinned host memory (pinned.cpp). Private to backend/cuda.
#pragma once

#include "hpdl/backend/backend.h"

namespace hpdl::cuda {

class CudaBackend : public Backend {
 public:
  const char* name() const override { return "cuda"; }
  bool supports(OpKind op, DType dtype) const override;

  void fill(const Tensor& out, double value) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double low, double high) override;
  void random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double stddev) override;

  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out, double alpha) override;
  void axpby(double a, const Tensor& x, double b, const Tensor& y, const Tensor& out) override;
  void reduce(ReduceOp op, const Tensor& x, const std::vector<int>& axes, const Tensor& out) override;
  void matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, double alpha,
              double beta) override;  // cublas.cpp

  // cudnn.cpp
  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                      const Conv2dParams& p) override;
  void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p) override;
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
  void batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                    const Tensor& save_mean, const Tensor& save_invstd, double eps) override;
  void batchnorm_add_relu_forward_train(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                        const Tensor& beta, const Tensor& y, const Tensor& save_mean,
                                        const Tensor& save_invstd, double eps) override;
  void batchnorm_relu_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& gamma,
                               const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                               const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) override;
  void batchnorm_update_running(const Tensor& running_mean, const Tensor& running_var, const Tensor& save_mean,
                                const Tensor& save_invstd, double momentum, double eps, int64_t M) override;
  void increment(const Tensor& counter) override;
  void softmax_forward(const Tensor& x, const Tensor& y, int axis, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int axis, bool log) override;

  void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                         const Tensor& save_mean, const Tensor& save_invstd, double eps) override;
  void layernorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                          const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                          const Tensor& dbeta) override;

  void index_select(const Tensor& x, int axis, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, int axis, const Tensor& index, const Tensor& src) override;
  void gather_rows(const Tensor& x, const Tensor& index, const Tensor& out) override;
  void scatter_rows(const Tensor& src, const Tensor& index, const Tensor& out) override;

  void optimizer_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad, const Tensor& buf1,
                        const Tensor& buf2) override;
  void optimizer_update_many(const OptimizerUpdate& u, const std::vector<UpdateSlot>& slots) override;

  // rnn.cpp: LSTM / GRU stacks through cuDNN 9's RNN API (cudnnRNNForward, cudnnRNNBackwardData_v8,
  // cudnnRNNBackwardWeights_v8); the weights are packed into cuDNN's weight space every call.
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

 private:
  // The mixed-precision (bfloat16) batch-norm kernels, with or without a fused ReLU.
  void bn_train_bf16(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                     const Tensor& save_mean, const Tensor& save_invstd, double eps, bool relu,
                     const Tensor& residual = Tensor());
  void bn_backward_bf16(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& relu_beta,
                        const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                        const Tensor& dbeta);
  void copy_device(const Tensor& src, const Tensor& dst);
  void copy_upload(const Tensor& src, const Tensor& dst);
  void copy_download(const Tensor& src, const Tensor& dst);
};

// Throws naming the op and dtype unless t is float32 or float64.
void require_float(const char* op, DType t);
// float32, float64 or bfloat16 (the methods that compute in bfloat16 under autocast).
void require_compute(const char* op, DType t);

}  // namespace hpdl::cuda
