// conv2d: shape checks, the backend's forward kernel, and a first-order-only
// backward node that calls the backend's fused backward-data and
// backward-weights kernels (oneDNN on CPU). The gradient of a convolution is
// itself a convolution, but expressing it with differentiable ops would cost a
// second kernel family for no user that needs it today (PINNs use MLPs).
#include "hpdl/ops/conv.h"

#include "hpdl/ops/autocast.h"
#include "hpdl/ops/op_impl.h"

namespace hpdl {

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  const char* op = "conv2d";
  detail::check_defined(x, op, "input");
  detail::check_defined(w, op, "weight");
  if (autocast_applies(x) || autocast_applies(w))
    return conv2d(autocast_cast(x), autocast_cast(w), autocast_cast(bias), p);
  detail::check_same(x, w, op);
  detail::check_float(x, op);
  detail::check_ndim(x, 4, op, "input [N, C, H, W]");
  detail::check_ndim(w, 4, op, "weight [K, C/groups, R, S]");
  HPDL_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 && p.pad_h >= 0 &&
                 p.pad_w >= 0 && p.groups >= 1,
             "conv2d: invalid parameters stride ({}, {}), padding ({}, {}), dilation ({}, {}), groups {}", p.stride_h,
             p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w, p.groups);
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t K = w.dim(0), Cg = w.dim(1), R = w.dim(2), S = w.dim(3);
  HPDL_CHECK(Cg * p.groups == C && K % p.groups == 0,
             "conv2d: input {} has {} channels but weight {} with groups {} expects {} (and K divisible by groups)",
             shape_str(x.shape()), C, shape_str(w.shape()), p.groups, Cg * p.groups);
  if (bias.defined()) {
    detail::check_same(x, bias, op);
    HPDL_CHECK(bias.ndim() == 1 && bias.dim(0) == K, "conv2d: bias {} does not match weight {} ({} filters)",
               shape_str(bias.shape()), shape_str(w.shape()), K);
  }
  const int64_t P = Conv2dParams::out_size(H, R, p.stride_h, p.pad_h, p.dilation_h);
  const int64_t Q = Conv2dParams::out_size(W, S, p.stride_w, p.pad_w, p.dilation_w);
  HPDL_CHECK(P >= 1 && Q >= 1, "conv2d: input {} is smaller than the dilated kernel of weight {} (padding ({}, {}))",
             shape_str(x.shape()), shape_str(w.shape()), p.pad_h, p.pad_w);

  // Rows and columns past the last window (a strided conv whose stride does not
  // divide the input) are never read. Crop them with a differentiable view:
  // oneDNN cannot describe them (negative right padding) and would otherwise
  // fall back to the reference kernel, 10-100x slower (ResNet's 1x1 stride-2 shortcuts).
  const int64_t H_used = std::min(H, (P - 1) * p.stride_h + (R - 1) * p.dilation_h + 1 - p.pad_h);
  const int64_t W_used = std::min(W, (Q - 1) * p.stride_w + (S - 1) * p.dilation_w + 1 - p.pad_w);
  // cuDNN takes them as they are (and a cropped view would cost a channels-last copy there).
  if ((H_used < H || W_used < W) && x.device().is_cpu())
    return conv2d(x.slice(2, 0, H_used).slice(3, 0, W_used), w, bias, p);

  // Channels-last (NHWC) on CUDA when either operand is: input, filter and output then all are.
  const bool cl = x.device().is_cuda() && (detail::keeps_channels_last(x) || detail::keeps_channels_last(w));
  Tensor xc = (cl ? detail::channels_last(x) : x.contiguous()).detach();
  Tensor wc = (cl ? detail::channels_last(w) : w.contiguous()).detach();
  Tensor bc = bias.defined() ? bias.contiguous().detach() : Tensor();
  Tensor y = cl ? Tensor::empty_channels_last({N, K, P, Q}, x.dtype(), x.device())
                : Tensor::empty({N, K, P, Q}, x.dtype(), x.device());
  if (y.numel() > 0) detail::pick(x, OpKind::conv2d).conv2d_forward(xc, wc, bc, y, p);

  if (needs_grad({&x, &w, &bias})) {
    const bool gx = x.requires_grad(), gw = w.requires_grad(), gb = bias.defined() && bias.requires_grad();
    record(
        "conv2d", {x, w, bias}, {&y},
        [xc, wc, gx, gw, gb, has_bias = bias.defined(), p, cl](const std::vector<Tensor>& g) {
          // dy [N, K, P, Q] -> dx [N, C, H, W], dw [K, C/groups, R, S], db [K], in the forward's layout
          Tensor dy = cl ? detail::channels_last(g[0]) : g[0].contiguous();
          Backend& be = detail::pick(dy, OpKind::conv2d);
          Tensor dx, dw, db;
          if (gx) dx = detail::empty_like(xc);
          if (gw || gb) {
            dw = detail::empty_like(wc);
            if (has_bias) db = Tensor::empty({wc.dim(0)}, wc.dtype(), wc.device());
          }
          be.conv2d_backward(xc, wc, dy, dx, dw, db, p);
          return std::vector<Tensor>{dx, gw ? dw : Tensor(), gb ? db : Tensor()};
        },
        /*first_order_only=*/true);
  }
  return y;
}

}  // namespace hpdl
