// The fast CPU backend's hand-written paths against the reference kernels,
// called directly on the two backends: shapes the paths special-case (window
// sizes, rows and columns no window reads, one-element planes) and inputs with
// ties, as ReLU outputs feeding a max pool have (the first maximum must win).
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"

namespace hpdl {
namespace {

Pool2dParams tile(int64_t kh, int64_t kw) {
  Pool2dParams p;
  p.kernel_h = p.stride_h = kh;
  p.kernel_w = p.stride_w = kw;
  return p;
}

// Random values in [-1, 1]; with `ties`, a third of them clamped to 0 and the rest rounded to quarters.
Tensor pool_input(const Shape& s, bool ties, uint64_t seed) {
  Generator g(seed);
  Tensor x = Tensor::rand(s, g, -1, 1, DType::f32);
  if (ties) {
    float* v = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) v[i] = v[i] < -0.33f ? 0.0f : std::round(v[i] * 4) / 4;
  }
  return x;
}

void expect_equal(const Tensor& fast, const Tensor& ref, double tol, const std::string& what) {
  auto a = fast.to_vector<float>(), b = ref.to_vector<float>();
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], b[i], tol) << what << ": element " << i << " fast " << a[i] << " vs reference " << b[i];
}

void check_pool(PoolKind kind, const Shape& xs, const Pool2dParams& p, bool ties) {
  const std::string what = fmt::format("{} pool {} kernel {}x{}{}", kind == PoolKind::max ? "max" : "avg",
                                       shape_str(xs), p.kernel_h, p.kernel_w, ties ? " with ties" : "");
  const int64_t P = (xs[2] + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;
  const int64_t Q = (xs[3] + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
  const Shape ys = {xs[0], xs[1], P, Q};
  Tensor x = pool_input(xs, ties, 7);
  Tensor yf = Tensor::empty(ys), yr = Tensor::empty(ys);
  cpu_backend().pool2d_forward(kind, x, yf, p);
  reference_backend().pool2d_forward(kind, x, yr, p);
  // max selects an element (exact); avg sums in float here, in double in the reference
  const double tol = kind == PoolKind::max ? 0.0 : 1e-6;
  expect_equal(yf, yr, tol, what + " forward");

  Generator g(11);
  Tensor dy = Tensor::rand(ys, g, -1, 1, DType::f32);
  Tensor dxf = Tensor::full(xs, 123.0), dxr = Tensor::empty(xs);  // stale values must be overwritten
  cpu_backend().pool2d_backward(kind, x, yf, dy, dxf, p);
  reference_backend().pool2d_backward(kind, x, yr, dy, dxr, p);
  expect_equal(dxf, dxr, tol, what + " backward");
}

TEST(CpuFastPaths, TiledPoolingMatchesReference) {
  for (PoolKind kind : {PoolKind::max, PoolKind::avg})
    for (bool ties : {false, true}) {
      check_pool(kind, {4, 6, 28, 28}, tile(2, 2), ties);   // LeNet-5 pool1
      check_pool(kind, {3, 5, 15, 17}, tile(2, 2), ties);   // a last row and column no window reads
      check_pool(kind, {2, 3, 10, 11}, tile(3, 3), ties);   // odd kernel, leftovers
      check_pool(kind, {2, 3, 9, 8}, tile(2, 4), ties);     // non-square kernel
      check_pool(kind, {2, 4, 8, 8}, tile(8, 8), ties);     // a global pool (ResNet's head)
      check_pool(kind, {1, 1, 1, 1}, tile(1, 1), ties);     // identity
    }
}

Pool2dParams window(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  Pool2dParams p;
  p.kernel_h = kh, p.kernel_w = kw, p.stride_h = sh, p.stride_w = sw, p.pad_h = ph, p.pad_w = pw;
  return p;
}

// Overlapping and padded max-pool windows: dx adds every window's dy at its first maximum, so with
// ties (ReLU zeros) an element that is the first maximum of two windows gets both.
TEST(CpuFastPaths, OverlappingMaxPoolMatchesReference) {
  for (bool ties : {false, true}) {
    check_pool(PoolKind::max, {2, 8, 112, 112}, window(3, 3, 2, 2, 1, 1), ties);  // ResNet's stem pool
    check_pool(PoolKind::max, {2, 3, 15, 14}, window(3, 3, 2, 2, 1, 1), ties);    // odd and even sides
    check_pool(PoolKind::max, {3, 2, 9, 10}, window(3, 3, 1, 1, 1, 1), ties);     // stride 1: 9 windows overlap
    check_pool(PoolKind::max, {2, 2, 11, 7}, window(5, 2, 3, 1, 2, 0), ties);     // non-square, mixed strides
    check_pool(PoolKind::max, {1, 1, 3, 3}, window(3, 3, 2, 2, 2, 2), ties);      // corner windows only pad and one element
    check_pool(PoolKind::max, {2, 3, 8, 8}, window(3, 3, 2, 2, 0, 0), ties);      // no padding, leftover rows
  }
}

TEST(CpuFastPaths, OverlappingMaxPoolIgnoresNaNInForwardAsTheReferenceDoes) {
  Tensor x = Tensor::from_vector<float>({NAN, 1, 2, 3, NAN, NAN, NAN, NAN, 5}, {1, 1, 3, 3});
  const Pool2dParams p = window(2, 2, 1, 1, 0, 0);
  Tensor yf = Tensor::empty({1, 1, 2, 2}), yr = Tensor::empty({1, 1, 2, 2});
  cpu_backend().pool2d_forward(PoolKind::max, x, yf, p);
  reference_backend().pool2d_forward(PoolKind::max, x, yr, p);
  auto f = yf.to_vector<float>(), r = yr.to_vector<float>();
  EXPECT_EQ(f[0], 3.0f);
  for (int i = 0; i < 4; ++i)
    EXPECT_TRUE(f[i] == r[i] || (std::isnan(f[i]) && std::isnan(r[i]))) << i << ": " << f[i] << " vs " << r[i];
}

TEST(CpuFastPaths, TiledMaxPoolIgnoresNaNInForwardAsTheReferenceDoes) {
  Tensor x = Tensor::from_vector<float>({NAN, 1, 2, 3, NAN, NAN, NAN, NAN}, {1, 2, 2, 2});
  Tensor yf = Tensor::empty({1, 2, 1, 1}), yr = Tensor::empty({1, 2, 1, 1});
  cpu_backend().pool2d_forward(PoolKind::max, x, yf, tile(2, 2));
  reference_backend().pool2d_forward(PoolKind::max, x, yr, tile(2, 2));
  auto f = yf.to_vector<float>(), r = yr.to_vector<float>();
  EXPECT_EQ(f[0], 3.0f);
  EXPECT_EQ(f[0], r[0]);
  EXPECT_EQ(std::isinf(f[1]), std::isinf(r[1])) << "an all-NaN window: fast " << f[1] << ", reference " << r[1];
}

// Batch norm (training, with and without the fused ReLU, and inference) on the fast
// backend against the reference: forward, saved statistics and all gradients.
void check_batchnorm(const Shape& xs, double offset, bool relu) {
  const std::string what = fmt::format("batch norm{} {} offset {}", relu ? "+relu" : "", shape_str(xs), offset);
  const int64_t C = xs[1];
  Generator g(21);
  Tensor x = Tensor::randn(xs, g, offset, 2.0);
  Tensor gamma = Tensor::rand({C}, g, 0.5, 1.5), beta = Tensor::rand({C}, g, -0.5, 0.5);
  Tensor dy = Tensor::randn(xs, g);
  struct Out {
    Tensor y, mean, invstd, dx, dgamma, dbeta;
  };
  auto run = [&](Backend& be) {
    Out o{Tensor::empty(xs), Tensor::empty({C}), Tensor::empty({C}), Tensor::full(xs, 7.0), Tensor::empty({C}),
          Tensor::empty({C})};
    if (relu) {
      be.batchnorm_relu_forward_train(x, gamma, beta, o.y, o.mean, o.invstd, 1e-5);
      be.batchnorm_relu_backward(x, o.y, dy, gamma, beta, o.mean, o.invstd, o.dx, o.dgamma, o.dbeta);
    } else {
      be.batchnorm_forward_train(x, gamma, beta, o.y, o.mean, o.invstd, 1e-5);
      be.batchnorm_backward(x, dy, gamma, o.mean, o.invstd, o.dx, o.dgamma, o.dbeta);
    }
    return o;
  };
  Out f = run(cpu_backend()), r = run(reference_backend());
  const double M = static_cast<double>(x.numel() / C);
  expect_equal(f.y, r.y, 1e-4, what + " y");
  expect_equal(f.mean, r.mean, 1e-5 * (1 + std::abs(offset)), what + " mean");
  expect_equal(f.invstd, r.invstd, 1e-5, what + " invstd");
  expect_equal(f.dx, r.dx, 1e-4, what + " dx");
  expect_equal(f.dgamma, r.dgamma, 2e-5 * M, what + " dgamma");
  expect_equal(f.dbeta, r.dbeta, 2e-5 * M, what + " dbeta");

  Tensor mean = Tensor::rand({C}, g, -1, 1), var = Tensor::rand({C}, g, 0.5, 2);
  Tensor yf = Tensor::empty(xs), yr = Tensor::empty(xs);
  cpu_backend().batchnorm_forward_infer(x, gamma, beta, mean, var, yf, 1e-5);
  reference_backend().batchnorm_forward_infer(x, gamma, beta, mean, var, yr, 1e-5);
  expect_equal(yf, yr, 1e-4 * (1 + std::abs(offset)), what + " inference");
}

TEST(CpuFastPaths, BatchNormMatchesReference) {
  for (bool relu : {false, true}) {
    check_batchnorm({8, 16, 28, 28}, 0.0, relu);   // ResNet-20's first stage
    check_batchnorm({3, 5, 17, 1}, 0.0, relu);     // a plane length that is no multiple of the vector width
    check_batchnorm({2, 3, 4, 5, 6}, 0.0, relu);   // 5-D
    check_batchnorm({4, 6, 9, 9}, 100.0, relu);    // mean far from 0 against a spread of 2
    check_batchnorm({4, 3, 2, 2}, 0.0, relu);      // planes too small for the loops: oneDNN
    check_batchnorm({64, 32}, 0.0, relu);          // [N, C]: oneDNN
  }
}

// conv2d_backward reorders dy once for both backward convolutions; the results must be those of
// the two separate calls, bit for bit, and agree with the reference.
TEST(CpuFastPaths, SharedDyConvolutionBackwardEqualsSeparateCalls) {
  struct Case {
    Shape x, w;
    int64_t stride, pad;
    bool bias;
  };
  for (const Case& c : {Case{{4, 16, 14, 14}, {32, 16, 3, 3}, 1, 1, false},   // a ResNet 3x3
                        Case{{4, 32, 14, 14}, {64, 32, 1, 1}, 2, 0, false},   // a 1x1 stride-2 shortcut
                        Case{{8, 1, 28, 28}, {6, 1, 5, 5}, 1, 2, true}}) {   // LeNet's conv1 with bias
    Conv2dParams p;
    p.stride_h = p.stride_w = c.stride;
    p.pad_h = p.pad_w = c.pad;
    const int64_t P = Conv2dParams::out_size(c.x[2], c.w[2], c.stride, c.pad, 1);
    const int64_t Q = Conv2dParams::out_size(c.x[3], c.w[3], c.stride, c.pad, 1);
    Generator g(31);
    Tensor x = Tensor::randn(c.x, g), w = Tensor::randn(c.w, g, 0, 0.1), dy = Tensor::randn({c.x[0], c.w[0], P, Q}, g);
    auto run = [&](Backend& be, bool shared) {
      std::vector<Tensor> out{Tensor::full(c.x, 7.0), Tensor::full(c.w, 7.0),
                              c.bias ? Tensor::full({c.w[0]}, 7.0) : Tensor()};
      if (shared) {
        be.conv2d_backward(x, w, dy, out[0], out[1], out[2], p);
      } else {
        be.conv2d_backward_data(dy, w, out[0], p);
        be.conv2d_backward_weights(x, dy, out[1], out[2], p);
      }
      return out;
    };
    auto a = run(cpu_backend(), true), b = run(cpu_backend(), false), r = run(reference_backend(), false);
    const std::string what = fmt::format("conv backward x {} w {}", shape_str(c.x), shape_str(c.w));
    for (size_t k = 0; k < a.size(); ++k) {
      if (!a[k].defined()) continue;
      EXPECT_EQ(a[k].to_vector<float>(), b[k].to_vector<float>()) << what << " output " << k;
      auto av = a[k].to_vector<float>();
      float scale = 0;
      for (float v : av) scale = std::max(scale, std::abs(v));
      expect_equal(a[k], r[k], 1e-4 * scale, what + " vs reference, output " + std::to_string(k));
    }
  }
}

}  // namespace
}  // namespace hpdl
