// 2-D pooling. max/avg run the backend's pooling kernels and record a node
// that calls its fused backward, or, when the backward is itself recorded
// (create_graph), writes it with differentiable ops: max pooling's gradient is
// a scatter (index_add) of dy to the saved argmax positions, linear in dy with
// a gather (index_select) as its own gradient; avg pooling's gradient is linear
// in dy with avg pooling itself as its adjoint. adaptive_avg_pool2d is plain
// avg pooling when the bins tile the input exactly; otherwise it is two
// matrix products with bin-averaging matrices, y = A_h x A_w^T, which is exact
// for PyTorch's overlapping bins and differentiable to any order.
#include "hpdl/ops/pool.h"

#include <vector>

#include "hpdl/ops/embedding.h"
#include "hpdl/ops/linalg.h"
#include "hpdl/ops/op_impl.h"

namespace hpdl {
namespace {

Tensor pool2d(PoolKind kind, const Tensor& x, const Pool2dParams& p);

// Flat positions (into x [N, C, H, W]) of each window's first maximum, in
// window order r, s as the backends route the gradient: int64 [N*C*P*Q].
// Padding never wins (it is -infinity for max pooling). Host loops over a
// float64 copy; only a recorded backward needs them.
Tensor max_pool2d_argmax(const Tensor& x, const Pool2dParams& p, int64_t P, int64_t Q) {
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  std::vector<double> v = x.to_vector<double>();
  std::vector<int64_t> idx(static_cast<size_t>(N * C * P * Q));
  for (int64_t nc = 0; nc < N * C; ++nc)
    for (int64_t i = 0; i < P; ++i)
      for (int64_t j = 0; j < Q; ++j) {
        int64_t best = -1;
        for (int64_t r = 0; r < p.kernel_h; ++r) {
          const int64_t h = i * p.stride_h - p.pad_h + r;
          if (h < 0 || h >= H) continue;
          for (int64_t s = 0; s < p.kernel_w; ++s) {
            const int64_t w = j * p.stride_w - p.pad_w + s;
            if (w < 0 || w >= W) continue;
            const int64_t at = (nc * H + h) * W + w;
            if (best < 0 || v[at] > v[best]) best = at;
          }
        }
        idx[(nc * P + i) * Q + j] = best;  // >= 0: padding is at most half the kernel
      }
  return Tensor::from_vector(idx, {N * C * P * Q}).to(x.device());
}

// avg pooling's gradient dy [N, C, P, Q] -> dx shaped like xc, as an op: the
// backend's kernel, recorded with avg pooling (its adjoint) as the gradient.
Tensor avg_pool2d_backward(const Tensor& dy, const Tensor& xc, const Tensor& yd, const Pool2dParams& p) {
  Tensor dyc = detail::dense_as(dy, yd).detach();
  Tensor dx = detail::empty_like(xc);
  detail::pick(xc, OpKind::pool2d).pool2d_backward(PoolKind::avg, xc, yd, dyc, dx, p);
  if (needs_grad({&dy}))
    record("avg_pool2d_backward", {dy}, {&dx}, [p](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{pool2d(PoolKind::avg, g[0], p)};
    });
  return dx;
}

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
    record(op, {x}, {&y}, [kind, saved_x = SavedTensor(xc, "input 'x'"), saved_y = SavedTensor(y.detach(), "output"),
                           p](const std::vector<Tensor>& g) {
      const Tensor &xc = saved_x.get(), &yd = saved_y.get();
      if (grad_enabled()) {
        // Recorded: differentiable in dy (the derivative in x is zero almost everywhere).
        if (kind == PoolKind::avg) return std::vector<Tensor>{avg_pool2d_backward(g[0], xc, yd, p)};
        // dx [N*C*H*W] = index_add of dy [N*C*P*Q] at the argmax positions.
        Tensor idx = max_pool2d_argmax(xc, p, yd.dim(2), yd.dim(3));
        Tensor dx = index_add_into_zeros({xc.numel()}, 0, idx, g[0].contiguous().reshape({idx.numel()}));
        return std::vector<Tensor>{dx.reshape(xc.shape())};
      }
      // dy [N, C, P, Q] -> dx [N, C, H, W]: max routes to the first maximum, avg spreads evenly.
      Tensor dy = detail::dense_as(g[0], yd);
      Tensor dx = detail::empty_like(xc);
      detail::pick(xc, OpKind::pool2d).pool2d_backward(kind, xc, yd, dy, dx, p);
      return std::vector<Tensor>{dx};
    });
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
