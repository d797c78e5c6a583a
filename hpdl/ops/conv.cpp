// conv2d: shape checks, the backend's forward kernel, and a first-order-only
// backward node that calls the backend's fused backward-data and
// backward-weights kernels (oneDNN on CPU). The gradient of a convolution is
// itself a convolution, but expressing it with differentiable ops would cost a
// second kernel family for no user that needs it today (PINNs use MLPs).
// conv_transpose2d reuses the same three kernels with the roles swapped, and
// keeps its scatter-loop reference here as the oracle for the tests.
#include "hpdl/ops/conv.h"

#include "hpdl/ops/autocast.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"

#include <type_traits>

namespace hpdl {

// ---------------------------------------------------------------- argument checks
//
// conv2d and conv_transpose2d (and its reference) take the same arguments up to
// the weight layout and output_padding: one check for both, in one order, so a
// new rule lands in both ops. Returns the output shape [N, K, P, Q].

namespace {

template <typename Params>
Shape check_geometry(const Tensor& x, const Tensor& w, const Tensor& bias, const Params& p, const char* op) {
  constexpr bool transposed = std::is_same_v<Params, ConvTranspose2dParams>;
  static_assert(transposed || std::is_same_v<Params, Conv2dParams>);
  detail::check_defined(x, op, "input");
  detail::check_defined(w, op, "weight");
  detail::check_same(x, w, op);
  detail::check_float(x, op);
  detail::check_ndim(x, 4, op, "input [N, C, H, W]");
  detail::check_ndim(w, 4, op, transposed ? "weight [C, K/groups, R, S]" : "weight [K, C/groups, R, S]");
  HPDL_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 && p.pad_h >= 0 &&
                 p.pad_w >= 0 && p.groups >= 1,
             "{}: invalid parameters stride ({}, {}), padding ({}, {}), dilation ({}, {}), groups {}", op, p.stride_h,
             p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w, p.groups);
  if constexpr (transposed) {
    // With output_pad >= stride the output would have rows no input pixel reaches
    // and the gradient (a strided conv2d of it) would not come back to x's size.
    HPDL_CHECK(p.output_pad_h >= 0 && p.output_pad_h < p.stride_h && p.output_pad_w >= 0 &&
                   p.output_pad_w < p.stride_w,
               "{}: output padding ({}, {}) must be non-negative and smaller than the stride ({}, {})", op,
               p.output_pad_h, p.output_pad_w, p.stride_h, p.stride_w);
  }
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), R = w.dim(2), S = w.dim(3);
  int64_t K = 0, P = 0, Q = 0;
  if constexpr (transposed) {
    HPDL_CHECK(w.dim(0) == C && C % p.groups == 0,
               "{}: input {} has {} channels but weight {} [C, K/groups, R, S] expects {} (groups {} must divide it)",
               op, shape_str(x.shape()), C, shape_str(w.shape()), w.dim(0), p.groups);
    K = w.dim(1) * p.groups;
  } else {
    K = w.dim(0);
    HPDL_CHECK(w.dim(1) * p.groups == C && K % p.groups == 0,
               "{}: input {} has {} channels but weight {} with groups {} expects {} (and K divisible by groups)", op,
               shape_str(x.shape()), C, shape_str(w.shape()), p.groups, w.dim(1) * p.groups);
  }
  if (bias.defined()) {
    detail::check_same(x, bias, op);
    HPDL_CHECK(bias.ndim() == 1 && bias.dim(0) == K, "{}: bias {} does not match weight {} ({} {})", op,
               shape_str(bias.shape()), shape_str(w.shape()), K, transposed ? "output channels" : "filters");
  }
  if constexpr (transposed) {
    P = ConvTranspose2dParams::out_size(H, R, p.stride_h, p.pad_h, p.dilation_h, p.output_pad_h);
    Q = ConvTranspose2dParams::out_size(W, S, p.stride_w, p.pad_w, p.dilation_w, p.output_pad_w);
    HPDL_CHECK(P >= 1 && Q >= 1,
               "{}: input {} with weight {}, stride ({}, {}) and padding ({}, {}) gives an empty output {}x{}", op,
               shape_str(x.shape()), shape_str(w.shape()), p.stride_h, p.stride_w, p.pad_h, p.pad_w, P, Q);
  } else {
    P = Conv2dParams::out_size(H, R, p.stride_h, p.pad_h, p.dilation_h);
    Q = Conv2dParams::out_size(W, S, p.stride_w, p.pad_w, p.dilation_w);
    HPDL_CHECK(P >= 1 && Q >= 1, "{}: input {} is smaller than the dilated kernel of weight {} (padding ({}, {}))",
               op, shape_str(x.shape()), shape_str(w.shape()), p.pad_h, p.pad_w);
  }
  return {N, K, P, Q};
}

}  // namespace

