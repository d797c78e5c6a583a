// conv2d: shape checks, the backend's forward kernel, and a backward node with
// two paths. Without a recorded backward (plain training) it calls the
// backend's fused backward-data and backward-weights kernels (oneDNN on CPU),
// unchanged. When the backward pass is itself recorded (create_graph: grad
// mode is on inside the node) it writes the gradients with differentiable ops
// instead: dx is a conv_transpose2d, dw is conv2d_weight, db a sum. conv2d,
// conv_transpose2d and conv2d_weight form a closed set, each one's gradients
// written with the others, so derivatives of any order work (WGAN-GP, PINNs on
// convolutional nets). conv_transpose2d reuses the same three kernels with the
// roles swapped, and keeps its scatter-loop reference here as the oracle for the tests.
#include "hpdl/ops/conv.h"

#include "hpdl/ops/autocast.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"
#include "hpdl/ops/reduce.h"

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

// conv2d's data gradient as a differentiable op: the transposed convolution of
// dy [N, K, P, Q] with w [K, C/groups, R, S] (read as conv_transpose2d's
// [in = K, out/groups = C/groups, R, S]), output padded to x's H x W. That
// padding, H + 2*pad - dil*(R-1) - 1 - (P-1)*stride, is the remainder of the
// forward's division by the stride, so it is in [0, stride) as
// conv_transpose2d requires (also for conv2d's cropped input, where it is pad).
Tensor conv2d_data_grad(const Tensor& dy, const Tensor& w, const Shape& x_shape, const Conv2dParams& p) {
  const int64_t P = dy.dim(2), Q = dy.dim(3), R = w.dim(2), S = w.dim(3);
  if (x_shape[2] == 0 || x_shape[3] == 0) return Tensor::zeros(x_shape, dy.dtype(), dy.device());
  ConvTranspose2dParams t;
  t.stride_h = p.stride_h, t.stride_w = p.stride_w;
  t.pad_h = p.pad_h, t.pad_w = p.pad_w;
  t.dilation_h = p.dilation_h, t.dilation_w = p.dilation_w;
  t.groups = p.groups;
  t.output_pad_h = x_shape[2] - ConvTranspose2dParams::out_size(P, R, p.stride_h, p.pad_h, p.dilation_h, 0);
  t.output_pad_w = x_shape[3] - ConvTranspose2dParams::out_size(Q, S, p.stride_w, p.pad_w, p.dilation_w, 0);
  return conv_transpose2d(dy, w, Tensor(), t);
}

// Whether a CPU convolution of x runs channels-last (design decision 75): float32, the layout on,
// and the backend taking a conv2d of input shape `in` (a transposed convolution passes its output,
// the input of the conv2d it is the data gradient of) with filters `w` in NHWC. A one-channel `in`
// only when computing in float32: under CPU bf16 the row-major direct one-channel loops stay
// float32, so the layout would change what is rounded.
bool cpu_conv_channels_last(const Tensor& x, const Shape& in, const Shape& w, const Conv2dParams& p, DType cd) {
  return x.device().is_cpu() && x.dtype() == DType::f32 && cpu_channels_last() && (in[1] != 1 || cd == DType::f32) &&
         detail::pick(x, OpKind::conv2d).conv2d_channels_last(in, w, p);
}

