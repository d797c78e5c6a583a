// Second derivatives through normalization, and group_norm: gradgradcheck
// (finite differences of the create_graph first derivative, float64) of
// layer_norm, batch_norm in training and eval (the fused ReLU and residual
// variants too) and group_norm in input, gamma, beta and the incoming gradient;
// gradcheck of group_norm's fused first-order backward; the plain (unrecorded)
// backwards still run the backend kernels bitwise; the recorded and plain
// backwards agree; group_norm's special cases (one group, one channel per
// group) against layer_norm and batch-free instance norm written out here;
// the errors bad input gets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using test::error_of;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

using test::contains;

Tensor leaf(const Shape& s, Generator& gen, double lo = -1, double hi = 1) {
  return Tensor::rand(s, gen, lo, hi, DType::f64).set_requires_grad();
}

void expect_gradgrad(const Fn& f, const std::vector<Tensor>& in, const std::string& what) {
  GradcheckResult r = gradgradcheck(f, in);
  EXPECT_TRUE(r.ok) << what << ": " << r.message;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// float32 tensors with the same bits.
bool bitwise_equal(const Tensor& a, const Tensor& b) {
  Tensor ac = a.contiguous(), bc = b.contiguous();
  return ac.dtype() == DType::f32 && bc.dtype() == DType::f32 && ac.numel() == bc.numel() &&
         std::memcmp(ac.data<float>(), bc.data<float>(), static_cast<size_t>(ac.numel()) * sizeof(float)) == 0;
}

// ---------------------------------------------------------------- gradgradcheck

// layer_norm alone is linear in gamma and beta; the tanh after it makes the
// incoming gradient depend on every input, so all second-derivative blocks count.
TEST(NormGradGrad, LayerNorm) {
  Generator gen(1);
  for (const Shape& s : {Shape{3, 5}, Shape{2, 2, 4}}) {
    Tensor x = leaf(s, gen), g = leaf({s.back()}, gen, 0.5, 1.5), b = leaf({s.back()}, gen);
    expect_gradgrad([](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2]); }, {x, g, b},
                    "layer_norm " + shape_str(s));
    expect_gradgrad([](const std::vector<Tensor>& in) { return tanh(layer_norm(in[0], in[1], in[2], 1e-3)); },
                    {x, g, b}, "tanh(layer_norm) " + shape_str(s));
    expect_gradgrad([](const std::vector<Tensor>& in) { return tanh(layer_norm(in[0], Tensor(), Tensor())); }, {x},
                    "layer_norm without parameters " + shape_str(s));
  }
}

TEST(NormGradGrad, BatchNormTraining) {
  Generator gen(2);
  for (const Shape& s : {Shape{3, 2, 2, 2}, Shape{5, 2}}) {
    const int64_t C = s[1];
    Tensor x = leaf(s, gen), g = leaf({C}, gen, 0.5, 1.5), b = leaf({C}, gen), r = leaf(s, gen);
    Tensor rm = Tensor::zeros({C}, DType::f64), rv = Tensor::ones({C}, DType::f64);
    expect_gradgrad([&](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], rm, rv, true); },
                    {x, g, b}, "batch_norm " + shape_str(s));
    expect_gradgrad(
        [&](const std::vector<Tensor>& in) { return tanh(batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), true)); },
        {x, g, b}, "tanh(batch_norm), no running statistics " + shape_str(s));
    if (s.size() == 2) continue;  // the fused variants once, on [N, C, H, W]
    // The fused variants: the ReLU's mask is a constant of the second derivative (random
    // values keep every element away from the kink by far more than the step).
    expect_gradgrad(
        [&](const std::vector<Tensor>& in) { return tanh(batch_norm_relu(in[0], in[1], in[2], rm, rv, true)); },
        {x, g, b}, "batch_norm_relu " + shape_str(s));
    expect_gradgrad(
        [&](const std::vector<Tensor>& in) {
          return tanh(batch_norm_add_relu(in[0], in[3], in[1], in[2], rm, rv, true));
        },
        {x, g, b, r}, "batch_norm_add_relu " + shape_str(s));
  }
}

