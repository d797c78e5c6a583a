// Losses. Each is a per-element loss followed by a reduction; every one is
// differentiable to any order. nll_loss picks one log-probability per row with
// the backend's gather_rows, whose gradient is scatter_rows (and vice versa).
// cross_entropy = log_softmax + nll with label smoothing (Szegedy et al. 2016,
// "Rethinking the Inception Architecture"): the target distribution is
// (1-eps) one-hot + eps uniform, so loss = (1-eps)*nll + eps*mean_c(-logp).
#include "hpdl/ops/loss.h"

#include <cmath>

#include "hpdl/ops/activation.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"
#include "hpdl/ops/reduce.h"

namespace hpdl {
namespace {

Tensor reduce_loss(const Tensor& l, Reduction r) {
  switch (r) {
    case Reduction::mean: return mean(l);
    case Reduction::sum: return sum(l);
    case Reduction::none: return l;
  }
  return l;
}

void check_targets(const Tensor& x, const Tensor& targets, const char* op) {
  detail::check_defined(targets, op, "targets");
  HPDL_CHECK(x.ndim() == 2, "{}: input must be [N, C], got {}", op, shape_str(x.shape()));
  HPDL_CHECK(targets.dtype() == DType::i64, "{}: targets must be int64 class indices, got {} {}", op,
             dtype_name(targets.dtype()), shape_str(targets.shape()));
  HPDL_CHECK(targets.ndim() == 1 && targets.dim(0) == x.dim(0),
             "{}: targets {} do not match input {} (expected [{}])", op, shape_str(targets.shape()),
             shape_str(x.shape()), x.dim(0));
  HPDL_CHECK(targets.device() == x.device(), "{}: targets on {}, input on {}", op, targets.device().str(),
             x.device().str());
}

Tensor scatter_rows_op(const Tensor& src, const Tensor& index, int64_t C);

// out [M] = x [M, C] at (i, index[i]); gradient: scatter back into [M, C].
Tensor gather_rows_op(const Tensor& x, const Tensor& index) {
  Tensor xc = x.contiguous().detach();
  Tensor out = Tensor::empty({x.dim(0)}, x.dtype(), x.device());
  if (out.numel() > 0) detail::pick(x, OpKind::gather).gather_rows(xc, index, out);
  if (needs_grad({&x})) {
    const int64_t C = x.dim(1);
    record("gather_rows", {x}, {&out}, [saved_index = SavedTensor(index, "index"), C](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{scatter_rows_op(g[0], saved_index.get(), C)};
    });
  }
  return out;
}

// out [M, C] = zeros with out[i, index[i]] = src[i]; gradient: gather.
Tensor scatter_rows_op(const Tensor& src, const Tensor& index, int64_t C) {
  Tensor sc = src.contiguous().detach();
  Tensor out = Tensor::empty({src.dim(0), C}, src.dtype(), src.device());
  if (out.numel() > 0) detail::pick(src, OpKind::gather).scatter_rows(sc, index, out);
  if (needs_grad({&src})) {
    record("scatter_rows", {src}, {&out}, [saved_index = SavedTensor(index, "index")](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{gather_rows_op(g[0], saved_index.get())};
    });
  }
  return out;
}

}  // namespace

Reduction reduction_from_name(const std::string& name) {
  if (name == "mean") return Reduction::mean;
  if (name == "sum") return Reduction::sum;
  if (name == "none") return Reduction::none;
  HPDL_FAIL("unknown loss reduction '{}' (use mean, sum or none)", name);
}

Tensor nll_loss(const Tensor& log_probs, const Tensor& targets, Reduction reduction) {
  detail::check_defined(log_probs, "nll_loss", "log_probs");
  detail::check_float(log_probs, "nll_loss");
  if (log_probs.dtype() == DType::bf16) return nll_loss(log_probs.to(DType::f32), targets, reduction);
  check_targets(log_probs, targets, "nll_loss");
  Tensor t = targets.contiguous();
  return reduce_loss(neg(gather_rows_op(log_probs, t)), reduction);
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing, Reduction reduction) {
  detail::check_defined(logits, "cross_entropy", "logits");
  detail::check_float(logits, "cross_entropy");
  check_targets(logits, targets, "cross_entropy");
  HPDL_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
             "cross_entropy: label_smoothing must be in [0, 1], got {}", label_smoothing);
  Tensor logp = log_softmax(logits, 1);  // [N, C]
  Tensor nll = neg(gather_rows_op(logp, targets.contiguous()));  // [N]
  if (label_smoothing == 0.0) return reduce_loss(nll, reduction);
  Tensor smooth = neg(mean(logp, {1}));  // [N]: cross-entropy against the uniform distribution
  return reduce_loss(add(mul(nll, 1.0 - label_smoothing), mul(smooth, label_smoothing)), reduction);
}