// conv2d on checked arguments: the kernel call and the backward node. x is the
// input as the backend gets it (conv2d may have cropped it); y [N, K, P, Q] = ys.
Tensor conv2d_run(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, const Shape& ys) {
  const int64_t N = ys[0], K = ys[1], P = ys[2], Q = ys[3];
  // Channels-last (NHWC) on CUDA when either operand is: input, filter and output then all are.
  // On the CPU with cpu_channels_last(): float32 input and output NHWC, the filter row-major
  // (oneDNN reorders filters into its own layout either way; design decision 75).
  // CPU under autocast: bfloat16 operands in the kernels, forward and backward (design decision 69).
  const DType cd = detail::autocast_cpu_compute(x);
  const bool cl_cpu = cpu_conv_channels_last(x, x.shape(), w.shape(), p, cd);
  const bool cl = cl_cpu || (x.device().is_cuda() && (detail::keeps_channels_last(x) || detail::keeps_channels_last(w)));
  Tensor xc = (cl ? detail::channels_last(x) : x.contiguous()).detach();
  Tensor wc = (cl && !cl_cpu ? detail::channels_last(w) : w.contiguous()).detach();
  Tensor bc = bias.defined() ? bias.contiguous().detach() : Tensor();
  Tensor y = cl ? Tensor::empty_channels_last({N, K, P, Q}, x.dtype(), x.device())
                : Tensor::empty({N, K, P, Q}, x.dtype(), x.device());
  if (y.numel() > 0) {
    CpuComputeScope compute(cd);
    detail::pick(x, OpKind::conv2d).conv2d_forward(xc, wc, bc, y, p);
  }

  if (needs_grad({&x, &w, &bias})) {
    const bool gx = x.requires_grad(), gw = w.requires_grad(), gb = bias.defined() && bias.requires_grad();
    // The edges of x and w (not x and w, which may hold more memory than the
    // copies) let a recorded backward reach them for second derivatives.
    record(
        "conv2d", {x, w, bias}, {&y},
        [ex = gradient_edge(x), ew = gradient_edge(w), saved_x = SavedTensor(xc, "input 'x'"),
         saved_w = SavedTensor(wc, "weight"), gx, gw, gb, has_bias = bias.defined(), p, cl,
         cd](const std::vector<Tensor>& g) {
          AutocastScope autocast(cd, cd != DType::f32);
          CpuComputeScope compute(cd);
          const Tensor &xc = saved_x.get(), &wc = saved_w.get();
          if (grad_enabled()) {
            // Recorded: dy [N, K, P, Q] -> dx = conv_transpose2d(dy, w) [N, C, H, W],
            // dw = conv2d_weight(x, dy) [K, C/groups, R, S], db = sum over N, P, Q [K].
            const Tensor& dy = g[0];
            const Tensor xg = with_gradient_edge(xc, ex), wg = with_gradient_edge(wc, ew);
            return std::vector<Tensor>{gx ? conv2d_data_grad(dy, wg, xg.shape(), p) : Tensor(),
                                       gw ? conv2d_weight(xg, dy, wg.shape(), p) : Tensor(),
                                       gb ? sum(dy, {0, 2, 3}) : Tensor()};
          }
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
        });
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

  // Channels-last as in conv2d_run, the adjoint conv2d's input being y [N, K, P, Q] and its filters
  // w [C, K/groups, R, S]: on the CPU (cpu_channels_last()) when the backend takes that conv2d in
  // NHWC (a generator's one-channel last layer too), on CUDA when x or w is NHWC.
  const DType cd = detail::autocast_cpu_compute(x);  // as in conv2d
  const bool cl_cpu = cpu_conv_channels_last(x, ys, w.shape(), cp, cd);
  const bool cl = cl_cpu || (x.device().is_cuda() && (detail::keeps_channels_last(x) || detail::keeps_channels_last(w)));
  Tensor xc = (cl ? detail::channels_last(x) : x.contiguous()).detach();  // [N, C, H, W]: the "dy" of the adjoint conv2d
  Tensor wc = (cl && !cl_cpu ? detail::channels_last(w) : w.contiguous()).detach();  // [C, K/groups, R, S]: its filters
  Tensor y = cl ? Tensor::empty_channels_last(ys, x.dtype(), x.device())
                : Tensor::empty(ys, x.dtype(), x.device());  // [N, K, P, Q]: its "dx"
  if (y.numel() > 0) {
    CpuComputeScope compute(cd);
    if (xc.numel() > 0)
      detail::pick(x, OpKind::conv2d).conv2d_backward_data(xc, wc, y, cp);
    else
      y.fill_(0.0);
  }

  if (needs_grad({&x, &w})) {
    const bool gx = x.requires_grad(), gw = w.requires_grad();
    record(
        op, {x, w}, {&y},
        [ex = gradient_edge(x), ew = gradient_edge(w), saved_x = SavedTensor(xc, "input 'x'"),
         saved_w = SavedTensor(wc, "weight"), gx, gw, cp, cd, cl](const std::vector<Tensor>& g) {
          AutocastScope autocast(cd, cd != DType::f32);
          CpuComputeScope compute(cd);
          const Tensor &xc = saved_x.get(), &wc = saved_w.get();
          if (grad_enabled()) {
            // Recorded: dy [N, K, P, Q] -> dx = conv2d(dy, w) [N, C, H, W],
            // dw = conv2d_weight(input dy, output gradient x) [C, K/groups, R, S].
            const Tensor& dy = g[0];
            const Tensor xg = with_gradient_edge(xc, ex), wg = with_gradient_edge(wc, ew);
            return std::vector<Tensor>{gx ? conv2d(dy, wg, Tensor(), cp) : Tensor(),
                                       gw ? conv2d_weight(dy, xg, wg.shape(), cp) : Tensor()};
          }
          Tensor dy = cl ? detail::channels_last(g[0]) : g[0].contiguous();  // [N, K, P, Q], in the forward's layout
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
        });
  }
  // The bias through the differentiable broadcast add: its gradient is dy summed over N, P, Q.
  if (bias.defined()) return add(y, bias.reshape({1, ys[1], 1, 1}));
  return y;
}

// ---------------------------------------------------------------- conv2d's weight gradient
//
// dw[k, c, r, s] = sum over n, p, q of dy[n, k, p, q] * x[n, g*C/groups + c, p*stride - pad + r*dil, ...]
// (g the group of filter k) is bilinear in x and dy, and its two partial
// adjoints are the other two ops: for a gradient G [K, C/groups, R, S] of dw,
//   dx  = conv_transpose2d(dy, G) [N, C, H, W]   (conv2d's data gradient with G as the filters)
//   ddy = conv2d(x, G)            [N, K, P, Q]   (<G, dw> is linear in dy with these coefficients)

Tensor conv2d_weight(const Tensor& x, const Tensor& dy, const Shape& weight_shape, const Conv2dParams& p) {
  const char* op = "conv2d_weight";
  detail::check_defined(x, op, "input");
  detail::check_defined(dy, op, "output gradient");
  detail::check_same(x, dy, op);
  detail::check_float(x, op);
  detail::check_ndim(x, 4, op, "input [N, C, H, W]");
  detail::check_ndim(dy, 4, op, "output gradient [N, K, P, Q]");
  HPDL_CHECK(weight_shape.size() == 4 && weight_shape[0] >= 1 && weight_shape[1] >= 1 && weight_shape[2] >= 1 &&
                 weight_shape[3] >= 1,
             "{}: weight shape {} must be [K, C/groups, R, S] with every size >= 1", op, shape_str(weight_shape));
  // The forward conv2d(x, w) these are the input and output gradient of: the
  // same checks, and its output shape must be dy's.
  const Tensor w_like = Tensor::empty(weight_shape, x.dtype(), x.device());
  const Shape ys = check_geometry(x, w_like, Tensor(), p, op);
  HPDL_CHECK(dy.shape() == ys, "{}: output gradient {} does not match the convolution of input {} with weight {} ({})",
             op, shape_str(dy.shape()), shape_str(x.shape()), shape_str(weight_shape), shape_str(ys));
  // As in conv2d: rows and columns past the last window are cropped with a
  // differentiable view so oneDNN can describe the problem.
  const int64_t R = weight_shape[2], S = weight_shape[3];
  const int64_t H_used = std::clamp<int64_t>((ys[2] - 1) * p.stride_h + (R - 1) * p.dilation_h + 1 - p.pad_h, 0, x.dim(2));
  const int64_t W_used = std::clamp<int64_t>((ys[3] - 1) * p.stride_w + (S - 1) * p.dilation_w + 1 - p.pad_w, 0, x.dim(3));
  const Tensor xu = (x.device().is_cpu() && (H_used < x.dim(2) || W_used < x.dim(3)))
                        ? x.slice(2, 0, H_used).slice(3, 0, W_used)
                        : x;
  Tensor xc = xu.contiguous().detach(), dyc = dy.contiguous().detach();
  Tensor dw = Tensor::empty(weight_shape, x.dtype(), x.device());
  const DType cd = detail::autocast_cpu_compute(x);  // as in conv2d
  if (xc.numel() > 0 && dyc.numel() > 0) {
    CpuComputeScope compute(cd);
    detail::pick(x, OpKind::conv2d).conv2d_backward_weights(xc, dyc, dw, Tensor(), p);
  } else {
    dw.fill_(0.0);
  }
  if (needs_grad({&xu, &dy})) {
    const bool gx = xu.requires_grad(), gdy = dy.requires_grad();
    // dx reads dy and ddy reads x: each saved only when that gradient is wanted.
    SavedTensor saved_x(gdy ? xu : Tensor(), "input 'x'"), saved_dy(gx ? dy : Tensor(), "output gradient 'dy'");
    record(op, {xu, dy}, {&dw}, [saved_x, saved_dy, x_shape = xu.shape(), gx, gdy, p,
                                 cd](const std::vector<Tensor>& g) {
      AutocastScope autocast(cd, cd != DType::f32);
      // G [K, C/groups, R, S] -> dx [N, C, H, W], ddy [N, K, P, Q]; differentiable in any mode.
      const Tensor& G = g[0];
      return std::vector<Tensor>{gx ? conv2d_data_grad(saved_dy.get(), G, x_shape, p) : Tensor(),
                                 gdy ? conv2d(saved_x.get(), G, Tensor(), p) : Tensor()};
    });
  }
  return dw;
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
