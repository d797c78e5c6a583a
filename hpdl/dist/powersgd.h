// PowerSGD gradient compression (Vogels, Karimireddy and Jaggi, NeurIPS
// 2019) for data parallelism over slow networks: each weight gradient, seen
// as a matrix M [n, m] (a convolution's [out, in * kh * kw]), is replaced by
// a rank-r approximation of the ranks' mean computed with one step of power
// iteration, so the ranks exchange P [n, r] and Q [m, r] instead of M:
//   M += E (this rank's error from the last step)
//   P = M Q;  allreduce P;  orthogonalize P's columns
//   Q = M^T P;  allreduce Q, divide by the ranks;  M_hat = P Q^T
//   E = M - M_hat;  the gradient becomes M_hat (the same on every rank)
// Q is kept from step to step (warm start), E too (error feedback: nothing
// the compression drops is lost, it is sent later). Gradients that would not
// shrink ((n + m) r >= n m: biases, norms' scales, small matrices) travel
// whole in the P message, averaged as usual.
#pragma once

#include <cstdint>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/dist/communicator.h"

namespace hpdl::dist {

// Whether a gradient of this shape is compressed at rank r: at least 2
// dimensions (rows = shape[0], columns = the rest) and (n + m) r < n m.
bool powersgd_compressible(const Shape& shape, int rank);

// Gram-Schmidt on the r columns of a row-major [n, r] matrix, in place, in
// double precision; a column with nothing independent left of it (under
// 1e-5 of its length) becomes zeros.
void orthogonalize_columns(float* p, int64_t n, int64_t r);

class PowerSgd {
 public:
  // `grads`: float32 contiguous CPU tensors, the gradients this object will
  // reduce (views into a DataParallel bucket, say), in the same order on
  // every rank. The compressible ones get an error buffer and a Q drawn
  // from Generator(seed) (the same on every rank).
  PowerSgd(std::vector<Tensor> grads, int rank, uint64_t seed);
  // Replaces every gradient by its mean over comm's ranks: exact for the
  // plain ones, rank-r for the others. Collective (two allreduces: the plain
  // gradients with the P's, then the Q's). Returns the bytes all-reduced.
  int64_t reduce(Communicator& comm);

  int rank() const { return rank_; }
  int64_t elements() const { return elements_; }        // of all the gradients
  int64_t wire_elements() const { return wire_elements_; }  // sent per reduce: plain + P's + Q's
  int64_t compressed_count() const { return static_cast<int64_t>(mats_.size()); }
  // This rank's error feedback for compressible gradient i (in the order of
  // the constructor's compressible gradients), [n, m] row-major.
  const std::vector<float>& error(size_t i) const { return mats_.at(i).err; }
  // Compressible gradient i: its index among the constructor's gradients,
  // its Q [m, r] (the same on every rank), and setters for resuming. Only
  // the ranks' sum of the errors enters the next step, so a checkpoint can
  // hold their mean and give every rank mean x (old ranks / new ranks).
  int64_t source_index(size_t i) const { return mats_.at(i).index; }
  Tensor q(size_t i) const;
  void set_q(size_t i, const Tensor& q);
  void set_error(size_t i, const Tensor& err, float scale);

 private:
  struct Mat {
    Tensor grad;
    int64_t index = 0;
    int64_t n = 0, m = 0;
    std::vector<float> err, q;
  };
  int rank_;
  std::vector<Mat> mats_;
  std::vector<Tensor> plain_;
  int64_t elements_ = 0, wire_elements_ = 0;
  std::vector<float> buf1_, buf2_, qt_;
};

}  // namespace hpdl::dist