TEST(NormGradGrad, BatchNormEval) {
  Generator gen(3);
  Tensor x = leaf({3, 2, 2, 3}, gen), g = leaf({2}, gen, 0.5, 1.5), b = leaf({2}, gen);
  Tensor rm = Tensor::rand({2}, gen, -0.5, 0.5, DType::f64), rv = Tensor::rand({2}, gen, 0.5, 2, DType::f64);
  expect_gradgrad([&](const std::vector<Tensor>& in) { return tanh(batch_norm(in[0], in[1], in[2], rm, rv, false)); },
                  {x, g, b}, "eval batch_norm");
  expect_gradgrad(
      [&](const std::vector<Tensor>& in) { return tanh(batch_norm_relu(in[0], in[1], in[2], rm, rv, false)); },
      {x, g, b}, "eval batch_norm_relu");
}

TEST(NormGradGrad, GroupNorm) {
  Generator gen(4);
  struct Case {
    Shape s;
    int64_t groups;
  };
  for (const Case& c : {Case{{2, 4, 2, 2}, 2}, Case{{2, 4, 3}, 1}, Case{{2, 4, 3}, 4}, Case{{3, 4}, 2}}) {
    const int64_t C = c.s[1];
    const std::string what = "group_norm " + shape_str(c.s) + " groups " + std::to_string(c.groups);
    Tensor x = leaf(c.s, gen), g = leaf({C}, gen, 0.5, 1.5), b = leaf({C}, gen);
    const int64_t G = c.groups;
    expect_gradgrad([G](const std::vector<Tensor>& in) { return tanh(group_norm(in[0], G, in[1], in[2], 1e-3)); },
                    {x, g, b}, what);
    if (c.s.size() == 3)
      expect_gradgrad([G](const std::vector<Tensor>& in) { return tanh(group_norm(in[0], G, Tensor(), Tensor())); },
                      {x}, what + " without parameters");
  }
}

// Third order: the recorded backward is made of ops whose own backwards are recorded too.
TEST(NormGradGrad, GroupNormThirdOrder) {
  Generator gen(5);
  Tensor x = leaf({2, 4, 3}, gen), g = leaf({4}, gen, 0.5, 1.5), b = leaf({4}, gen);
  Tensor v = Tensor::rand({2, 4, 3}, gen, -1, 1, DType::f64);
  // h(x, g, b) = sum(d<tanh(gn), v>/dx * w): a first derivative; gradgradcheck of h is a third derivative.
  Tensor w = Tensor::rand({2, 4, 3}, gen, -1, 1, DType::f64);
  auto h = [&](const std::vector<Tensor>& in) {
    Tensor y = tanh(group_norm(in[0], 2, in[1], in[2]));
    Tensor dx = grad({sum(mul(y, v))}, {in[0]}, {}, false, true)[0];
    return mul(dx, w);
  };
  expect_gradgrad(h, {x, g, b}, "group_norm third order");
}

// ---------------------------------------------------------------- first order

TEST(NormFirstOrder, GroupNormGradcheck) {
  Generator gen(6);
  Tensor x = leaf({3, 6, 2, 2}, gen), g = leaf({6}, gen, 0.5, 1.5), b = leaf({6}, gen);
  for (int64_t G : {1, 2, 3, 6}) {
    GradcheckResult r =
        gradcheck([G](const std::vector<Tensor>& in) { return group_norm(in[0], G, in[1], in[2]); }, {x, g, b});
    EXPECT_TRUE(r.ok) << "groups " << G << ": " << r.message;
  }
  GradcheckResult r = gradcheck([](const std::vector<Tensor>& in) { return group_norm(in[0], 3, Tensor(), in[1]); },
                                {x, b});
  EXPECT_TRUE(r.ok) << "beta only: " << r.message;
}

