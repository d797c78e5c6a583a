// Central-difference gradient check against a random projection of the output.
#include "hpdl/autograd/gradcheck.h"

#include <cmath>

#include "hpdl/autograd/engine.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/reduce.h"
#include "hpdl/ops/shape.h"

namespace hpdl {

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                          double eps, double atol, double rtol) {
  GradcheckResult result;
  std::vector<Tensor> diff_inputs;
  for (auto& t : inputs)
    if (t.defined() && t.requires_grad()) diff_inputs.push_back(t);
  Tensor out = f(inputs);
  Generator gen(1234);
  // Projection weights in [0.5, 1.5): no cancellation, every output element matters.
  Tensor w = Tensor::rand(out.shape(), gen, 0.5, 1.5, out.dtype());
  auto project = [&](const Tensor& o) { return sum(mul(o, w)).item(); };
  std::vector<Tensor> analytic = grad({sum(mul(out, w))}, diff_inputs, {}, false, false, true);

  for (size_t k = 0; k < diff_inputs.size(); ++k) {
    Tensor x = diff_inputs[k];
    HPDL_CHECK(x.is_contiguous(), "gradcheck: input {} must be contiguous", k);
    std::vector<double> an = analytic[k].defined() ? analytic[k].to_vector<double>()
                                                   : std::vector<double>(static_cast<size_t>(x.numel()), 0.0);
    for (int64_t i = 0; i < x.numel(); ++i) {
      double orig;
      auto set = [&](double v) {
        if (x.dtype() == DType::f64) x.data<double>()[i] = v;
        else x.data<float>()[i] = static_cast<float>(v);
      };
      orig = x.dtype() == DType::f64 ? x.data<double>()[i] : x.data<float>()[i];
      double fp, fm;
      {
        // Grad mode stays on: f may itself call grad() (checking a second derivative).
        set(orig + eps);
        fp = project(f(inputs));
        set(orig - eps);
        fm = project(f(inputs));
        set(orig);
      }
      double numeric = (fp - fm) / (2 * eps);
      double err = std::abs(numeric - an[i]);
      result.max_abs_error = std::max(result.max_abs_error, err);
      if (err > atol + rtol * std::abs(numeric) && result.ok) {
        result.ok = false;
        result.message = fmt::format("input {} element {}: analytic {:.8g} vs numeric {:.8g} (error {:.3g})", k, i,
                                     an[i], numeric, err);
      }
    }
  }
  return result;
}

GradcheckResult gradgradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                              double eps, double atol, double rtol) {
  Tensor out = f(inputs);
  Generator gen(4321);
  // v in [-1, 1): the backward must be right for gradients of either sign.
  Tensor v = Tensor::rand(out.shape(), gen, -1.0, 1.0, out.dtype());
  v.set_requires_grad();
  inputs.push_back(v);
  auto first_derivative = [&f](const std::vector<Tensor>& all) {
    std::vector<Tensor> xs(all.begin(), all.end() - 1);
    std::vector<Tensor> diff;
    for (auto& t : xs)
      if (t.defined() && t.requires_grad()) diff.push_back(t);
    Tensor y = f(xs);
    std::vector<Tensor> g = grad({sum(mul(y, all.back()))}, diff, {}, true, /*create_graph=*/true, true);
    std::vector<Tensor> flat;
    for (size_t i = 0; i < g.size(); ++i)
      flat.push_back(g[i].defined() ? g[i].reshape({diff[i].numel()})
                                    : Tensor::zeros({diff[i].numel()}, diff[i].dtype(), diff[i].device()));
    return cat(flat, 0);
  };
  return gradcheck(first_derivative, inputs, eps, atol, rtol);
}

}  // namespace hpdl
