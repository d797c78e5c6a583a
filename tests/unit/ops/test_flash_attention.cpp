// The fused (FlashAttention-style) attention path against the composed
// reference: forward and the gradients of q, k and v over a table of shapes
// (T != S, T not a multiple of the query block, S over several key blocks,
// causal, key padding, one and many heads) in float32 and float64; finite
// differences of the fused path; second derivatives (its node switches to
// differentiable ops under create_graph); key padding masks against a manual
// additive mask; fully masked rows; dispatch and the named errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/autograd/node.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

struct Case {
  Shape batch;  // leading dims; the key padding mask is [batch[0], S]
  int64_t T, S, E, Ev;
  bool causal = false;
  bool padding = false;
};

// Random key padding [N, S] (about a third padded); key 0 is never padded, so
// no row is fully masked (a causal row t always sees key 0).
Tensor random_padding(int64_t N, int64_t S, uint64_t seed) {
  Generator gen(seed);
  std::vector<double> u = Tensor::rand({N, S}, gen, 0, 1, DType::f64).to_vector<double>();
  std::vector<uint8_t> m(u.size());
  for (size_t i = 0; i < u.size(); ++i) m[i] = (i % static_cast<size_t>(S) != 0 && u[i] < 0.35) ? 1 : 0;
  return Tensor::from_vector(m, {N, S});
}

Shape with(Shape batch, int64_t a, int64_t b) {
  batch.push_back(a);
  batch.push_back(b);
  return batch;
}

// max |a - b| / max(1, max |b|), NaN when the NaN patterns differ.
double rel_err(const Tensor& a, const Tensor& b) {
  auto av = a.contiguous().to_vector<double>(), bv = b.contiguous().to_vector<double>();
  if (av.size() != bv.size()) return 1e30;
  double d = 0, m = 1;
  for (size_t i = 0; i < av.size(); ++i) {
    if (std::isnan(av[i]) != std::isnan(bv[i])) return std::nan("");
    if (std::isnan(av[i])) continue;
    d = std::max(d, std::abs(av[i] - bv[i]));
    m = std::max(m, std::abs(bv[i]));
  }
  return d / m;
}

struct Result {
  Tensor out, dq, dk, dv;
  std::string node;  // the output's grad_fn
};

Result run(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w, AttentionOptions o) {
  Tensor qq = q.detach().set_requires_grad(), kk = k.detach().set_requires_grad(), vv = v.detach().set_requires_grad();
  Result r;
  r.out = scaled_dot_product_attention(qq, kk, vv, o);
  r.node = r.out.grad_fn() ? r.out.grad_fn()->name() : "";
  auto g = grad({sum(mul(r.out, w))}, {qq, kk, vv});
  r.dq = g[0];
  r.dk = g[1];
  r.dv = g[2];
  return r;
}

void expect_fused_matches_composed(const Case& c, DType dt, double tol, uint64_t seed) {
  Generator gen(seed);
  Tensor q = Tensor::randn(with(c.batch, c.T, c.E), gen, 0, 1, dt);
  Tensor k = Tensor::randn(with(c.batch, c.S, c.E), gen, 0, 1, dt);
  Tensor v = Tensor::randn(with(c.batch, c.S, c.Ev), gen, 0, 1, dt);
  Tensor w = Tensor::randn(with(c.batch, c.T, c.Ev), gen, 0, 1, dt);
  AttentionOptions o;
  o.causal = c.causal;
  if (c.padding) o.key_padding_mask = random_padding(c.batch.empty() ? 1 : c.batch[0], c.S, seed + 1);
  o.impl = AttentionImpl::fused;
  Result f = run(q, k, v, w, o);
  o.impl = AttentionImpl::composed;
  Result ref = run(q, k, v, w, o);
  const std::string what = "batch " + shape_str(c.batch) + " T " + std::to_string(c.T) + " S " + std::to_string(c.S) +
                           " E " + std::to_string(c.E) + " Ev " + std::to_string(c.Ev) +
                           (c.causal ? " causal" : "") + (c.padding ? " padding" : "") + " " + dtype_name(dt);
  EXPECT_EQ(f.node, "scaled_dot_product_attention_fused") << what;
  EXPECT_NE(ref.node, "scaled_dot_product_attention_fused") << what;
  EXPECT_LE(rel_err(f.out, ref.out), tol) << "out, " << what;
  EXPECT_LE(rel_err(f.dq, ref.dq), tol) << "dq, " << what;
  EXPECT_LE(rel_err(f.dk, ref.dk), tol) << "dk, " << what;
  EXPECT_LE(rel_err(f.dv, ref.dv), tol) << "dv, " << what;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {{2, 3}, 5, 7, 4, 3},                          // T != S, small
      {{}, 9, 11, 5, 2},                             // no batch dims
      {{1}, 70, 130, 16, 8},                         // several query and key blocks, partial last ones
      {{2, 1}, 17, 90, 8, 8, false, true},           // one head, padding, S over two key blocks
      {{3, 4}, 20, 20, 8, 4, true, false},           // causal, many heads
      {{3, 4}, 37, 37, 6, 5, true, true},            // causal + padding, T not a multiple of 16
      {{2, 4}, 50, 50, 16, 16, false, true},         // ViT-like
      {{2, 2}, 67, 67, 32, 32, true, false},         // causal over two key blocks
  };
  return c;
}