// One group is layer norm over C, H, W (then the per-channel affine); C groups is
// instance norm: each (sample, channel) plane normalized on its own.
TEST(NormFirstOrder, GroupNormSpecialCases) {
  Generator gen(7);
  Tensor x = Tensor::rand({2, 3, 4, 5}, gen, -2, 2, DType::f64);
  Tensor g = Tensor::rand({3}, gen, 0.5, 1.5, DType::f64), b = Tensor::rand({3}, gen, -1, 1, DType::f64);
  Tensor one = group_norm(x, 1, g, b, 1e-4);
  Tensor ln = add(mul(layer_norm(x.reshape({2, 60}), Tensor(), Tensor(), 1e-4).reshape({2, 3, 4, 5}),
                      g.reshape({1, 3, 1, 1})),
                  b.reshape({1, 3, 1, 1}));
  EXPECT_LT(max_abs_diff(one, ln), 1e-12);
  Tensor inst = group_norm(x, 3, g, b, 1e-4);
  std::vector<double> xv = x.to_vector<double>(), gv = g.to_vector<double>(), bv = b.to_vector<double>(), want(xv.size());
  for (int64_t p = 0; p < 6; ++p) {  // (sample, channel) planes of 20
    double m = 0, var = 0;
    for (int64_t i = 0; i < 20; ++i) m += xv[p * 20 + i] / 20;
    for (int64_t i = 0; i < 20; ++i) var += (xv[p * 20 + i] - m) * (xv[p * 20 + i] - m) / 20;
    for (int64_t i = 0; i < 20; ++i)
      want[p * 20 + i] = (xv[p * 20 + i] - m) / std::sqrt(var + 1e-4) * gv[p % 3] + bv[p % 3];
  }
  EXPECT_LT(max_abs_diff(inst, Tensor::from_vector(want, {2, 3, 4, 5})), 1e-12);
}

// The plain backward of the fused paths is what it was: the backend's kernels, bit for bit.
TEST(NormFirstOrder, PlainBackwardIsTheFusedKernel) {
  Generator gen(8);
  Tensor x = Tensor::rand({4, 3, 5, 5}, gen, -1, 1).set_requires_grad();
  Tensor g = Tensor::rand({3}, gen, 0.5, 1.5).set_requires_grad(), b = Tensor::rand({3}, gen).set_requires_grad();
  Tensor dy = Tensor::rand({4, 3, 5, 5}, gen, -1, 1);
  {
    Tensor y = batch_norm(x, g, b, Tensor(), Tensor(), true);
    y.backward(dy);
    Backend& be = backend_for(x.device());
    Tensor y2 = Tensor::empty(x.shape()), m = Tensor::empty({3}), is = Tensor::empty({3});
    be.batchnorm_forward_train(x.detach(), g.detach(), b.detach(), y2, m, is, 1e-5);
    Tensor dx = Tensor::empty(x.shape()), dg = Tensor::empty({3}), db = Tensor::empty({3});
    be.batchnorm_backward(x.detach(), dy, g.detach(), m, is, dx, dg, db);
    EXPECT_TRUE(bitwise_equal(y, y2));
    EXPECT_TRUE(bitwise_equal(x.grad(), dx));
    EXPECT_TRUE(bitwise_equal(g.grad(), dg));
    EXPECT_TRUE(bitwise_equal(b.grad(), db));
  }
  Tensor xl = Tensor::rand({6, 7}, gen, -1, 1).set_requires_grad();
  Tensor gl = Tensor::rand({7}, gen, 0.5, 1.5).set_requires_grad(), bl = Tensor::rand({7}, gen).set_requires_grad();
  Tensor dyl = Tensor::rand({6, 7}, gen, -1, 1);
  layer_norm(xl, gl, bl).backward(dyl);
  Backend& be = backend_for(xl.device());
  Tensor y2 = Tensor::empty({6, 7}), m = Tensor::empty({6}), is = Tensor::empty({6});
  be.layernorm_forward(xl.detach(), gl.detach(), bl.detach(), y2, m, is, 1e-5);
  Tensor dx = Tensor::empty({6, 7}), dg = Tensor::empty({7}), db = Tensor::empty({7});
  be.layernorm_backward(xl.detach(), dyl, gl.detach(), m, is, dx, dg, db);
  EXPECT_TRUE(bitwise_equal(xl.grad(), dx));
  EXPECT_TRUE(bitwise_equal(gl.grad(), dg));
  EXPECT_TRUE(bitwise_equal(bl.grad(), db));
}

