// OneDnnBackend: the fast CPU backend. oneDNN primitives (convolution,
// pooling, batch/layer normalization, matmul, eltwise, softmax) for float32,
// cached per shape; everything else (and float64) from the reference kernels.
#pragma once

#include "hpdl/backend/cpu/reference.h"

namespace hpdl::cpu {

class OneDnnBackend : public ReferenceBackend {
 public:
  OneDnnBackend();
  ~OneDnnBackend() override;
  const char* name() const override { return "cpu"; }
  bool supports(OpKind op, DType dtype) const override;

  void matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, double alpha,
              double beta) override;

  struct Impl;  // primitive cache (onednn.cpp)

 private:
  Impl* impl_;
};

// oneDNN's version and the ISA its JIT uses on this CPU ("avx512_core_bf16", ...).
std::string onednn_version();
std::string onednn_isa();

}  // namespace hpdl::cpu
