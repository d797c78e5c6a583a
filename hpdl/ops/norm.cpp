// Batch normalization (Ioffe & Szegedy 2015) and layer normalization (Ba,
// Kiros & Hinton 2016). Training-mode forward and backward go through the
// backend's fused kernels (first-order only). Eval-mode batch norm is an affine
// map per channel, so its backward is written with differentiable ops (saliency
// and Grad-CAM differentiate through eval-mode networks). The cross-replica
// (synchronized) variant computes its statistics and backward sums with
// tensor ops in float64 and exchanges them through a caller-given reducer.
#include "hpdl/ops/norm.h"

#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"
#include "hpdl/ops/reduce.h"

#include <cmath>

namespace hpdl {
namespace {

Tensor param_or(const Tensor& t, int64_t n, double value, const Tensor& like) {
  return t.defined() ? t.contiguous().detach() : Tensor::full({n}, value, like.dtype(), like.device());
}

void check_vector(const Tensor& t, int64_t n, const Tensor& x, const char* op, const char* what) {
  if (!t.defined()) return;
  detail::check_same(x, t, op);
  HPDL_CHECK(t.ndim() == 1 && t.dim(0) == n, "{}: {} has shape {}, expected [{}] for input {}", op, what,
             shape_str(t.shape()), n, shape_str(x.shape()));
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps) {
  const char* op = "batch_norm";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  HPDL_CHECK(x.ndim() >= 2, "batch_norm: input must be [N, C, ...], got {}", shape_str(x.shape()));
  const int64_t C = x.dim(1);
  check_vector(gamma, C, x, op, "weight (gamma)");
  check_vector(beta, C, x, op, "bias (beta)");
  check_vector(running_mean, C, x, op, "running_mean");
  check_vector(running_var, C, x, op, "running_var");
  HPDL_CHECK(running_mean.defined() == running_var.defined(),
             "batch_norm: give both running_mean and running_var or neither");
  const bool use_batch_stats = training || !running_mean.defined();
  const int64_t M = x.numel() / std::max<int64_t>(C, 1);
  HPDL_CHECK(!use_batch_stats || M > 1, "batch_norm: training needs more than one value per channel, input {}",
             shape_str(x.shape()));

  Tensor xc = x.contiguous().detach();
  Tensor g = param_or(gamma, C, 1.0, x), b = param_or(beta, C, 0.0, x);
  Tensor y = detail::empty_like(xc);
  Backend& be = detail::pick(x, OpKind::batchnorm);

  if (!use_batch_stats) {
    be.batchnorm_forward_infer(xc, g, b, running_mean.contiguous(), running_var.contiguous(), y, eps);
    if (needs_grad({&x, &gamma, &beta})) {
      // y = gamma * (x - mean) * invstd + beta with fixed statistics: an affine map per channel.
      Shape bs(x.ndim(), 1);
      bs[1] = C;
      std::vector<int64_t> axes;
      for (int i = 0; i < x.ndim(); ++i)
        if (i != 1) axes.push_back(i);
      Tensor invstd, mean;
      {
        NoGradGuard ng;
        invstd = rsqrt(add(running_var.detach(), eps)).reshape(bs);
        mean = running_mean.detach().contiguous().reshape(bs);
      }
      record("batch_norm_eval", {x, gamma, beta}, {&y},
             [x, gamma, beta, invstd, mean, bs, axes](const std::vector<Tensor>& gr) {
               // dy [N, C, ...]; dx = dy * gamma * invstd; dgamma = sum(dy * xhat); dbeta = sum(dy)
               Tensor gm = gamma.defined() ? gamma.reshape(bs) : Tensor::ones(bs, x.dtype(), x.device());
               Tensor dx = x.requires_grad() ? mul(gr[0], mul(gm, invstd)) : Tensor();
               Tensor dgamma = gamma.defined() && gamma.requires_grad()
                                   ? sum(mul(gr[0], mul(sub(x, mean), invstd)), axes)
                                   : Tensor();
               Tensor dbeta = beta.defined() && beta.requires_grad() ? sum(gr[0], axes) : Tensor();
               return std::vector<Tensor>{dx, dgamma, dbeta};
             });
    }
    return y;
  }

  Tensor save_mean = Tensor::empty({C}, x.dtype(), x.device());
  Tensor save_invstd = Tensor::empty({C}, x.dtype(), x.device());
  be.batchnorm_forward_train(xc, g, b, y, save_mean, save_invstd, eps);

  if (training && running_mean.defined()) {
    // running = (1 - momentum) * running + momentum * batch, with the unbiased
    // batch variance var * M / (M - 1), where var = 1/invstd^2 - eps.
    NoGradGuard ng;
    Tensor var_unbiased = mul(add(reciprocal(square(save_invstd)), -eps), static_cast<double>(M) / (M - 1));
    HPDL_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(),
               "batch_norm: running statistics must be contiguous");
    be.axpby(1.0 - momentum, running_mean, momentum, save_mean, running_mean);
    be.axpby(1.0 - momentum, running_var, momentum, var_unbiased, running_var);
  }