namespace {

// conv2d on checked arguments: the kernel call and the backward node. x is the
// input as the backend gets it (conv2d may have cropped it); y [N, K, P, Q] = ys.
Tensor conv2d_run(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, const Shape& ys) {
  const int64_t N = ys[0], K = ys[1], P = ys[2], Q = ys[3];
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

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  const char* op = "conv2d";
  detail::check_defined(x, op, "input");
  detail::check_defined(w, op, "weight");
  if (autocast_applies(x) || autocast_applies(w))
    return conv2d(autocast_cast(x), autocast_cast(w), autocast_cast(bias), p);
  const Shape ys = check_geometry(x, w, bias, p, op);  // [N, K, P, Q]
  // cuDNN takes the input as it is (a cropped view would cost a channels-last copy there).
  if (!x.device().is_cpu()) return conv2d_run(x, w, bias, p, ys);

  // Rows and columns past the last window (a strided conv whose stride does not
  // divide the input) are never read. Crop them with a differentiable view:
  // oneDNN cannot describe them (negative right padding) and would otherwise
  // fall back to the reference kernel, 10-100x slower (ResNet's 1x1 stride-2 shortcuts).
  // The last window ends before input row (P-1)*stride + (R-1)*dilation + 1 - pad. That
  // end is 0 or negative when every window lies in the top padding (a 1x1 kernel with
  // stride 8 and padding 2 on a 1-row input): no row is read and the crop keeps none.
  // The cropped input gives the same P and Q, so it is run, not checked and cropped again
  // (conv2d calling itself here recursed without end on such shapes: slice(2, 0, -1)
  // of a 0-row input is that input again).
  const int64_t H = x.dim(2), W = x.dim(3), R = w.dim(2), S = w.dim(3), P = ys[2], Q = ys[3];
  const int64_t H_used = std::clamp<int64_t>((P - 1) * p.stride_h + (R - 1) * p.dilation_h + 1 - p.pad_h, 0, H);
  const int64_t W_used = std::clamp<int64_t>((Q - 1) * p.stride_w + (S - 1) * p.dilation_w + 1 - p.pad_w, 0, W);
  if (H_used < H || W_used < W) return conv2d_run(x.slice(2, 0, H_used).slice(3, 0, W_used), w, bias, p, ys);
  return conv2d_run(x, w, bias, p, ys);
}

}  // namespace hpdl

// ---------------------------------------------------------------- transposed convolution
//
// A transposed convolution is the adjoint of conv2d with the same weight and
// parameters: conv2d maps a [N, K, P, Q] image to [N, C, H, W] through w
// [C, K/groups, R, S] (w read as conv2d's [filters, channels/groups, R, S]),
// and conv_transpose2d maps [N, C, H, W] back to [N, K, P, Q]. So its forward
// is conv2d's data gradient and its own gradients are conv2d's forward and
// weight gradient, all existing backend kernels.

