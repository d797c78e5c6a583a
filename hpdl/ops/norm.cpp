// Batch normalization (Ioffe & Szegedy 2015), layer normalization (Ba, Kiros &
// Hinton 2016) and group normalization (Wu & He 2018). Training-mode forward
// and backward go through the backend's fused kernels; when the backward is
// recorded (create_graph) the same gradients come from differentiable ops
// (normalize_backward_composed), so every order works. Eval-mode batch norm is an affine
// map per channel, so its backward is written with differentiable ops (saliency
// and Grad-CAM differentiate through eval-mode networks). The cross-replica
// (synchronized) variant reuses the same fused kernels and exchanges only
// per-channel sums, in float64, through a caller-given reducer.
#include "hpdl/ops/norm.h"

#include "hpdl/ops/activation.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/op_impl.h"
#include "hpdl/ops/reduce.h"

#include <cmath>

namespace hpdl {
namespace {

// Statistics and parameters of a bfloat16 input are float32 (as cuDNN's and
// PyTorch's mixed-precision batch norm keep them).
DType stat_dtype(const Tensor& x) { return x.dtype() == DType::bf16 ? DType::f32 : x.dtype(); }

Tensor param_or(const Tensor& t, int64_t n, double value, const Tensor& like) {
  return t.defined() ? t.contiguous().detach() : Tensor::full({n}, value, stat_dtype(like), like.device());
}

void check_vector(const Tensor& t, int64_t n, const Tensor& x, const char* op, const char* what) {
  if (!t.defined()) return;
  if (x.dtype() == DType::bf16 && t.dtype() == DType::f32)
    HPDL_CHECK(x.device() == t.device(), "{}: {} is on {} but the input on {}", op, what, t.device().str(),
               x.device().str());
  else
    detail::check_same(x, t, op);
  HPDL_CHECK(t.ndim() == 1 && t.dim(0) == n, "{}: {} has shape {}, expected [{}] for input {}", op, what,
             shape_str(t.shape()), n, shape_str(x.shape()));
}

// The gradients of y = xhat * gamma + beta, xhat = (x - mean) * invstd, with mean and the biased
// variance over `stat_axes` of x, written with differentiable ops (create_graph). x carries its
// gradient edge; gamma_b is gamma shaped to broadcast against x (undefined: 1). The statistics are
// recomputed from x, so every order of derivative works. dgamma and dbeta sum over `param_axes`.
//   g = dy * gamma;  dx = invstd * (g - mean(g) - xhat * mean(g * xhat));
//   dgamma = sum(dy * xhat);  dbeta = sum(dy)
struct NormGrads {
  Tensor dx, dgamma, dbeta;
};
NormGrads normalize_backward_composed(const Tensor& x, const Tensor& dy, const Tensor& gamma_b,
                                      const std::vector<int64_t>& stat_axes, const std::vector<int64_t>& param_axes,
                                      double eps, bool gx, bool gg, bool gb) {
  const Tensor d = sub(x, mean(x, stat_axes, true));                   // x's shape
  const Tensor invstd = rsqrt(add(mean(mul(d, d), stat_axes, true), eps));  // 1 along stat_axes
  const Tensor xhat = mul(d, invstd);
  NormGrads r;
  if (gx) {
    const Tensor g = gamma_b.defined() ? mul(dy, gamma_b) : dy;
    r.dx = mul(invstd, sub(sub(g, mean(g, stat_axes, true)), mul(xhat, mean(mul(g, xhat), stat_axes, true))));
  }
  if (gg) r.dgamma = sum(mul(dy, xhat), param_axes);
  if (gb) r.dbeta = sum(dy, param_axes);
  return r;
}

// `values` (a detached copy of an input) rejoined with that input's gradient edge; undefined stays so.
Tensor rejoin(const Tensor& values, const Edge& edge) {
  return values.defined() ? with_gradient_edge(values, edge) : values;
}

}  // namespace

namespace {

// batch_norm, and with relu = true max(0, batch_norm(x)) fused into the backend's passes in training;
// with a residual (relu = true), max(0, batch_norm(x) + residual).
Tensor batch_norm_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                       const Tensor& running_var, bool training, double momentum, double eps, bool relu,
                       const Tensor& residual = Tensor()) {
  const bool res = residual.defined();
  const char* op = res ? "batch_norm_add_relu" : relu ? "batch_norm_relu" : "batch_norm";
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

  // Channels-last input (autocast on CUDA, cpu_channels_last() on the CPU) stays channels-last
  // for the mixed-precision kernels and the CPU's NHWC kernels.
  Tensor xc = (x.dtype() == DType::bf16 || x.device().is_cpu() ? detail::dense(x) : x.contiguous()).detach();
  Tensor g = param_or(gamma, C, 1.0, x), b = param_or(beta, C, 0.0, x);
  Tensor y = detail::empty_like(xc);
  Backend& be = detail::pick(x, OpKind::batchnorm);

  if (res) {
    HPDL_CHECK(residual.shape() == x.shape(), "batch_norm_add_relu: residual has shape {}, the input {}",
               shape_str(residual.shape()), shape_str(x.shape()));
    detail::check_same(x, residual, op);
  }
  const bool graph = res ? needs_grad({&x, &gamma, &beta, &residual}) : needs_grad({&x, &gamma, &beta});
  if (!use_batch_stats && relu && !graph) {
    // Inference without a graph: the ReLU (and the residual) in the batch norm's output pass.
    be.batchnorm_forward_infer_relu(xc, res ? detail::dense_as(residual, xc).detach() : Tensor(), g, b,
                                    running_mean.contiguous(), running_var.contiguous(), y, eps);
    return y;
  }
  if (!use_batch_stats && res)
    return add_relu(batch_norm_impl(x, gamma, beta, running_mean, running_var, training, momentum, eps, false),
                    residual);
  if (!use_batch_stats && relu) return hpdl::relu(batch_norm_impl(x, gamma, beta, running_mean, running_var,
                                                                   training, momentum, eps, false));
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
      // dx reads gamma (and the running variance, copied into invstd); dgamma reads x and the
      // running mean (a view of it): each saved only when that gradient is wanted.
      const bool gx = x.requires_grad(), gg = gamma.defined() && gamma.requires_grad(),
                 gb = beta.defined() && beta.requires_grad();
      record("batch_norm_eval", {x, gamma, beta}, {&y},
             [saved_x = SavedTensor(gg ? x : Tensor(), "input 'x'"),
              saved_g = SavedTensor(gx ? gamma : Tensor(), "weight (gamma)"), saved_mean = SavedTensor(gg ? mean : Tensor(), "running_mean"), invstd, bs, axes, gx, gg, gb,
              sd = stat_dtype(x), xd = x.dtype(), dev = x.device()](const std::vector<Tensor>& gr) {
               // dy [N, C, ...]; dx = dy * gamma * invstd; dgamma = sum(dy * xhat); dbeta = sum(dy)
               const Tensor& gamma = saved_g.get();
               Tensor gm = gamma.defined() ? gamma.reshape(bs) : Tensor::ones(bs, sd, dev);
               Tensor dx = gx ? mul(gr[0], mul(gm, invstd)).to(xd) : Tensor();
               Tensor dgamma = gg ? sum(mul(gr[0], mul(sub(saved_x.get(), saved_mean.get()), invstd)), axes) : Tensor();
               Tensor dbeta = gb ? sum(gr[0], axes) : Tensor();
               return std::vector<Tensor>{dx, dgamma, dbeta};
             });
    }
    return y;
  }

  Tensor save_mean = Tensor::empty({C}, stat_dtype(x), x.device());
  Tensor save_invstd = Tensor::empty({C}, stat_dtype(x), x.device());
  if (res)
    be.batchnorm_add_relu_forward_train(xc, detail::dense_as(residual, xc).detach(), g, b, y, save_mean, save_invstd,
                                        eps);
  else if (relu)
    be.batchnorm_relu_forward_train(xc, g, b, y, save_mean, save_invstd, eps);
  else
    be.batchnorm_forward_train(xc, g, b, y, save_mean, save_invstd, eps);

  if (training && running_mean.defined()) {
    // running = (1 - momentum) * running + momentum * batch, with the unbiased
    // batch variance var * M / (M - 1), where var = 1/invstd^2 - eps.
    HPDL_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(),
               "batch_norm: running statistics must be contiguous");
    be.batchnorm_update_running(running_mean, running_var, save_mean, save_invstd, momentum, eps, M);
    running_mean.bump_version();  // in-place writes: an evaluation-mode graph that saved them sees it
    running_var.bump_version();
  }

  if (res ? needs_grad({&x, &gamma, &beta, &residual}) : needs_grad({&x, &gamma, &beta})) {
    const bool gx = x.requires_grad(), gg = gamma.defined() && gamma.requires_grad(),
               gb = beta.defined() && beta.requires_grad(), gr_res = res && residual.requires_grad();
    // The ReLU mask (detached: no cycle through y's own node). save_mean and save_invstd are
    // the node's own (no one else can write them); x, gamma, beta and y are checked.
    SavedTensor saved_y(relu ? y.detach() : Tensor(), "output");
    std::vector<Tensor> inputs{x, gamma, beta};
    if (res) inputs.push_back(residual);
    record(
        op, inputs, {&y},
        [saved_x = SavedTensor(xc, "input 'x'"), saved_g = SavedTensor(g, "weight (gamma)"),
         saved_b = SavedTensor(b, "bias (beta)"), saved_y, save_mean, save_invstd, gx, gg, gb, gr_res, relu, res, eps,
         ex = gradient_edge(x), eg = gradient_edge(gamma)](const std::vector<Tensor>& gr) {
          const Tensor &xc = saved_x.get(), &g = saved_g.get(), &yd = saved_y.get();
          if (grad_enabled()) {
            // Recorded (create_graph): the same gradients from differentiable ops, the batch
            // statistics recomputed from x (rejoined with its edge), in the statistics' dtype.
            // The ReLU's mask y > 0 is a constant (its derivative is zero almost everywhere);
            // the masked dy is also the residual's gradient.
            const DType sd = stat_dtype(xc);
            const Tensor dy = relu ? mul(gr[0], gt(yd, 0.0)) : gr[0];
            Shape bs(xc.ndim(), 1);
            bs[1] = xc.dim(1);
            std::vector<int64_t> axes;  // all but the channel axis
            for (int i = 0; i < xc.ndim(); ++i)
              if (i != 1) axes.push_back(i);
            const Tensor gm = rejoin(g, eg).reshape(bs);
            NormGrads r = normalize_backward_composed(rejoin(xc, ex).to(sd), dy.to(sd), gm, axes, axes, eps, gx, gg, gb);
            std::vector<Tensor> out{gx ? r.dx.to(xc.dtype()) : Tensor(), r.dgamma, r.dbeta};
            if (res) out.push_back(gr_res ? dy : Tensor());
            return out;
          }
          // dy [N, C, ...] -> dx [N, C, ...], dgamma [C], dbeta [C] (and dresidual [N, C, ...])
          Tensor dy = detail::dense_as(gr[0], xc);
          const int64_t C = xc.dim(1);
          Tensor dx = detail::empty_like(xc);
          Tensor dgamma = Tensor::empty({C}, stat_dtype(xc), xc.device());
          Tensor dbeta = Tensor::empty({C}, stat_dtype(xc), xc.device());
          Backend& be = detail::pick(xc, OpKind::batchnorm);
          Tensor masked;
          if (res) {
            // One masked dy serves both: it is the residual's gradient and the batch norm's dy.
            masked = detail::empty_like(xc);
            be.binary(BinaryOp::relu_grad, dy, yd, masked, 0);
            be.batchnorm_backward(xc, masked, g, save_mean, save_invstd, dx, dgamma, dbeta);
          } else if (relu) {
            be.batchnorm_relu_backward(xc, yd, dy, g, saved_b.get(), save_mean, save_invstd, dx, dgamma, dbeta);
          } else {
            be.batchnorm_backward(xc, dy, g, save_mean, save_invstd, dx, dgamma, dbeta);
          }
          std::vector<Tensor> out{gx ? dx : Tensor(), gg ? dgamma : Tensor(), gb ? dbeta : Tensor()};
          if (res) out.push_back(gr_res ? masked : Tensor());
          return out;
        });
  }
  return y;
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps) {
  return batch_norm_impl(x, gamma, beta, running_mean, running_var, training, momentum, eps, false);
}

