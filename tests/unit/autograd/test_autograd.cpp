// Autograd engine: accumulation, no-grad, retain_graph, grad() and
// higher-order derivatives (a tanh MLP's d2u/dx2 against finite differences).
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"

namespace hpdl {
namespace {

TEST(Autograd, SimpleChainRule) {
  Tensor x = Tensor::from_vector<double>({1.0, 2.0, 3.0}, {3}).set_requires_grad();
  Tensor y = sum(mul(x, x));  // dy/dx = 2x
  y.backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{2, 4, 6}));
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = Tensor::from_vector<double>({1.0, -1.0}, {2}).set_requires_grad();
  sum(mul(x, 3.0)).backward();
  sum(mul(x, 3.0)).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{6, 6}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, SharedInputGetsBothContributions) {
  Tensor x = Tensor::from_vector<double>({2.0}, {1}).set_requires_grad();
  Tensor y = add(x, x);  // the same gradient buffer flows into one leaf twice
  sum(mul(y, x)).backward();  // d/dx (2x * x) = 4x
  EXPECT_DOUBLE_EQ(x.grad().item(), 8.0);
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = Tensor::ones({2}).set_requires_grad();
  NoGradGuard ng;
  Tensor y = mul(x, 2.0);
  EXPECT_FALSE(y.requires_grad());
}

TEST(Autograd, SecondBackwardWithoutRetainGraphFails) {
  Tensor x = Tensor::ones({2}, DType::f64).set_requires_grad();
  Tensor y = sum(exp(x));
  y.backward();
  EXPECT_THROW(y.backward(), Error);
  Tensor z = sum(exp(x));
  z.backward({}, /*retain_graph=*/true);
  EXPECT_NO_THROW(z.backward());
}

TEST(Autograd, BackwardOfNonScalarNeedsGradient) {
  Tensor x = Tensor::ones({2}).set_requires_grad();
  Tensor y = mul(x, 2.0);
  EXPECT_THROW(y.backward(), Error);
}

TEST(Autograd, GradReturnsWithoutTouchingLeaves) {
  Tensor x = Tensor::from_vector<double>({0.5}, {1}).set_requires_grad();
  Tensor y = sum(pow(x, 3.0));
  auto g = grad({y}, {x});
  EXPECT_NEAR(g[0].item(), 3 * 0.25, 1e-12);
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, UnusedInputIsAnError) {
  Tensor x = Tensor::ones({1}, DType::f64).set_requires_grad();
  Tensor z = Tensor::ones({1}, DType::f64).set_requires_grad();
  Tensor y = sum(x);
  EXPECT_THROW(grad({y}, {z}, {}, true), Error);
  auto g = grad({y}, {z}, {}, false, false, /*allow_unused=*/true);
  EXPECT_FALSE(g[0].defined());
}

TEST(Autograd, ThirdDerivativeOfPower) {
  Tensor x = Tensor::from_vector<double>({1.5}, {1}).set_requires_grad();
  Tensor y = sum(pow(x, 4.0));
  Tensor d1 = grad({y}, {x}, {}, true, true)[0];       // 4x^3
  Tensor d2 = grad({sum(d1)}, {x}, {}, true, true)[0];  // 12x^2
  Tensor d3 = grad({sum(d2)}, {x})[0];                  // 24x
  EXPECT_NEAR(d1.item(), 4 * std::pow(1.5, 3), 1e-9);
  EXPECT_NEAR(d2.item(), 12 * 1.5 * 1.5, 1e-9);
  EXPECT_NEAR(d3.item(), 24 * 1.5, 1e-9);
}

// u(x) = W2 tanh(W1 x + b1) + b2 for scalar x per row: a PINN-style network.
Tensor tanh_mlp(const Tensor& x, const std::vector<Tensor>& p) {
  Tensor h = tanh(linear(x, p[0], p[1]));
  h = tanh(linear(h, p[2], p[3]));
  return linear(h, p[4], p[5]);
}

TEST(Autograd, SecondDerivativeOfTanhMlpMatchesFiniteDifferences) {
  Generator gen(7);
  std::vector<Tensor> p = {Tensor::randn({16, 1}, gen, 0, 1, DType::f64), Tensor::randn({16}, gen, 0, 1, DType::f64),
                           Tensor::randn({16, 16}, gen, 0, 0.3, DType::f64), Tensor::randn({16}, gen, 0, 1, DType::f64),
                           Tensor::randn({1, 16}, gen, 0, 1, DType::f64), Tensor::randn({1}, gen, 0, 1, DType::f64)};
  for (auto& t : p) t.set_requires_grad();
  Tensor x = Tensor::from_vector<double>({-0.7, 0.1, 0.9}, {3, 1}).set_requires_grad();
  Tensor u = tanh_mlp(x, p);
  // Rows are independent, so d(sum u)/dx gives du/dx per row, and again for d2u/dx2.
  Tensor du = grad({sum(u)}, {x}, {}, true, true)[0];
  Tensor d2u = grad({sum(du)}, {x}, {}, true, true)[0];
  const double h = 1e-4;
  auto u_at = [&](double v) {
    NoGradGuard ng;
    return tanh_mlp(Tensor::from_vector<double>({v}, {1, 1}), p).item();
  };
  auto xs = x.to_vector<double>();
  auto du_v = du.to_vector<double>(), d2u_v = d2u.to_vector<double>();
  for (size_t i = 0; i < xs.size(); ++i) {
    double fd1 = (u_at(xs[i] + h) - u_at(xs[i] - h)) / (2 * h);
    double fd2 = (u_at(xs[i] + h) - 2 * u_at(xs[i]) + u_at(xs[i] - h)) / (h * h);
    EXPECT_NEAR(du_v[i], fd1, 1e-7) << "row " << i;
    EXPECT_NEAR(d2u_v[i], fd2, 1e-5) << "row " << i;
  }
  // The second derivative is itself differentiable in the weights (PINN training).
  Tensor loss = sum(square(d2u));
  loss.backward();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(p[i].grad().defined()) << "parameter " << i;
  EXPECT_FALSE(p[5].grad().defined());  // d2u/dx2 does not depend on the output bias
  auto r = gradcheck(
      [&](const std::vector<Tensor>& in) {
        std::vector<Tensor> q(in.begin(), in.end());
        Tensor xx = Tensor::from_vector<double>({0.3}, {1, 1}).set_requires_grad();
        Tensor d = grad({sum(tanh_mlp(xx, q))}, {xx}, {}, true, true)[0];
        return grad({sum(d)}, {xx}, {}, true, true)[0];
      },
      p);
  EXPECT_TRUE(r.ok) << r.message;
}

}  // namespace
}  // namespace hpdl