namespace {

// The residual input - target of a regression loss, after its checks; bfloat16
// operands are computed in float32 like every loss.
Tensor regression_residual(const Tensor& input, const Tensor& target, const char* op) {
  detail::check_defined(input, op, "input");
  detail::check_defined(target, op, "target");
  const Tensor a = input.dtype() == DType::bf16 ? input.to(DType::f32) : input;
  const Tensor b = target.dtype() == DType::bf16 ? target.to(DType::f32) : target;
  detail::check_same(a, b, op);
  detail::check_float(a, op);
  HPDL_CHECK(a.shape() == b.shape(), "{}: input {} and target {} differ in shape", op, shape_str(a.shape()),
             shape_str(b.shape()));
  return sub(a, b);
}

}  // namespace

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  return reduce_loss(square(regression_residual(input, target, "mse_loss")), reduction);
}

Tensor l1_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  return reduce_loss(abs(regression_residual(input, target, "l1_loss")), reduction);
}

Tensor huber_loss(const Tensor& input, const Tensor& target, double delta, Reduction reduction) {
  HPDL_CHECK(delta > 0 && std::isfinite(delta), "huber_loss: delta must be positive and finite, got {}", delta);
  Tensor a = abs(regression_residual(input, target, "huber_loss"));
  // excess = max(|r| - delta, 0) and q = |r| - excess = min(|r|, delta), so
  // 0.5 q^2 + delta * excess is 0.5 r^2 inside and delta (|r| - delta/2) outside.
  // Both pieces give d/d|r| = delta at |r| = delta, whichever side relu takes.
  Tensor excess = relu(add(a, -delta));
  Tensor q = sub(a, excess);
  return reduce_loss(add(mul(square(q), 0.5), mul(excess, delta)), reduction);
}

Tensor bce_with_logits(const Tensor& logits, const Tensor& targets, Reduction reduction) {
  detail::check_defined(logits, "bce_with_logits", "logits");
  detail::check_defined(targets, "bce_with_logits", "targets");
  detail::check_same(logits, targets, "bce_with_logits");
  detail::check_float(logits, "bce_with_logits");
  HPDL_CHECK(logits.shape() == targets.shape(), "bce_with_logits: logits {} and targets {} differ in shape",
             shape_str(logits.shape()), shape_str(targets.shape()));
  // l = max(x, 0) - x*t + log(1 + exp(-|x|)): never exponentiates a positive number.
  Tensor l;
  {
    NoGradGuard ng;
    l = add(sub(relu(logits), mul(logits, targets)), log(add(exp(neg(abs(logits))), 1.0)));
  }
  if (needs_grad({&logits, &targets})) {
    // dl/dx = sigmoid(x) - t (smooth, unlike the max/abs pieces); dl/dt = -x.
    record("bce_with_logits", {logits, targets}, {&l}, [saved_x = SavedTensor(logits, "input 'logits'"),
                                                        saved_t = SavedTensor(targets, "input 'targets'")](
                                                           const std::vector<Tensor>& g) {
      const Tensor &logits = saved_x.get(), &targets = saved_t.get();
      Tensor dx = logits.requires_grad() ? mul(g[0], sub(sigmoid(logits), targets)) : Tensor();
      Tensor dt = targets.requires_grad() ? neg(mul(g[0], logits)) : Tensor();
      return std::vector<Tensor>{dx, dt};
    });
  }
  return reduce_loss(l, reduction);
}

}  // namespace hpdl