TEST(FlashAttention, FusedMatchesComposedFloat64) {
  uint64_t seed = 100;
  for (const Case& c : cases()) expect_fused_matches_composed(c, DType::f64, 1e-12, seed += 10);
}

TEST(FlashAttention, FusedMatchesComposedFloat32) {
  uint64_t seed = 200;
  for (const Case& c : cases()) expect_fused_matches_composed(c, DType::f32, 2e-5, seed += 10);
}

TEST(FlashAttention, FusedGradientsMatchFiniteDifferences) {
  Generator gen(300);
  auto r64 = [&](const Shape& s) { return Tensor::rand(s, gen, -1, 1, DType::f64).set_requires_grad(); };
  for (const bool causal : {false, true}) {
    for (const bool padding : {false, true}) {
      Tensor kp = padding ? random_padding(2, 5, 301) : Tensor();
      const int64_t T = causal ? 5 : 4;
      GradcheckResult r = gradcheck(
          [&](const std::vector<Tensor>& x) {
            AttentionOptions o;
            o.impl = AttentionImpl::fused;
            o.causal = causal;
            o.key_padding_mask = kp;
            return scaled_dot_product_attention(x[0], x[1], x[2], o);
          },
          {r64({2, 2, T, 3}), r64({2, 2, 5, 3}), r64({2, 2, 5, 2})}, 1e-6, 1e-7, 1e-5);
      EXPECT_TRUE(r.ok) << (causal ? "causal " : "") << (padding ? "padding " : "") << r.message;
    }
  }
}