Tensor batch_norm_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                       const Tensor& running_var, bool training, double momentum, double eps) {
  return batch_norm_impl(x, gamma, beta, running_mean, running_var, training, momentum, eps, true);
}

Tensor batch_norm_add_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma, const Tensor& beta,
                           const Tensor& running_mean, const Tensor& running_var, bool training, double momentum,
                           double eps) {
  detail::check_defined(residual, "batch_norm_add_relu", "residual");
  return batch_norm_impl(x, gamma, beta, running_mean, running_var, training, momentum, eps, true, residual);
}

namespace {

std::vector<double> host_values(const Tensor& t) { return t.to(kCPU).to_vector<double>(); }

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

// The fused kernels do the passes over the activations; only per-channel
// vectors cross the replicas. Forward: the training kernel gives this
// replica's mean and 1/sqrt(var + eps), from which the sums are
//   sum x = M mean_r,   sum x^2 = M (var_r + mean_r^2)      (M values per channel here)
// and, added over replicas (count Mg), the global mean and biased variance
//   mean = sum x / Mg,  var = sum x^2 / Mg - mean^2         (in double)
// with which the inference kernel normalizes. Backward: the backward kernel,
// given the global mean and invstd, returns this replica's sums
//   d1 = sum dy,  d2 = sum dy * xhat
// and dx_r = gamma invstd (dy - d1/M - xhat d2/M). The global gradient,
//   dx = gamma invstd (dy - S1/Mg - xhat S2/Mg)              (S1, S2: d1, d2 added over replicas)
// differs from dx_r by a per-channel affine function of x:
//   dx = dx_r + B x + A,  B = gamma invstd^2 (d2/M - S2/Mg),  A = gamma invstd (d1/M - S1/Mg) - B mean.
Tensor batch_norm_cross_replica(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                                const Tensor& running_var, const CrossReplicaSum& reduce_sum, double momentum,
                                double eps) {
  const char* op = "batch_norm_cross_replica";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  if (x.dtype() == DType::bf16)  // widened: the per-channel exchange works in float32/float64
    return batch_norm_cross_replica(x.to(DType::f32), gamma, beta, running_mean, running_var, reduce_sum, momentum, eps)
        .to(DType::bf16);
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

  Tensor xc = x.contiguous().detach();
  Tensor g = param_or(gamma, C, 1.0, x), b = param_or(beta, C, 0.0, x);
  Backend& be = detail::pick(x, OpKind::batchnorm);
  Tensor y = detail::empty_like(xc);
  std::vector<double> mean(C), var(C);
  double count = 0;
  {
    NoGradGuard ng;
    std::vector<double> msg(2 * C + 1, 0.0);
    if (M > 0) {
      Tensor local_mean = Tensor::empty({C}, x.dtype(), x.device());
      Tensor local_invstd = Tensor::empty({C}, x.dtype(), x.device());
      be.batchnorm_forward_train(xc, g, b, y, local_mean, local_invstd, eps);
      std::vector<double> lm = host_values(local_mean), li = host_values(local_invstd);
      for (int64_t c = 0; c < C; ++c) {
        const double local_var = std::max(0.0, 1.0 / (li[c] * li[c]) - eps);
        msg[c] = M * lm[c];
        msg[C + c] = M * (local_var + lm[c] * lm[c]);
      }
    }
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
  const bool alone = count == static_cast<double>(M);  // this replica holds the whole batch: y is final
  Tensor mean_t = vector_like(mean, {C}, x);
  if (!alone && M > 0) be.batchnorm_forward_infer(xc, g, b, mean_t, vector_like(var, {C}, x), y, eps);

  if (running_mean.defined()) {
    // running = (1 - momentum) * running + momentum * global, unbiased variance.
    NoGradGuard ng;
    HPDL_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(),
               "{}: running statistics must be contiguous", op);
    std::vector<double> var_unbiased(C);
    for (int64_t c = 0; c < C; ++c) var_unbiased[c] = var[c] * count / (count - 1);
    be.axpby(1.0 - momentum, running_mean, momentum, vector_like(mean, {C}, running_mean), running_mean);
    be.axpby(1.0 - momentum, running_var, momentum, vector_like(var_unbiased, {C}, running_var), running_var);
    running_mean.bump_version();
    running_var.bump_version();
  }

  if (needs_grad({&x, &gamma, &beta})) {
    const bool gx = x.requires_grad(), gg = gamma.defined() && gamma.requires_grad(),
               gb = beta.defined() && beta.requires_grad();
    std::vector<double> invstd(C);
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    Tensor invstd_t = vector_like(invstd, {C}, x);
    record(
        "batch_norm_cross_replica", {x, gamma, beta}, {&y},
        [saved_x = SavedTensor(xc, "input 'x'"), saved_g = SavedTensor(g, "weight (gamma)"), mean, invstd, mean_t,
         invstd_t, M, count, alone, reduce_sum, gx, gg, gb](const std::vector<Tensor>& gr) {
          // dy [N, C, ...] -> dx [N, C, ...], dgamma [C], dbeta [C] (this replica's sums)
          NoGradGuard ng;
          const Tensor &xc = saved_x.get(), &g = saved_g.get();
          const int64_t C = xc.dim(1);
          Tensor dy = gr[0].contiguous();
          Tensor dx = detail::empty_like(xc);
          Tensor d2 = Tensor::zeros({C}, xc.dtype(), xc.device()), d1 = Tensor::zeros({C}, xc.dtype(), xc.device());
          if (M > 0) detail::pick(xc, OpKind::batchnorm).batchnorm_backward(xc, dy, g, mean_t, invstd_t, dx, d2, d1);
          if (gx) {
            std::vector<double> l1 = host_values(d1), l2 = host_values(d2), msg(2 * C);
            std::copy(l1.begin(), l1.end(), msg.begin());
            std::copy(l2.begin(), l2.end(), msg.begin() + C);
            msg = reduce_over_replicas(std::move(msg), reduce_sum);
            if (!alone && M > 0) {
              std::vector<double> gv = host_values(g), A(C), B(C);
              for (int64_t c = 0; c < C; ++c) {
                B[c] = gv[c] * invstd[c] * invstd[c] * (l2[c] / M - msg[C + c] / count);
                A[c] = gv[c] * invstd[c] * (l1[c] / M - msg[c] / count) - B[c] * mean[c];
              }
              // B x + A per channel is what the inference kernel computes with
              // gamma = B, beta = A, mean 0, var 1, eps 0: one fused pass.
              Tensor corr = detail::empty_like(xc);
              detail::pick(xc, OpKind::batchnorm)
                  .batchnorm_forward_infer(xc, vector_like(B, {C}, xc), vector_like(A, {C}, xc),
                                           Tensor::zeros({C}, xc.dtype(), xc.device()),
                                           Tensor::ones({C}, xc.dtype(), xc.device()), corr, 0.0);
              dx = add(dx, corr);
            }
          }
          return std::vector<Tensor>{gx ? dx : Tensor(), gg ? d2 : Tensor(), gb ? d1 : Tensor()};
        },
        /*first_order_only=*/true);
  }
  return y;
}

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  const char* op = "layer_norm";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  if (x.dtype() == DType::bf16) return layer_norm(x.to(DType::f32), gamma, beta, eps).to(DType::bf16);
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
        [saved_x = SavedTensor(xc, "input 'x'"), saved_g = SavedTensor(g, "weight (gamma)"), save_mean, save_invstd,
         gx, gg, gb, xs, eps, ex = gradient_edge(x), eg = gradient_edge(gamma)](const std::vector<Tensor>& gr) {
          const Tensor &xc = saved_x.get(), &g = saved_g.get();
          if (grad_enabled()) {
            // Recorded (create_graph): dy [..., D] -> the same gradients from differentiable ops over
            // x [M, D] (rejoined with its edge), the row statistics recomputed.
            const Tensor xg = rejoin(xc.reshape(xs), ex).reshape(xc.shape());
            NormGrads r = normalize_backward_composed(xg, gr[0].reshape(xc.shape()), rejoin(g, eg), {1}, {0}, eps,
                                                      gx, gg, gb);
            return std::vector<Tensor>{gx ? r.dx.reshape(xs) : Tensor(), r.dgamma, r.dbeta};
          }
          // dy [..., D] -> dx [..., D], dgamma [D], dbeta [D]
          Tensor dy = gr[0].contiguous().reshape(xc.shape());
          const int64_t D = xc.dim(1);
          Tensor dx = detail::empty_like(xc);
          Tensor dgamma = Tensor::empty({D}, xc.dtype(), xc.device());
          Tensor dbeta = Tensor::empty({D}, xc.dtype(), xc.device());
          detail::pick(xc, OpKind::layernorm)
              .layernorm_backward(xc, dy, g, save_mean, save_invstd, dx, dgamma, dbeta);
          return std::vector<Tensor>{gx ? dx.reshape(xs) : Tensor(), gg ? dgamma : Tensor(), gb ? dbeta : Tensor()};
        });
  }
  return y;
}

