// CudaBackend::matmul through cuBLAS. hpdl is row-major and cuBLAS
// column-major; a row-major [M, N] matrix is the column-major [N, M] matrix of
// its transpose, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: the
// operands swap places and M and N swap roles, with no data moved. Under
// cuda::set_compute_precision(bf16 or f16), float32 A and B are converted to
// bfloat16 / float16 and multiplied by cublasGemmStridedBatchedEx into float32
// C (float32 compute).
#include <algorithm>
#include <climits>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/backend/cuda/cuda_backend.h"

namespace hpdl::cuda {

void CudaBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, double alpha,
                         double beta) {
  require_compute("matmul", c.dtype());
  HPDL_CHECK(a.dtype() == c.dtype() && b.dtype() == c.dtype(), "matmul: dtypes {}, {} -> {} must match",
             dtype_name(a.dtype()), dtype_name(b.dtype()), dtype_name(c.dtype()));
  HPDL_CHECK(c.is_contiguous(), "matmul: output must be contiguous");
  const int nd = c.ndim();
  HPDL_CHECK(nd == 2 || nd == 3, "matmul: output rank {} (expected 2 or 3)", nd);
  const int64_t M = c.shape()[nd - 2], N = c.shape()[nd - 1];
  const int64_t K = trans_a ? a.shape()[a.ndim() - 2] : a.shape()[a.ndim() - 1];
  const int64_t B = nd == 3 ? c.shape()[0] : 1;
  HPDL_CHECK(M < INT_MAX && N < INT_MAX && K < INT_MAX && B < INT_MAX, "matmul: sizes M={} N={} K={} batch={} exceed "
             "cuBLAS's 32-bit limits", M, N, K, B);
  if (M == 0 || N == 0 || B == 0) return;
  const bool native_bf16 = c.dtype() == DType::bf16;  // autocast: bfloat16 in and out, float32 accumulation
  const std::optional<DType> reduced = native_bf16 ? std::optional<DType>(DType::bf16)
                                                   : reduced_compute_type(c.dtype());  // bfloat16 or float16 operands
  const bool bf16 = reduced.has_value();
  const cudaDataType_t ab_type = reduced == DType::f16 ? CUDA_R_16F : CUDA_R_16BF;
  auto operand = [&](const Tensor& t) {
    if (!bf16 || t.dtype() == *reduced) return dense(t);
    Tensor o = Tensor::empty(t.shape(), *reduced, t.device());
    copy(t, o);
    return o;
  };
  Tensor ac = operand(a), bc = operand(b);
  const long long sa = (a.ndim() == 3 && a.shape()[0] > 1) ? M * K : 0;  // batch dim of 1 broadcasts
  const long long sb = (b.ndim() == 3 && b.shape()[0] > 1) ? K * N : 0;
  // Column-major view: B is [N, K] (ld N) untransposed or [K, N] (ld K) transposed; A likewise with M.
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int ldb = static_cast<int>(std::max<int64_t>(1, trans_b ? K : N));
  const int lda = static_cast<int>(std::max<int64_t>(1, trans_a ? M : K));
  cublasHandle_t h = cublas_for(c.device());
  HPDL_CUBLAS_CHECK(cublasSetMathMode(h, allow_tf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  if (bf16) {
    HPDL_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    HPDL_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h, op_b, op_a, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &al, bc.raw_data(), ab_type,
        ldb, sb, ac.raw_data(), ab_type, lda, sa, &be, c.raw_data(), native_bf16 ? CUDA_R_16BF : CUDA_R_32F,
        static_cast<int>(N), M * N,
        static_cast<int>(B), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else if (c.dtype() == DType::f32) {
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    HPDL_CUBLAS_CHECK(cublasSgemmStridedBatched(h, op_b, op_a, static_cast<int>(N), static_cast<int>(M),
                                                static_cast<int>(K), &al, static_cast<const float*>(bc.raw_data()),
                                                ldb, sb, static_cast<const float*>(ac.raw_data()), lda, sa, &be,
                                                static_cast<float*>(c.raw_data()), static_cast<int>(N), M * N,
                                                static_cast<int>(B)));
  } else {
    HPDL_CUBLAS_CHECK(cublasDgemmStridedBatched(h, op_b, op_a, static_cast<int>(N), static_cast<int>(M),
                                                static_cast<int>(K), &alpha, static_cast<const double*>(bc.raw_data()),
                                                ldb, sb, static_cast<const double*>(ac.raw_data()), lda, sa, &beta,
                                                static_cast<double*>(c.raw_data()), static_cast<int>(N), M * N,
                                                static_cast<int>(B)));
  }
}

}  // namespace hpdl::cuda
