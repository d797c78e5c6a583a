// ReferenceBackend: plain loops for every Backend method, in float32 and
// float64. Readable first; parallel (OpenMP) where it costs no clarity. It is
// the oracle the oneDNN and CUDA kernels are tested against, and the CPU
// fallback for whatever a fast backend does not support.
#pragma once

#include "hpdl/backend/backend.h"

namespace hpdl::cpu {

class ReferenceBackend : public Backend {
 public:
  const char* name() const override { return "reference"; }
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
              double beta) override;

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
  void layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                         const Tensor& save_mean, const Tensor& save_invstd, double eps) override;
  void layernorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& save_mean,
                          const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                          const Tensor& dbeta) override;

  void softmax_forward(const Tensor& x, const Tensor& y, int axis, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int axis, bool log) override;

  void index_select(const Tensor& x, int axis, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, int axis, const Tensor& index, const Tensor& src) override;
  void gather_rows(const Tensor& x, const Tensor& index, const Tensor& out) override;
  void scatter_rows(const Tensor& src, const Tensor& index, const Tensor& out) override;

  void optimizer_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad, const Tensor& buf1,
                        const Tensor& buf2) override;

  // rnn.cpp: LSTM / GRU stacks, one (n, unit) at a time, sums in double
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
};

}  // namespace hpdl::cpu
