// Batched matmul over leading dims and scaled dot-product attention: forward
// against plain loops in double precision, backward against central
// differences (hpdl::gradcheck), with transposed and permuted (non-contiguous)
// operands as attention produces them, and the errors bad shapes give.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/autograd/node.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using Inputs = const std::vector<Tensor>&;

Tensor rand64(const Shape& s, uint64_t seed) {
  Generator gen(seed);
  return Tensor::rand(s, gen, -1.0, 1.0, DType::f64).set_requires_grad();
}

// c[z, i, j] = sum_k a[z, i, k] b[z, k, j] on row-major copies, batch dims already equal.
std::vector<double> naive_bmm(const Tensor& a, const Tensor& b) {
  const int64_t M = a.dim(-2), K = a.dim(-1), N = b.dim(-1), B = a.numel() / (M * K);
  auto av = a.contiguous().to_vector<double>(), bv = b.contiguous().to_vector<double>();
  std::vector<double> c(static_cast<size_t>(B * M * N), 0.0);
  for (int64_t z = 0; z < B; ++z)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += av[(z * M + i) * K + k] * bv[(z * K + k) * N + j];
        c[(z * M + i) * N + j] = s;
      }
  return c;
}

void expect_near_vec(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << "element " << i;
}

void expect_gradcheck(const std::function<Tensor(Inputs)>& f, std::vector<Tensor> in) {
  GradcheckResult r = gradcheck(f, std::move(in), 1e-6, 1e-7, 1e-5);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(BatchedMatmul, FourDimsMatchLoops) {
  Tensor a = rand64({2, 3, 4, 5}, 1), b = rand64({2, 3, 5, 6}, 2);
  Tensor c = matmul(a, b);
  EXPECT_EQ(c.shape(), (Shape{2, 3, 4, 6}));
  expect_near_vec(c.to_vector<double>(), naive_bmm(a, b), 1e-12);
}

TEST(BatchedMatmul, BroadcastsBatchDimsLikeNumPy) {
  Tensor a = rand64({2, 1, 4, 5}, 3), b = rand64({3, 5, 2}, 4);
  Tensor c = matmul(a, b);
  ASSERT_EQ(c.shape(), (Shape{2, 3, 4, 2}));
  expect_near_vec(c.to_vector<double>(), naive_bmm(a.expand({2, 3, 4, 5}), b.expand({2, 3, 5, 2})), 1e-12);
  Tensor w = rand64({5, 2}, 5);  // a 2-D operand broadcasts over every batch dim
  expect_near_vec(matmul(a, w).to_vector<double>(), naive_bmm(a, w.expand({2, 1, 5, 2})), 1e-12);
}

TEST(BatchedMatmul, TransposedAndPermutedViewsMatchLoops) {
  // k^T as attention takes it: a transposed view of [N, H, S, D], and q as a permuted view of [N, T, H, D].
  Tensor q = rand64({2, 4, 3, 5}, 6).permute({0, 2, 1, 3}), k = rand64({2, 3, 6, 5}, 7);
  ASSERT_FALSE(q.is_contiguous());
  Tensor c = matmul(q, k.transpose(-2, -1));
  expect_near_vec(c.to_vector<double>(), naive_bmm(q.contiguous(), k.transpose(-2, -1).contiguous()), 1e-12);
}

TEST(BatchedMatmul, GradientsMatchFiniteDifferences) {
  expect_gradcheck([](Inputs x) { return matmul(x[0], x[1]); }, {rand64({2, 2, 3, 4}, 8), rand64({2, 2, 4, 3}, 9)});
  expect_gradcheck([](Inputs x) { return matmul(x[0], x[1]); }, {rand64({2, 1, 3, 4}, 10), rand64({3, 4, 2}, 11)});
  expect_gradcheck([](Inputs x) { return matmul(x[0].permute({0, 2, 1, 3}), x[1].transpose(-2, -1)); },
                   {rand64({2, 3, 2, 4}, 12), rand64({2, 2, 5, 4}, 13)});
}

TEST(BatchedMatmul, SecondDerivativeMatchesFiniteDifferences) {
  // d/da of sum((a @ b)^2)'s gradient wrt b: exercises the backward's own batched matmuls.
  expect_gradcheck(
      [](Inputs x) {
        EnableGradGuard on(true);
        Tensor y = sum(square(matmul(x[0], x[1])));
        return grad({y}, {x[1]}, {}, true, true)[0];
      },
      {rand64({2, 2, 3, 4}, 14), rand64({2, 2, 4, 2}, 15)});
}

TEST(BatchedMatmul, BadShapesAreNamed) {
  std::string m = test::error_of([] { matmul(Tensor::ones({2, 3, 4, 5}), Tensor::ones({3, 3, 5, 2})); });
  EXPECT_NE(m.find("matmul"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  m = test::error_of([] { matmul(Tensor::ones({2, 3, 4, 5}), Tensor::ones({2, 3, 4, 2})); });
  EXPECT_NE(m.find("inner dimensions"), std::string::npos) << m;
}

// softmax(q k^T / sqrt(E) + mask) v by loops for one [T, E] x [S, E] x [S, Ev] problem per batch element.
std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<double>& mask) {
  const int64_t T = q.dim(-2), E = q.dim(-1), S = k.dim(-2), Ev = v.dim(-1), B = q.numel() / (T * E);
  auto qv = q.contiguous().to_vector<double>(), kv = k.contiguous().to_vector<double>(),
       vv = v.contiguous().to_vector<double>();
  std::vector<double> out(static_cast<size_t>(B * T * Ev), 0.0);
  for (int64_t z = 0; z < B; ++z)
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> s(static_cast<size_t>(S));
      double mx = -std::numeric_limits<double>::infinity(), total = 0;
      for (int64_t j = 0; j < S; ++j) {
        double d = 0;
        for (int64_t e = 0; e < E; ++e) d += qv[(z * T + t) * E + e] * kv[(z * S + j) * E + e];
        s[j] = d / std::sqrt(static_cast<double>(E)) + (mask.empty() ? 0.0 : mask[t * S + j]);
        mx = std::max(mx, s[j]);
      }
      for (auto& x : s) total += (x = std::exp(x - mx));
      for (int64_t j = 0; j < S; ++j)
        for (int64_t e = 0; e < Ev; ++e) out[(z * T + t) * Ev + e] += s[j] / total * vv[(z * S + j) * Ev + e];
    }
  return out;
}

TEST(Attention, MatchesLoopsWithMaskAndCausal) {
  Tensor q = rand64({2, 3, 4, 5}, 20), k = rand64({2, 3, 6, 5}, 21), v = rand64({2, 3, 6, 2}, 22);
  expect_near_vec(scaled_dot_product_attention(q, k, v).to_vector<double>(), naive_attention(q, k, v, {}), 1e-12);
  Tensor mask = rand64({4, 6}, 23).detach();
  AttentionOptions o;
  o.attn_mask = mask;
  expect_near_vec(scaled_dot_product_attention(q, k, v, o).to_vector<double>(),
                  naive_attention(q, k, v, mask.to_vector<double>()), 1e-12);
  Tensor k4 = rand64({2, 3, 4, 5}, 24), v4 = rand64({2, 3, 4, 2}, 25);
  AttentionOptions c;
  c.causal = true;
  Tensor y = scaled_dot_product_attention(q, k4, v4, c);
  expect_near_vec(y.to_vector<double>(), naive_attention(q, k4, v4, causal_mask(4, DType::f64).to_vector<double>()),
                  1e-12);
  // The first query sees only the first key: its output is that key's value.
  EXPECT_NEAR(y.select(2, 0).to_vector<double>()[0], v4.select(2, 0).to_vector<double>()[0], 1e-12);
}

TEST(Attention, WeightsRowsSumToOneAndMaskedEntriesAreZero) {
  Tensor q = rand64({1, 2, 3, 4}, 30), k = rand64({1, 2, 3, 4}, 31), v = rand64({1, 2, 3, 4}, 32);
  Tensor w;
  AttentionOptions o;
  o.causal = true;
  o.weights_out = &w;
  scaled_dot_product_attention(q, k, v, o);
  auto wv = w.to_vector<double>();
  for (int r = 0; r < 6; ++r) {
    double s = 0;
    for (int j = 0; j < 3; ++j) s += wv[r * 3 + j];
    EXPECT_NEAR(s, 1.0, 1e-12);
    const int t = r % 3;
    for (int j = t + 1; j < 3; ++j) EXPECT_EQ(wv[r * 3 + j], 0.0) << "row " << r << " col " << j;
  }
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  // q as a permuted view (heads split from [N, T, H, D]), k and v plain; an additive mask; causal.
  Tensor mask = rand64({3, 3}, 40).detach();
  expect_gradcheck(
      [mask](Inputs x) {
        AttentionOptions o;
        o.attn_mask = mask;
        return scaled_dot_product_attention(x[0].permute({0, 2, 1, 3}), x[1], x[2], o);
      },
      {rand64({2, 3, 2, 4}, 41), rand64({2, 2, 3, 4}, 42), rand64({2, 2, 3, 3}, 43)});
  expect_gradcheck(
      [](Inputs x) {
        AttentionOptions o;
        o.causal = true;
        return scaled_dot_product_attention(x[0], x[1], x[2], o);
      },
      {rand64({2, 4, 3}, 44), rand64({2, 4, 3}, 45), rand64({2, 4, 2}, 46)});
}

TEST(Attention, DropoutIsReproducibleAndOffInEval) {
  Tensor q = rand64({1, 1, 8, 4}, 50), k = rand64({1, 1, 8, 4}, 51), v = rand64({1, 1, 8, 4}, 52);
  Generator g1(7), g2(7);
  AttentionOptions o;
  o.dropout_p = 0.5;
  o.training = true;
  o.gen = &g1;
  Tensor a = scaled_dot_product_attention(q, k, v, o);
  o.gen = &g2;
  Tensor b = scaled_dot_product_attention(q, k, v, o);
  expect_near_vec(a.to_vector<double>(), b.to_vector<double>(), 0.0);
  o.training = false;
  expect_near_vec(scaled_dot_product_attention(q, k, v, o).to_vector<double>(),
                  scaled_dot_product_attention(q, k, v).to_vector<double>(), 0.0);
  EXPECT_GT(max(abs(sub(a, scaled_dot_product_attention(q, k, v)))).item(), 1e-3);  // dropout changed something
}

TEST(Attention, BadInputsAreNamed) {
  Tensor q = Tensor::ones({2, 4, 5}), k = Tensor::ones({2, 6, 5}), v = Tensor::ones({2, 6, 3});
  std::string m = test::error_of([&] { scaled_dot_product_attention(q, Tensor::ones({2, 6, 4}), v); });
  EXPECT_NE(m.find("feature size"), std::string::npos) << m;
  m = test::error_of([&] { scaled_dot_product_attention(q, k, Tensor::ones({2, 5, 3})); });
  EXPECT_NE(m.find("same length"), std::string::npos) << m;
  AttentionOptions c;
  c.causal = true;
  m = test::error_of([&] { scaled_dot_product_attention(q, k, v, c); });
  EXPECT_NE(m.find("causal"), std::string::npos) << m;
  AttentionOptions bad;
  bad.attn_mask = Tensor::zeros({4, 5});
  m = test::error_of([&] { scaled_dot_product_attention(q, k, v, bad); });
  EXPECT_NE(m.find("attn_mask [4, 5]"), std::string::npos) << m;
  AttentionOptions nogen;
  nogen.dropout_p = 0.1;
  nogen.training = true;
  m = test::error_of([&] { scaled_dot_product_attention(q, k, v, nogen); });
  EXPECT_NE(m.find("generator"), std::string::npos) << m;
}

}  // namespace
}  // namespace hpdl