  if (needs_grad({&x, &gamma, &beta})) {
    const bool gx = x.requires_grad(), gg = gamma.defined() && gamma.requires_grad(),
               gb = beta.defined() && beta.requires_grad();
    record(
        "batch_norm", {x, gamma, beta}, {&y},
        [xc, g, save_mean, save_invstd, gx, gg, gb](const std::vector<Tensor>& gr) {
          // dy [N, C, ...] -> dx [N, C, ...], dgamma [C], dbeta [C]
          Tensor dy = gr[0].contiguous();
          const int64_t C = xc.dim(1);
          Tensor dx = detail::empty_like(xc);
          Tensor dgamma = Tensor::empty({C}, xc.dtype(), xc.device());
          Tensor dbeta = Tensor::empty({C}, xc.dtype(), xc.device());
          detail::pick(xc, OpKind::batchnorm)
              .batchnorm_backward(xc, dy, g, save_mean, save_invstd, dx, dgamma, dbeta);
          return std::vector<Tensor>{gx ? dx : Tensor(), gg ? dgamma : Tensor(), gb ? dbeta : Tensor()};
        },
        /*first_order_only=*/true);
  }
  return y;
}

namespace {

// Per-channel sums of x over every axis but 1, as float64 host values.
std::vector<double> channel_sums(const Tensor& x, const std::vector<int64_t>& axes) {
  return sum(x.to(DType::f64), axes).to(kCPU).to_vector<double>();
}

// Sums `values` over the replicas through `reduce_sum` (one message).
std::vector<double> reduce_over_replicas(std::vector<double> values, const CrossReplicaSum& reduce_sum) {
  Tensor t = Tensor::from_vector(values, {static_cast<int64_t>(values.size())});
  reduce_sum(t);
  HPDL_CHECK(t.dtype() == DType::f64 && t.numel() == static_cast<int64_t>(values.size()),
             "batch_norm_cross_replica: the reducer changed the statistics tensor (shape {})", shape_str(t.shape()));
  return t.to_vector<double>();
}

Tensor vector_like(const std::vector<double>& v, const Shape& shape, const Tensor& like) {
  return Tensor::from_vector(v, shape).to(like.dtype()).to(like.device());
}

}  // namespace

Tensor batch_norm_cross_replica(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                const Tensor& running_var, const CrossReplicaSum& reduce_sum, double momentum,
                                double eps) {
  const char* op = "batch_norm_cross_replica";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  HPDL_CHECK(x.ndim() >= 2, "{}: input must be [N, C, ...], got {}", op, shape_str(x.shape()));
  HPDL_CHECK(static_cast<bool>(reduce_sum), "{}: no cross-replica reducer given", op);
  const int64_t C = x.dim(1);
  check_vector(gamma, C, x, op, "weight (gamma)");
  check_vector(beta, C, x, op, "bias (beta)");
  check_vector(running_mean, C, x, op, "running_mean");
  check_vector(running_var, C, x, op, "running_var");
  HPDL_CHECK(running_mean.defined() == running_var.defined(), "{}: give both running_mean and running_var or neither",
             op);
  const int64_t M = x.numel() / std::max<int64_t>(C, 1);
  Shape bs(x.ndim(), 1);  // [1, C, 1, ...]: broadcasts a per-channel vector over x
  bs[1] = C;
  std::vector<int64_t> axes;
  for (int i = 0; i < x.ndim(); ++i)
    if (i != 1) axes.push_back(i);

  Tensor xc = x.contiguous().detach();
  Tensor g = param_or(gamma, C, 1.0, x), b = param_or(beta, C, 0.0, x);
  std::vector<double> mean(C), var(C);
  double count = 0;
  {
    NoGradGuard ng;
    // Forward message: [sum x (C), sum x^2 (C), count]. Float64 keeps
    // E[x^2] - E[x]^2 accurate for float32 activations of moderate mean.
    std::vector<double> s1 = channel_sums(xc, axes), s2 = channel_sums(square(xc.to(DType::f64)), axes);
    std::vector<double> msg(2 * C + 1);
    std::copy(s1.begin(), s1.end(), msg.begin());
    std::copy(s2.begin(), s2.end(), msg.begin() + C);
    msg[2 * C] = static_cast<double>(M);
    msg = reduce_over_replicas(std::move(msg), reduce_sum);
    count = msg[2 * C];
    HPDL_CHECK(count > 1, "{}: training needs more than one value per channel over all replicas, got {} (input {})",
               op, count, shape_str(x.shape()));
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = msg[c] / count;
      var[c] = std::max(0.0, msg[C + c] / count - mean[c] * mean[c]);  // biased: normalizes the batch
    }
  }
  Tensor mean_t = vector_like(mean, {C}, x), var_t = vector_like(var, {C}, x);
  Tensor y = detail::empty_like(xc);
  // With the global statistics fixed, normalization is the inference kernel.
  detail::pick(x, OpKind::batchnorm).batchnorm_forward_infer(xc, g, b, mean_t, var_t, y, eps);