// The recorded backward (create_graph) gives the plain backward's gradients, in float32 as in float64.
TEST(NormFirstOrder, RecordedBackwardMatchesPlain) {
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 2e-5 : 1e-12;
    Generator gen(9);
    Tensor x = Tensor::rand({3, 4, 3, 2}, gen, -1, 1, dt).set_requires_grad();
    Tensor g = Tensor::rand({4}, gen, 0.5, 1.5, dt).set_requires_grad();
    Tensor b = Tensor::rand({4}, gen, -1, 1, dt).set_requires_grad();
    Tensor r = Tensor::rand({3, 4, 3, 2}, gen, -1, 1, dt).set_requires_grad();
    Tensor dy = Tensor::rand({3, 4, 3, 2}, gen, -1, 1, dt);
    const std::vector<std::pair<std::string, std::function<Tensor()>>> ops = {
        {"batch_norm", [&] { return batch_norm(x, g, b, Tensor(), Tensor(), true); }},
        {"batch_norm_add_relu", [&] { return batch_norm_add_relu(x, r, g, b, Tensor(), Tensor(), true); }},
        {"layer_norm", [&] { return layer_norm(x, Tensor(), Tensor()); }},
        {"group_norm", [&] { return group_norm(x, 2, g, b); }},
        {"group_norm, gamma only", [&] { return group_norm(x, 4, g, Tensor()); }},
    };
    for (const auto& [name, f] : ops) {
      std::vector<Tensor> wrt{x, g, b, r};
      std::vector<Tensor> plain = grad({f()}, wrt, {dy}, false, false, true);
      std::vector<Tensor> recorded = grad({f()}, wrt, {dy}, false, true, true);
      for (size_t i = 0; i < wrt.size(); ++i) {
        ASSERT_EQ(plain[i].defined(), recorded[i].defined()) << name << " input " << i;
        if (plain[i].defined()) {
          EXPECT_LT(max_abs_diff(plain[i], recorded[i]), tol) << name << " input " << i;
        }
      }
    }
  }
}

// The cross-replica batch norm keeps its first-order-only backward and says so.
TEST(NormFirstOrder, CrossReplicaRefusesCreateGraphByName) {
  Generator gen(10);
  Tensor x = Tensor::rand({4, 2}, gen, -1, 1, DType::f64).set_requires_grad();
  Tensor y = batch_norm_cross_replica(x, Tensor(), Tensor(), Tensor(), Tensor(), [](Tensor&) {});
  const std::string m = error_of([&] { grad({sum(square(y))}, {x}, {}, false, true); });
  EXPECT_TRUE(contains(m, "batch_norm_cross_replica") && contains(m, "first-order only")) << m;
}

TEST(NormErrors, GroupNormBadInputIsNamed) {
  Tensor x = Tensor::ones({2, 6, 3});
  std::string m = error_of([&] { group_norm(x, 4, Tensor(), Tensor()); });
  EXPECT_TRUE(contains(m, "group_norm") && contains(m, "num_groups = 4") && contains(m, "[2, 6, 3]")) << m;
  m = error_of([&] { group_norm(x, 0, Tensor(), Tensor()); });
  EXPECT_TRUE(contains(m, "num_groups = 0")) << m;
  m = error_of([&] { group_norm(Tensor::ones({6}), 2, Tensor(), Tensor()); });
  EXPECT_TRUE(contains(m, "group_norm") && contains(m, "[N, C, ...]")) << m;
  m = error_of([&] { group_norm(x, 2, Tensor::ones({3}), Tensor()); });
  EXPECT_TRUE(contains(m, "group_norm") && contains(m, "weight (gamma)") && contains(m, "[6]")) << m;
  m = error_of([&] { group_norm(x, 2, Tensor(), Tensor::ones({6}, DType::f64)); });
  EXPECT_TRUE(contains(m, "group_norm")) << m;
  m = error_of([&] { group_norm(Tensor::ones({2, 6}, DType::i64), 2, Tensor(), Tensor()); });
  EXPECT_TRUE(contains(m, "group_norm")) << m;
  m = error_of([&] { group_norm(x, 2, Tensor(), Tensor(), -1.0); });
  EXPECT_TRUE(contains(m, "eps")) << m;
}

}  // namespace
}  // namespace hpdl
