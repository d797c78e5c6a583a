// The reference backend's leading-axes reduction fast path (bias gradients)
// against a plain loop, for sum and mean, float and double.
#include <gtest/gtest.h>

#include "hpdl/core/random.h"
#include "hpdl/ops/reduce.h"

namespace hpdl {
namespace {

template <typename T>
void check_leading(DType dt) {
  Generator g(3);
  Tensor x = Tensor::randn({3, 4, 5}, g, 0, 1, dt);
  auto v = x.to_vector<double>();
  Tensor s = sum(x, {0, 1});
  Tensor m = mean(x, {0});
  auto sv = s.to_vector<double>(), mv = m.to_vector<double>();
  for (int k = 0; k < 5; ++k) {
    double acc = 0;
    for (int i = 0; i < 12; ++i) acc += v[i * 5 + k];
    EXPECT_NEAR(sv[k], acc, 1e-5) << "sum over axes {0, 1}, column " << k;
  }
  for (int j = 0; j < 20; ++j) {
    double acc = 0;
    for (int i = 0; i < 3; ++i) acc += v[i * 20 + j];
    EXPECT_NEAR(mv[j], acc / 3, 1e-5) << "mean over axis 0, element " << j;
  }
}

TEST(ReducePaths, LeadingAxesFloat) { check_leading<float>(DType::f32); }
TEST(ReducePaths, LeadingAxesDouble) { check_leading<double>(DType::f64); }

TEST(ReducePaths, LeadingAxesOfAStridedViewUseTheGeneralPath) {
  Generator g(4);
  Tensor x = Tensor::randn({4, 6}, g);
  Tensor xt = x.t();  // [6, 4], not contiguous
  auto v = x.to_vector<float>();
  auto s = sum(xt, {0}).to_vector<float>();  // sums each row of x
  for (int i = 0; i < 4; ++i) {
    float acc = 0;
    for (int j = 0; j < 6; ++j) acc += v[i * 6 + j];
    EXPECT_NEAR(s[i], acc, 1e-5);
  }
}

}  // namespace
}  // namespace hpdl