// create_graph through the fused node: the gradient of a function of the first
// gradient (as PINN losses take it) equals the composed path's and finite differences.
TEST(FlashAttention, SecondDerivativeFallsBackToDifferentiableOps) {
  Generator gen(400);
  Tensor q = Tensor::randn({2, 2, 6, 4}, gen, 0, 1, DType::f64), k = Tensor::randn({2, 2, 6, 4}, gen, 0, 1, DType::f64),
         v = Tensor::randn({2, 2, 6, 3}, gen, 0, 1, DType::f64);
  Tensor kp = random_padding(2, 6, 401);
  auto second = [&](AttentionImpl impl, const std::vector<Tensor>& x) {
    AttentionOptions o;
    o.impl = impl;
    o.causal = true;
    o.key_padding_mask = kp;
    EnableGradGuard on(true);
    Tensor y = scaled_dot_product_attention(x[0], x[1], x[2], o);
    EXPECT_EQ(y.grad_fn()->name() == std::string("scaled_dot_product_attention_fused"), impl == AttentionImpl::fused);
    Tensor dq = grad({sum(square(y))}, {x[0]}, {}, true, true)[0];  // d/dq sum(y^2), with a graph
    return sum(mul(dq, dq));
  };
  std::vector<std::vector<Tensor>> g;
  for (AttentionImpl impl : {AttentionImpl::fused, AttentionImpl::composed}) {
    std::vector<Tensor> x{q.detach().set_requires_grad(), k.detach().set_requires_grad(), v.detach().set_requires_grad()};
    g.push_back(grad({second(impl, x)}, x));
  }
  for (size_t i = 0; i < 3; ++i) EXPECT_LE(rel_err(g[0][i], g[1][i]), 1e-12) << "input " << i;
  GradcheckResult r = gradcheck([&](const std::vector<Tensor>& x) { return second(AttentionImpl::fused, x); },
                                {q.detach().set_requires_grad(), k.detach().set_requires_grad(),
                                 v.detach().set_requires_grad()},
                                1e-6, 1e-7, 1e-5);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(FlashAttention, KeyPaddingEqualsAnAdditiveMask) {
  Generator gen(500);
  Tensor q = Tensor::randn({3, 2, 4, 5}, gen, 0, 1, DType::f64), k = Tensor::randn({3, 2, 6, 5}, gen, 0, 1, DType::f64),
         v = Tensor::randn({3, 2, 6, 2}, gen, 0, 1, DType::f64);
  Tensor kp = random_padding(3, 6, 501);
  std::vector<double> add_mask;
  for (uint8_t b : kp.to_vector<uint8_t>()) add_mask.push_back(b ? -INFINITY : 0.0);
  AttentionOptions manual;
  manual.attn_mask = Tensor::from_vector(add_mask, {3, 1, 1, 6}).expand({3, 1, 4, 6});
  Tensor want = scaled_dot_product_attention(q, k, v, manual);
  for (AttentionImpl impl : {AttentionImpl::composed, AttentionImpl::fused}) {
    AttentionOptions o;
    o.key_padding_mask = kp;
    o.impl = impl;
    EXPECT_LE(rel_err(scaled_dot_product_attention(q, k, v, o), want), 1e-14);
  }
  // A padded key changes nothing: replacing its k and v rows leaves the output as it was.
  AttentionOptions o;
  o.key_padding_mask = kp;
  auto kpv = kp.to_vector<uint8_t>();
  const int64_t s = std::find(kpv.begin() + 1, kpv.begin() + 6, 1) - kpv.begin();  // a padded key of n = 0
  ASSERT_LT(s, 6);
  Tensor k2 = k.clone(), v2 = v.clone();
  k2.select(0, 0).select(1, s).fill_(7.0);
  v2.select(0, 0).select(1, s).fill_(-9.0);
  EXPECT_LE(rel_err(scaled_dot_product_attention(q, k2, v2, o), scaled_dot_product_attention(q, k, v, o)), 1e-14);
}

TEST(FlashAttention, FullyMaskedRowIsNaNOnBothPaths) {
  Generator gen(600);
  Tensor q = Tensor::randn({2, 2, 3, 4}, gen, 0, 1, DType::f64), k = Tensor::randn({2, 2, 5, 4}, gen, 0, 1, DType::f64),
         v = Tensor::randn({2, 2, 5, 3}, gen, 0, 1, DType::f64);
  std::vector<uint8_t> m(10, 0);
  std::fill(m.begin(), m.begin() + 5, 1);  // sequence 0: every key padded
  m[7] = 1;
  Tensor kp = Tensor::from_vector(m, {2, 5});
  std::vector<Tensor> outs;
  for (AttentionImpl impl : {AttentionImpl::fused, AttentionImpl::composed}) {
    AttentionOptions o;
    o.key_padding_mask = kp;
    o.impl = impl;
    Tensor y = scaled_dot_product_attention(q, k, v, o);
    for (double x : y.select(0, 0).to_vector<double>()) EXPECT_TRUE(std::isnan(x));
    for (double x : y.select(0, 1).to_vector<double>()) EXPECT_TRUE(std::isfinite(x));
    outs.push_back(y.select(0, 1));
  }
  EXPECT_LE(rel_err(outs[0], outs[1]), 1e-14);
}

TEST(FlashAttention, AutomaticPicksFusedOnlyWhereItApplies) {
  Tensor q = Tensor::ones({2, 3, 4}).set_requires_grad(), k = Tensor::ones({2, 3, 4}), v = Tensor::ones({2, 3, 2});
  auto node = [&](const AttentionOptions& o) { return std::string(scaled_dot_product_attention(q, k, v, o).grad_fn()->name()); };
  const std::string fused = "scaled_dot_product_attention_fused";
  AttentionOptions o;
  EXPECT_EQ(node(o), fused);
  o.causal = true;
  o.key_padding_mask = Tensor::zeros({2, 3}, DType::u8);
  EXPECT_EQ(node(o), fused);
  Tensor w;
  AttentionOptions ow;
  ow.weights_out = &w;
  EXPECT_NE(node(ow), fused);
  AttentionOptions om;
  om.attn_mask = Tensor::zeros({3, 3});
  EXPECT_NE(node(om), fused);
  Generator gen(1);
  AttentionOptions od;
  od.dropout_p = 0.5;
  od.training = true;
  od.gen = &gen;
  EXPECT_NE(node(od), fused);
  od.training = false;  // dropout off in eval: fused again
  EXPECT_EQ(node(od), fused);
  Tensor kb = Tensor::ones({1, 3, 4});  // broadcast batch dims: composed
  EXPECT_NE(std::string(scaled_dot_product_attention(q, kb, v).grad_fn()->name()), fused);
}

TEST(FlashAttention, BadInputsAreNamed) {
  Tensor q = Tensor::ones({2, 4, 5}), k = Tensor::ones({2, 6, 5}), v = Tensor::ones({2, 6, 3});
  AttentionOptions o;
  o.key_padding_mask = Tensor::zeros({2, 6});  // float32
  std::string m = test::error_of([&] { scaled_dot_product_attention(q, k, v, o); });
  EXPECT_NE(m.find("key_padding_mask must be uint8"), std::string::npos) << m;
  o.key_padding_mask = Tensor::zeros({3, 6}, DType::u8);
  m = test::error_of([&] { scaled_dot_product_attention(q, k, v, o); });
  EXPECT_NE(m.find("key_padding_mask [3, 6] must be [N, S] = [2, 6]"), std::string::npos) << m;
  AttentionOptions f;
  f.impl = AttentionImpl::fused;
  f.attn_mask = Tensor::zeros({4, 6});
  m = test::error_of([&] { scaled_dot_product_attention(q, k, v, f); });
  EXPECT_NE(m.find("impl = fused does not apply"), std::string::npos) << m;
  EXPECT_NE(m.find("attn_mask"), std::string::npos) << m;
}

}  // namespace
}  // namespace hpdl