  if (running_mean.defined()) {
    // running = (1 - momentum) * running + momentum * global, unbiased variance.
    NoGradGuard ng;
    HPDL_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(),
               "{}: running statistics must be contiguous", op);
    std::vector<double> var_unbiased(C);
    for (int64_t c = 0; c < C; ++c) var_unbiased[c] = var[c] * count / (count - 1);
    Backend& be = detail::pick(x, OpKind::batchnorm);
    be.axpby(1.0 - momentum, running_mean, momentum, vector_like(mean, {C}, running_mean), running_mean);
    be.axpby(1.0 - momentum, running_var, momentum, vector_like(var_unbiased, {C}, running_var), running_var);
  }

  if (needs_grad({&x, &gamma, &beta})) {
    const bool gx = x.requires_grad(), gg = gamma.defined() && gamma.requires_grad(),
               gb = beta.defined() && beta.requires_grad();
    std::vector<double> invstd(C);
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    Tensor mean_b = mean_t.reshape(bs), invstd_b = vector_like(invstd, bs, x);
    record(
        "batch_norm_cross_replica", {x, gamma, beta}, {&y},
        [xc, g, mean_b, invstd_b, bs, axes, count, reduce_sum, gx, gg, gb](const std::vector<Tensor>& gr) {
          // dy [N, C, ...]; xhat = (x - mean) * invstd over the global batch of `count` values per channel.
          //   dbeta  = sum_local(dy),  dgamma = sum_local(dy * xhat)                         [C]
          //   dx = gamma * invstd * (dy - sum_all(dy) / count - xhat * sum_all(dy * xhat) / count)
          NoGradGuard ng;
          const int64_t C = xc.dim(1);
          Tensor dy = gr[0].contiguous();
          Tensor xhat = mul(sub(xc, mean_b), invstd_b);  // [N, C, ...]
          std::vector<double> sdy = channel_sums(dy, axes), sdyx = channel_sums(mul(dy, xhat), axes);
          Tensor dx;
          if (gx) {
            std::vector<double> msg(2 * C);
            std::copy(sdy.begin(), sdy.end(), msg.begin());
            std::copy(sdyx.begin(), sdyx.end(), msg.begin() + C);
            msg = reduce_over_replicas(std::move(msg), reduce_sum);
            std::vector<double> mdy(C), mdyx(C);
            for (int64_t c = 0; c < C; ++c) mdy[c] = msg[c] / count, mdyx[c] = msg[C + c] / count;
            Tensor mdy_b = vector_like(mdy, bs, xc), mdyx_b = vector_like(mdyx, bs, xc);
            dx = mul(mul(g.reshape(bs), invstd_b), sub(sub(dy, mdy_b), mul(xhat, mdyx_b)));
          }
          Tensor dgamma = gg ? vector_like(sdyx, {C}, xc) : Tensor();
          Tensor dbeta = gb ? vector_like(sdy, {C}, xc) : Tensor();
          return std::vector<Tensor>{dx, dgamma, dbeta};
        },
        /*first_order_only=*/true);
  }
  return y;
}

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  const char* op = "layer_norm";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  HPDL_CHECK(x.ndim() >= 1, "layer_norm: input must have at least one dim");
  const int64_t D = x.dim(-1), M = x.numel() / std::max<int64_t>(D, 1);
  check_vector(gamma, D, x, op, "weight (gamma)");
  check_vector(beta, D, x, op, "bias (beta)");
  Tensor xc = x.contiguous().detach().reshape({M, D});
  Tensor g = param_or(gamma, D, 1.0, x), b = param_or(beta, D, 0.0, x);
  Tensor y2 = detail::empty_like(xc);
  Tensor save_mean = Tensor::empty({M}, x.dtype(), x.device());
  Tensor save_invstd = Tensor::empty({M}, x.dtype(), x.device());
  if (xc.numel() > 0) detail::pick(x, OpKind::layernorm).layernorm_forward(xc, g, b, y2, save_mean, save_invstd, eps);
  Tensor y = make_view(y2, x.shape(), contiguous_strides(x.shape()), 0);
  if (needs_grad({&x, &gamma, &beta})) {
    const bool gx = x.requires_grad(), gg = gamma.defined() && gamma.requires_grad(),
               gb = beta.defined() && beta.requires_grad();
    Shape xs = x.shape();
    record(
        "layer_norm", {x, gamma, beta}, {&y},
        [xc, g, save_mean, save_invstd, gx, gg, gb, xs](const std::vector<Tensor>& gr) {
          // dy [..., D] -> dx [..., D], dgamma [D], dbeta [D]
          Tensor dy = gr[0].contiguous().reshape(xc.shape());
          const int64_t D = xc.dim(1);
          Tensor dx = detail::empty_like(xc);
          Tensor dgamma = Tensor::empty({D}, xc.dtype(), xc.device());
          Tensor dbeta = Tensor::empty({D}, xc.dtype(), xc.device());
          detail::pick(xc, OpKind::layernorm)
              .layernorm_backward(xc, dy, g, save_mean, save_invstd, dx, dgamma, dbeta);
          return std::vector<Tensor>{gx ? dx.reshape(xs) : Tensor(), gg ? dgamma : Tensor(), gb ? dbeta : Tensor()};
        },
        /*first_order_only=*/true);
  }
  return y;
}

}  // namespace hpdl