namespace hpdl {

Conv2dParams ConvTranspose2dParams::as_conv() const {
  Conv2dParams c;
  c.stride_h = stride_h, c.stride_w = stride_w;
  c.pad_h = pad_h, c.pad_w = pad_w;
  c.dilation_h = dilation_h, c.dilation_w = dilation_w;
  c.groups = groups;
  return c;
}

Tensor conv_transpose2d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvTranspose2dParams& p) {
  const char* op = "conv_transpose2d";
  detail::check_defined(x, op, "input");
  detail::check_defined(w, op, "weight");
  if (autocast_applies(x) || autocast_applies(w))
    return conv_transpose2d(autocast_cast(x), autocast_cast(w), autocast_cast(bias), p);
  const Shape ys = check_geometry(x, w, bias, p, op);
  const Conv2dParams cp = p.as_conv();

  Tensor xc = x.contiguous().detach();  // [N, C, H, W]: the "dy" of the adjoint conv2d
  Tensor wc = w.contiguous().detach();  // [C, K/groups, R, S]: that conv2d's filters
  Tensor y = Tensor::empty(ys, x.dtype(), x.device());  // [N, K, P, Q]: its "dx"
  if (y.numel() > 0) {
    if (xc.numel() > 0)
      detail::pick(x, OpKind::conv2d).conv2d_backward_data(xc, wc, y, cp);
    else
      y.fill_(0.0);
  }

  if (needs_grad({&x, &w})) {
    const bool gx = x.requires_grad(), gw = w.requires_grad();
    record(
        op, {x, w}, {&y},
        [xc, wc, gx, gw, cp](const std::vector<Tensor>& g) {
          Tensor dy = g[0].contiguous();  // [N, K, P, Q]
          Backend& be = detail::pick(dy, OpKind::conv2d);
          Tensor dx, dw;
          if (gx) {
            // dx [N, C, H, W] = conv2d(dy, w): the forward of the adjoint's adjoint.
            // P = (H-1)*stride - 2*pad + dil*(R-1) + output_pad + 1 maps back to
            // (P + 2*pad - dil*(R-1) - 1)/stride + 1 = H because output_pad < stride.
            dx = detail::empty_like(xc);
            be.conv2d_forward(dy, wc, Tensor(), dx, cp);
          }
          if (gw) {
            // dw [C, K/groups, R, S]: conv2d's weight gradient with input dy and output gradient x.
            dw = detail::empty_like(wc);
            be.conv2d_backward_weights(dy, xc, dw, Tensor(), cp);
          }
          return std::vector<Tensor>{dx, dw};
        },
        /*first_order_only=*/true);
  }
  // The bias through the differentiable broadcast add: its gradient is dy summed over N, P, Q.
  if (bias.defined()) return add(y, bias.reshape({1, ys[1], 1, 1}));
  return y;
}

Tensor conv_transpose2d_reference(const Tensor& x, const Tensor& w, const Tensor& bias,
                                  const ConvTranspose2dParams& p) {
  const Shape ys = check_geometry(x, w, bias, p, "conv_transpose2d_reference");
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t K = ys[1], P = ys[2], Q = ys[3];
  const int64_t Kg = w.dim(1), R = w.dim(2), S = w.dim(3);
  const int64_t Cg = C / p.groups;  // input channels per group
  Tensor xd = x.detach().to(kCPU).to(DType::f64).contiguous();
  Tensor wd = w.detach().to(kCPU).to(DType::f64).contiguous();
  Tensor yd = Tensor::zeros(ys, DType::f64);
  const double* xp = xd.data<double>();
  const double* wp = wd.data<double>();
  double* yp = yd.data<double>();
  // Scatter: every input pixel spreads itself, weighted by the kernel, over the
  // output window it would have been computed from in the adjoint conv2d.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t group = c / Cg;
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          const double v = xp[((n * C + c) * H + i) * W + j];
          for (int64_t kk = 0; kk < Kg; ++kk) {
            const int64_t k = group * Kg + kk;
            for (int64_t r = 0; r < R; ++r) {
              const int64_t oh = i * p.stride_h - p.pad_h + r * p.dilation_h;
              if (oh < 0 || oh >= P) continue;
              for (int64_t s = 0; s < S; ++s) {
                const int64_t ow = j * p.stride_w - p.pad_w + s * p.dilation_w;
                if (ow < 0 || ow >= Q) continue;
                yp[((n * K + k) * P + oh) * Q + ow] += v * wp[((c * Kg + kk) * R + r) * S + s];
              }
            }
          }
        }
    }
  if (bias.defined()) {
    Tensor bd = bias.detach().to(kCPU).to(DType::f64).contiguous();
    const double* bp = bd.data<double>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t o = 0; o < P * Q; ++o) yp[(n * K + k) * P * Q + o] += bp[k];
  }
  return yd.to(x.dtype()).to(x.device());
}

}  // namespace hpdl
