// lstm and gru: argument checks that name what is wrong, one fused forward call
// into the backend (which saves what backward needs in a reserve tensor), and a
// first-order-only backward node calling the backend's backward-data then
// backward-weights kernels. batch_first is a transposed view on either side.
#include "hpdl/ops/rnn.h"

#include <string>

#include "hpdl/ops/op_impl.h"

namespace hpdl {
namespace {

std::string weight_name(int64_t k, int64_t dirs) {
  static const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  const int64_t cell = k / 4, l = cell / dirs, d = cell % dirs;
  return std::string(kinds[k % 4]) + "_l" + std::to_string(l) + (d ? "_reverse" : "");
}

void check_state(const Tensor& s, const char* what, const Tensor& x, int64_t LD, int64_t N, int64_t H,
                 const char* op) {
  if (!s.defined()) return;
  detail::check_same(x, s, op);
  HPDL_CHECK(s.ndim() == 3 && s.dim(0) == LD && s.dim(1) == N && s.dim(2) == H,
             "{}: {} has shape {}, expected [{}, {}, {}] (num_layers * directions, batch, hidden_size)", op, what,
             shape_str(s.shape()), LD, N, H);
}

Tensor zeros_or(const Tensor& t, const Shape& shape, const Tensor& like) {
  if (t.defined()) return t.contiguous().detach();
  return Tensor::zeros(shape, like.dtype(), like.device());
}

RnnResult rnn_impl(RnnMode mode, const Tensor& x_in, const std::vector<Tensor>& weights, const Tensor& h0,
                   const Tensor& c0, const RnnOptions& o) {
  const bool lstm = mode == RnnMode::lstm;
  const char* op = lstm ? "lstm" : "gru";
  detail::check_defined(x_in, op, "input");
  if (x_in.dtype() == DType::bf16) {
    // bfloat16 activations (autocast): the recurrence runs in float32, the weights' dtype
    // (converted copies are differentiable, so gradients still reach x, h0 and c0).
    auto widen = [](const Tensor& t) { return t.defined() && t.dtype() == DType::bf16 ? t.to(DType::f32) : t; };
    return rnn_impl(mode, widen(x_in), weights, widen(h0), widen(c0), o);
  }
  HPDL_CHECK(x_in.dtype() == DType::f32 || x_in.dtype() == DType::f64,
             "{}: unsupported dtype {} (expected float32 or float64; convert with .to(DType::f32))", op,
             dtype_name(x_in.dtype()));
  HPDL_CHECK(x_in.ndim() == 3, "{}: input must have 3 dims {}, got shape {}", op,
             o.batch_first ? "[N, T, I] (batch_first)" : "[T, N, I]", shape_str(x_in.shape()));
  HPDL_CHECK(o.num_layers >= 1, "{}: num_layers must be >= 1, got {}", op, o.num_layers);
  // Time-major from here on (a view; the op records the transpose when x needs a gradient).
  const Tensor x = o.batch_first ? x_in.transpose(0, 1) : x_in;

  RnnParams p;
  p.mode = mode;
  p.seq_len = x.dim(0), p.batch = x.dim(1), p.input_size = x.dim(2);
  p.num_layers = o.num_layers, p.bidirectional = o.bidirectional;
  HPDL_CHECK(p.seq_len > 0 && p.batch > 0 && p.input_size > 0, "{}: input {} has an empty dimension", op,
             shape_str(x_in.shape()));
  const int64_t D = p.dirs(), G = p.gates(), LD = p.num_layers * D;
  HPDL_CHECK(static_cast<int64_t>(weights.size()) == p.num_weights(),
             "{}: expected {} weight tensors (4 per layer and direction: weight_ih, weight_hh, bias_ih, bias_hh "
             "for {} layer(s), {} direction(s)), got {}",
             op, p.num_weights(), p.num_layers, D, weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    HPDL_CHECK(weights[k].defined(), "{}: {} is an undefined tensor", op, weight_name(k, D));
    detail::check_same(x, weights[k], op);
  }
  HPDL_CHECK(weights[1].ndim() == 2 && weights[1].dim(1) > 0, "{}: weight_hh_l0 must be [{} * hidden_size, hidden_size], got {}",
             op, G, shape_str(weights[1].shape()));
  const int64_t H = weights[1].dim(1);
  p.hidden_size = H;
  for (int64_t k = 0; k < p.num_weights(); ++k) {
    const int64_t l = k / 4 / D;
    const Shape want = k % 4 == 0 ? Shape{G * H, p.layer_input(l)} : k % 4 == 1 ? Shape{G * H, H} : Shape{G * H};
    HPDL_CHECK(weights[k].shape() == want,
               "{}: {} has shape {}, expected {} (hidden_size {} from weight_hh_l0, input_size {}, {} gates{})", op,
               weight_name(k, D), shape_str(weights[k].shape()), shape_str(want), H, p.input_size, G,
               l > 0 ? ", layers above the first read hidden_size * directions features" : "");
  }
  check_state(h0, "h0", x, LD, p.batch, H, op);
  if (lstm)
    check_state(c0, "c0", x, LD, p.batch, H, op);
  else
    HPDL_CHECK(!c0.defined(), "gru: has no cell state, but c0 was given");

  const Shape state_shape{LD, p.batch, H};
  Tensor xc = x.contiguous().detach();
  Tensor hx = zeros_or(h0, state_shape, x);
  Tensor cx = lstm ? zeros_or(c0, state_shape, x) : Tensor();
  std::vector<Tensor> wc;
  for (const Tensor& w : weights) wc.push_back(w.contiguous().detach());

  Backend& be = detail::pick(x, OpKind::rnn);
  Tensor reserve = Tensor::empty({be.rnn_reserve_size(p, xc)}, x.dtype(), x.device());
  Tensor y = Tensor::empty({p.seq_len, p.batch, H * D}, x.dtype(), x.device());
  Tensor hy = Tensor::empty(state_shape, x.dtype(), x.device());
  Tensor cy = lstm ? Tensor::empty(state_shape, x.dtype(), x.device()) : Tensor();
  // CPU under autocast: the LSTM/GRU GEMMs read bfloat16 operands, forward and backward
  // (design decision 71); the gate nonlinearities and states stay float32.
  const DType cd = detail::autocast_cpu_compute(xc);
  {
    CpuComputeScope compute(cd);
    be.rnn_forward_train(p, xc, hx, cx, wc, y, hy, cy, reserve);
  }

  std::vector<Tensor> inputs{x, h0, lstm ? c0 : Tensor()};
  inputs.insert(inputs.end(), weights.begin(), weights.end());
  if (needs_grad(inputs)) {
    std::vector<bool> want(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) want[i] = inputs[i].defined() && inputs[i].requires_grad();
    std::vector<Tensor*> outs{&y, &hy};
    if (lstm) outs.push_back(&cy);
    // The reserve (the workspace of the fused kernel) is the node's own; the rest is checked.
    std::vector<SavedTensor> saved_w;
    for (size_t i = 0; i < wc.size(); ++i) saved_w.emplace_back(wc[i], "weight", static_cast<int>(i));
    record(
        op, inputs, outs,
        [p, saved_x = SavedTensor(xc, "input 'x'"), saved_h = SavedTensor(hx, "initial state 'h0'"),
         saved_c = SavedTensor(cx, "initial state 'c0'"), saved_w, saved_y = SavedTensor(y.detach(), "output"),
         reserve, want, lstm, cd](const std::vector<Tensor>& g) {
          CpuComputeScope compute(cd);
          const Tensor &xc = saved_x.get(), &hx = saved_h.get(), &cx = saved_c.get(), &yd = saved_y.get();
          std::vector<Tensor> wc;
          for (const SavedTensor& w : saved_w) wc.push_back(w.get());
          // dy [T, N, H*dirs], dh_n and dc_n [L*dirs, N, H] (zeros where no gradient arrived)
          auto grad_or_zeros = [](const Tensor& gi, const Tensor& like) {
            return gi.defined() ? gi.contiguous().to(like.dtype()) : Tensor::zeros(like.shape(), like.dtype(), like.device());
          };
          Tensor dy = grad_or_zeros(g[0], yd);
          Tensor dhy = grad_or_zeros(g[1], hx);
          Tensor dcy = lstm ? grad_or_zeros(g[2], cx) : Tensor();
          Backend& be = detail::pick(xc, OpKind::rnn);
          Tensor dx = Tensor::empty(xc.shape(), xc.dtype(), xc.device());
          Tensor dhx = Tensor::empty(hx.shape(), hx.dtype(), hx.device());
          Tensor dcx = lstm ? Tensor::empty(cx.shape(), cx.dtype(), cx.device()) : Tensor();
          be.rnn_backward_data(p, xc, hx, cx, wc, yd, dy, dhy, dcy, reserve, dx, dhx, dcx);
          std::vector<Tensor> out{want[0] ? dx : Tensor(), want[1] ? dhx : Tensor(), want[2] ? dcx : Tensor()};
          bool any_weight = false;
          for (size_t i = 3; i < want.size(); ++i) any_weight = any_weight || want[i];
          if (any_weight) {
            std::vector<Tensor> dw;
            for (const Tensor& w : wc) dw.push_back(Tensor::empty(w.shape(), w.dtype(), w.device()));
            be.rnn_backward_weights(p, xc, hx, wc, yd, reserve, dw);
            for (size_t i = 0; i < dw.size(); ++i) out.push_back(want[3 + i] ? dw[i] : Tensor());
          } else {
            out.resize(want.size());
          }
          return out;
        },
        /*first_order_only=*/true);
  }
  return {o.batch_first ? y.transpose(0, 1) : y, hy, cy};
}

}  // namespace

RnnResult lstm(const Tensor& x, const std::vector<Tensor>& weights, const Tensor& h0, const Tensor& c0,
               const RnnOptions& options) {
  return rnn_impl(RnnMode::lstm, x, weights, h0, c0, options);
}

RnnResult gru(const Tensor& x, const std::vector<Tensor>& weights, const Tensor& h0, const RnnOptions& options) {
  return rnn_impl(RnnMode::gru, x, weights, h0, Tensor(), options);
}

}  // namespace hpdl
