// 2-D pooling. max/avg run the backend's pooling kernels and record a
// first-order-only node over its fused backward. adaptive_avg_pool2d is plain
// avg pooling when the bins tile the input exactly; otherwise it is two
// matrix products with bin-averaging matrices, y = A_h x A_w^T, which is exact
// for PyTorch's overlapping bins and differentiable to any order.
#include "hpdl/ops/pool.h"

#include <vector>

#include "hpdl/ops/linalg.h"
#include "hpdl/ops/op_impl.h"

namespace hpdl {
namespace {

Tensor pool2d(PoolKind kind, const Tensor& x, const Pool2dParams& p) {
  const char* op = kind == PoolKind::max ? "max_pool2d" : "avg_pool2d";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  detail::check_ndim(x, 4, op, "input [N, C, H, W]");
  HPDL_CHECK(p.kernel_h >= 1 && p.kernel_w >= 1 && p.stride_h >= 1 && p.stride_w >= 1 && p.pad_h >= 0 &&
                 p.pad_w >= 0 && 2 * p.pad_h <= p.kernel_h && 2 * p.pad_w <= p.kernel_w,
             "{}: invalid kernel ({}, {}), stride ({}, {}), padding ({}, {}) (padding must be at most half the kernel)",
             op, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w);
  const int64_t P = (x.dim(2) + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;
  const int64_t Q = (x.dim(3) + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
  HPDL_CHECK(x.dim(2) + 2 * p.pad_h >= p.kernel_h && x.dim(3) + 2 * p.pad_w >= p.kernel_w,
             "{}: input {} is smaller than the kernel ({}, {}) with padding ({}, {})", op, shape_str(x.shape()),
             p.kernel_h, p.kernel_w, p.pad_h, p.pad_w);
  Tensor xc = detail::dense(x).detach();
  Tensor y = detail::empty_like_layout({x.dim(0), x.dim(1), P, Q}, x.dtype(), xc);
  if (y.numel() > 0) detail::pick(x, OpKind::pool2d).pool2d_forward(kind, xc, y, p);
  if (needs_grad({&x})) {
    Tensor yd = y.detach();
    record(
        op, {x}, {&y},
        [kind, xc, yd, p](const std::vector<Tensor>& g) {
          // dy [N, C, P, Q] -> dx [N, C, H, W]: max routes to the first maximum, avg spreads evenly.
          Tensor dy = detail::dense_as(g[0], yd);
          Tensor dx = detail::empty_like(xc);
          detail::pick(xc, OpKind::pool2d).pool2d_backward(kind, xc, yd, dy, dx, p);
          return std::vector<Tensor>{dx};
        },
        /*first_order_only=*/true);
  }
  return y;
}

// A [out, in] matrix whose row i averages PyTorch's adaptive bin
// [floor(i*in/out), ceil((i+1)*in/out)).
Tensor bin_matrix(int64_t out, int64_t in, DType dtype, Device device) {
  std::vector<double> m(static_cast<size_t>(out * in), 0.0);
  for (int64_t i = 0; i < out; ++i) {
    int64_t b = (i * in) / out, e = ((i + 1) * in + out - 1) / out;
    for (int64_t j = b; j < e; ++j) m[i * in + j] = 1.0 / static_cast<double>(e - b);
  }
  return Tensor::from_vector(m, {out, in}).to(dtype).to(device);
}

}  // namespace

Tensor max_pool2d(const Tensor& x, const Pool2dParams& p) { return pool2d(PoolKind::max, x, p); }
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p) { return pool2d(PoolKind::avg, x, p); }

Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w) {
  const char* op = "adaptive_avg_pool2d";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  detail::check_ndim(x, 4, op, "input [N, C, H, W]");
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  HPDL_CHECK(out_h >= 1 && out_w >= 1 && H >= 1 && W >= 1, "{}: output size ({}, {}) for input {}", op, out_h, out_w,
             shape_str(x.shape()));
  if (H % out_h == 0 && W % out_w == 0) {
    Pool2dParams p;
    p.kernel_h = p.stride_h = H / out_h;
    p.kernel_w = p.stride_w = W / out_w;
    p.pad_h = p.pad_w = 0;
    return pool2d(PoolKind::avg, x, p);
  }
  // y [NC, P, Q] = A_h [P, H] @ x [NC, H, W] @ A_w^T [W, Q]
  Tensor ah = bin_matrix(out_h, H, x.dtype(), x.device());
  Tensor awt = bin_matrix(out_w, W, x.dtype(), x.device()).t();
  Tensor x3 = x.reshape({N * C, H, W});
  Tensor y = matmul(matmul(ah, x3), awt);
  return y.reshape({N, C, out_h, out_w});
}

}  // namespace hpdl
