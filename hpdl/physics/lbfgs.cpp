// L-BFGS for PINN refinement (Liu & Nocedal 1989; the two-loop recursion is
// Algorithm 7.4 of Nocedal & Wright, "Numerical Optimization"). PINN losses
// are smooth and deterministic on fixed collocation points, where a
// quasi-Newton method converges much further than Adam in the same time.
// The parameters are flattened into one double vector per evaluation.
#include <algorithm>
#include <cmath>
#include <deque>

#include "hpdl/physics/pinn.h"

namespace hpdl::physics {
namespace {

using Vec = std::vector<double>;

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// a += s * b
void axpy(Vec& a, double s, const Vec& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += s * b[i];
}

class Flat {
 public:
  explicit Flat(const std::vector<Tensor>& params) : params_(params) {
    for (const auto& p : params_) {
      HPDL_CHECK(p.defined() && p.requires_grad() && dtype_is_float(p.dtype()),
                 "physics::lbfgs_minimize: every parameter must be a floating tensor that requires grad");
      size_ += static_cast<size_t>(p.numel());
    }
    HPDL_CHECK(size_ > 0, "physics::lbfgs_minimize: no parameters to optimise");
  }
  size_t size() const { return size_; }
  Vec values() const { return gather([](const Tensor& p) { return p; }); }
  Vec grads() const { return gather([](const Tensor& p) { return p.grad(); }); }
  void set(const Vec& w) {
    size_t at = 0;
    for (const auto& p : params_) {
      const auto n = static_cast<size_t>(p.numel());
      Tensor src = Tensor::from_vector<double>(Vec(w.begin() + at, w.begin() + at + n), p.shape());
      Tensor dst = p;  // a handle: copy_ writes into the parameter's own storage
      dst.copy_(src);
      at += n;
    }
  }

 private:
  template <typename Get>
  Vec gather(Get get) const {
    Vec v;
    v.reserve(size_);
    for (const auto& p : params_) {
      Tensor t = get(p);
      if (!t.defined()) {
        v.insert(v.end(), static_cast<size_t>(p.numel()), 0.0);  // the loss does not reach this parameter
        continue;
      }
      auto part = t.to_vector<double>();
      v.insert(v.end(), part.begin(), part.end());
    }
    return v;
  }
  std::vector<Tensor> params_;
  size_t size_ = 0;
};

}  // namespace

LbfgsResult lbfgs_minimize(const std::vector<Tensor>& params, const std::function<Tensor()>& f,
                           const LbfgsOptions& options, const std::function<void(int64_t, double)>& on_iteration) {
  HPDL_CHECK(f != nullptr, "physics::lbfgs_minimize: no objective given");
  HPDL_CHECK(options.max_iterations >= 0 && options.history > 0,
             "physics::lbfgs_minimize: max_iterations ({}) must be >= 0 and history ({}) > 0",
             options.max_iterations, options.history);
  Flat flat(params);
  LbfgsResult result;
  // f and its gradient at the current parameter values.
  auto evaluate = [&](Vec& grad_out) {
    for (const auto& p : params) Tensor(p).zero_grad();
    Tensor loss = f();
    HPDL_CHECK(loss.defined() && loss.numel() == 1, "physics::lbfgs_minimize: the objective must return a scalar");
    loss.backward();
    ++result.evaluations;
    grad_out = flat.grads();
    return loss.item();
  };

  Vec x = flat.values(), g;
  double fx = evaluate(g);
  HPDL_CHECK(std::isfinite(fx), "physics::lbfgs_minimize: the objective is {} at the starting point", fx);
  struct Pair {
    Vec s, y;
    double rho;
  };
  std::deque<Pair> memory;
  const double c1 = 1e-4;  // Armijo sufficient-decrease constant
  for (int64_t it = 0; it < options.max_iterations; ++it) {
    double gmax = 0;
    for (double v : g) gmax = std::max(gmax, std::abs(v));
    if (gmax < options.gradient_tol) break;

    // Two-loop recursion: d = -H g, with H0 = (s'y / y'y) I from the newest pair.
    Vec q = g;
    std::vector<double> alpha(memory.size());
    for (size_t k = memory.size(); k-- > 0;) {
      alpha[k] = memory[k].rho * dot(memory[k].s, q);
      axpy(q, -alpha[k], memory[k].y);
    }
    // Without curvature pairs the first step is scaled so its length is at most 1.
    double gamma = memory.empty() ? std::min(1.0, 1.0 / std::sqrt(dot(g, g)))
                                  : dot(memory.back().s, memory.back().y) / dot(memory.back().y, memory.back().y);
    for (double& v : q) v *= gamma;
    for (size_t k = 0; k < memory.size(); ++k) {
      double beta = memory[k].rho * dot(memory[k].y, q);
      axpy(q, alpha[k] - beta, memory[k].s);
    }
    Vec d(q.size());
    for (size_t i = 0; i < q.size(); ++i) d[i] = -q[i];
    double gtd = dot(g, d);
    if (!(gtd < 0)) {  // not a descent direction (stale curvature): restart from steepest descent
      memory.clear();
      gamma = std::min(1.0, 1.0 / std::sqrt(dot(g, g)));
      for (size_t i = 0; i < d.size(); ++i) d[i] = -gamma * g[i];
      gtd = dot(g, d);
    }

    // Backtracking: halve t until f(x + t d) <= f(x) + c1 t g'd.
    double t = 1.0, f_new = fx;
    Vec x_new, g_new;
    bool found = false;
    for (int halvings = 0; halvings < 30; ++halvings, t *= 0.5) {
      x_new = x;
      axpy(x_new, t, d);
      flat.set(x_new);
      f_new = evaluate(g_new);
      found = std::isfinite(f_new) && f_new <= fx + c1 * t * gtd;
      if (found) break;
    }
    if (!found) {  // no decrease along d: keep the best point so far
      flat.set(x);
      break;
    }
    Pair pr{Vec(x.size()), Vec(x.size()), 0.0};
    for (size_t i = 0; i < x.size(); ++i) pr.s[i] = x_new[i] - x[i], pr.y[i] = g_new[i] - g[i];
    const double sy = dot(pr.s, pr.y);
    if (sy > 1e-12 * std::sqrt(dot(pr.s, pr.s) * dot(pr.y, pr.y))) {  // keep H positive definite
      pr.rho = 1.0 / sy;
      memory.push_back(std::move(pr));
      if (static_cast<int64_t>(memory.size()) > options.history) memory.pop_front();
    }
    const double change = std::abs(fx - f_new);
    x = std::move(x_new), g = std::move(g_new), fx = f_new;
    result.iterations = it + 1;
    if (on_iteration) on_iteration(it + 1, fx);
    if (change <= options.change_tol * std::max(1.0, std::abs(fx))) break;
  }
  for (const auto& p : params) Tensor(p).zero_grad();
  result.loss = fx;
  return result;
}

}  // namespace hpdl::physics