// Group normalization (Wu & He 2018), from two backend kernels on views of x [N, C, S] (S: the
// spatial size), with K = C/G * S values per (sample, group):
//   forward:  xhat = the layer-norm kernel with gamma 1, beta 0 over the rows of x [N*G, K]
//             (which also gives each row's mean and invstd); y = xhat * gamma + beta per channel,
//             the inference batch-norm kernel over [N, C, S, 1] with mean 0, variance 1, eps 0.
//   backward: dxhat = dy * gamma (that kernel again, beta 0); dx = the layer-norm backward kernel
//             with gamma 1 over the rows; dgamma = sum(dy * xhat), dbeta = sum(dy) over N and S.
// So CUDA runs it with the kernels it has for batch and layer norm. Recorded backward
// (create_graph): normalize_backward_composed over x [N, G, C/G, S].
Tensor group_norm(const Tensor& x, int64_t num_groups, const Tensor& gamma, const Tensor& beta, double eps) {
  const char* op = "group_norm";
  detail::check_defined(x, op, "input");
  detail::check_float(x, op);
  if (x.dtype() == DType::bf16) return group_norm(x.to(DType::f32), num_groups, gamma, beta, eps).to(DType::bf16);
  HPDL_CHECK(x.ndim() >= 2, "group_norm: input must be [N, C, ...], got {}", shape_str(x.shape()));
  const int64_t N = x.dim(0), C = x.dim(1), G = num_groups;
  HPDL_CHECK(G > 0 && C % G == 0, "group_norm: the {} channels of input {} do not split into num_groups = {} groups", C,
             shape_str(x.shape()), G);
  HPDL_CHECK(eps >= 0 && std::isfinite(eps), "group_norm: eps must be finite and >= 0, got {}", eps);
  check_vector(gamma, C, x, op, "weight (gamma)");
  check_vector(beta, C, x, op, "bias (beta)");
  int64_t S = 1;
  for (int i = 2; i < x.ndim(); ++i) S *= x.dim(i);
  const int64_t K = C / G * S;
  const Shape rows{N * G, K}, planes{N, C, S, 1};
  Tensor xc = x.contiguous().detach();
  Tensor g = param_or(gamma, C, 1.0, x), b = param_or(beta, C, 0.0, x);
  const bool affine = gamma.defined() || beta.defined();
  Tensor xhat = detail::empty_like(xc);
  Tensor y = affine ? detail::empty_like(xc) : xhat;
  Tensor save_mean = Tensor::empty({N * G}, x.dtype(), x.device());
  Tensor save_invstd = Tensor::empty({N * G}, x.dtype(), x.device());
  const Tensor ones_k = Tensor::ones({K}, x.dtype(), x.device()), zeros_k = Tensor::zeros({K}, x.dtype(), x.device());
  const Tensor ones_c = Tensor::ones({C}, x.dtype(), x.device()), zeros_c = Tensor::zeros({C}, x.dtype(), x.device());
  if (xc.numel() > 0) {
    detail::pick(x, OpKind::layernorm)
        .layernorm_forward(xc.reshape(rows), ones_k, zeros_k, xhat.reshape(rows), save_mean, save_invstd, eps);
    if (affine)
      detail::pick(x, OpKind::batchnorm)
          .batchnorm_forward_infer(xhat.reshape(planes), g, b, zeros_c, ones_c, y.reshape(planes), 0.0);
  }
  if (needs_grad({&x, &gamma, &beta})) {
    const bool gx = x.requires_grad(), gg = gamma.defined() && gamma.requires_grad(),
               gb = beta.defined() && beta.requires_grad(), has_gamma = gamma.defined();
    // xhat is y itself without gamma and beta: checked as the output then.
    record(
        "group_norm", {x, gamma, beta}, {&y},
        [saved_x = SavedTensor(xc, "input 'x'"), saved_xhat = SavedTensor(xhat.detach(), affine ? "xhat" : "output"),
         saved_g = SavedTensor(g, "weight (gamma)"), save_mean, save_invstd, ones_k, zeros_k, ones_c, zeros_c, N, C,
         G, S, K, eps, gx, gg, gb, has_gamma, ex = gradient_edge(x),
         eg = gradient_edge(gamma)](const std::vector<Tensor>& gr) {
          const Tensor &xc = saved_x.get(), &g = saved_g.get();
          if (grad_enabled()) {
            // Recorded (create_graph): x [N, C, ...] as [N, G, C/G, S], statistics over the last
            // two axes, gamma [1, G, C/G, 1]; dgamma and dbeta sum over N and S.
            const Shape gs{N, G, C / G, S};
            NormGrads r = normalize_backward_composed(rejoin(xc, ex).reshape(gs), gr[0].reshape(gs),
                                                      rejoin(g, eg).reshape({1, G, C / G, 1}), {2, 3}, {0, 3}, eps,
                                                      gx, gg, gb);
            return std::vector<Tensor>{gx ? r.dx.reshape(xc.shape()) : Tensor(), gg ? r.dgamma.reshape({C}) : Tensor(),
                                       gb ? r.dbeta.reshape({C}) : Tensor()};
          }
          // dy [N, C, ...] -> dx [N, C, ...], dgamma [C], dbeta [C]
          const Tensor dy = gr[0].contiguous();
          const Shape rows{N * G, K}, planes{N, C, S, 1};
          Tensor dx, dgamma, dbeta;
          if (gg) dgamma = sum(mul(dy.reshape(planes), saved_xhat.get().reshape(planes)), {0, 2, 3});
          if (gb) dbeta = sum(dy.reshape(planes), {0, 2, 3});
          if (gx) {
            dx = detail::empty_like(xc);
            if (xc.numel() > 0) {
              Tensor dxhat = dy;
              if (has_gamma) {
                dxhat = detail::empty_like(dy);
                detail::pick(xc, OpKind::batchnorm)
                    .batchnorm_forward_infer(dy.reshape(planes), g, zeros_c, zeros_c, ones_c, dxhat.reshape(planes),
                                             0.0);
              }
              // The kernel's own dgamma and dbeta (over the rows) are not group norm's; discarded.
              Tensor unused_g = Tensor::empty({K}, xc.dtype(), xc.device());
              Tensor unused_b = Tensor::empty({K}, xc.dtype(), xc.device());
              detail::pick(xc, OpKind::layernorm)
                  .layernorm_backward(xc.reshape(rows), dxhat.reshape(rows), ones_k, save_mean, save_invstd,
                                      dx.reshape(rows), unused_g, unused_b);
            }
          }
          return std::vector<Tensor>{dx, dgamma, dbeta};
        });
  }
  return y;
}

}  // namespace hpdl
