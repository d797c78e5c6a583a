// The fast CPU backend's hand-written paths against the reference kernels,
// called directly on the two backends: shapes the paths special-case (window
// sizes, rows and columns no window reads, one-element planes) and inputs with
// ties, as ReLU outputs feeding a max pool have (the first maximum must win).
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/backend/backend.h"
#include "hpdl/backend/cpu/direct_conv.h"
#include "hpdl/core/random.h"
#include "hpdl/core/threading.h"
#include "tests/unit/test_util.h"

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

// AdamW on float32 runs in float32 vector loops; the reference computes each element in double
// and rounds. Twenty steps of both from the same start, with decoupled weight decay and a trust
// ratio-style scale, on sizes with and without a vector tail, stay within float rounding of
// each other, and the optimizer state too.
TEST(CpuFastPaths, AdamWMatchesReference) {
  for (int64_t n : {int64_t{1}, int64_t{37}, int64_t{4096}, int64_t{70001}}) {
    Generator gen(static_cast<uint64_t>(n));
    const Tensor p0 = Tensor::rand({n}, gen, -1, 1), m0 = Tensor::rand({n}, gen, -0.1, 0.1),
                 v0 = Tensor::rand({n}, gen, 0, 0.01);
    Tensor pf = p0.clone(), mf = m0.clone(), vf = v0.clone(), pr = p0.clone(), mr = m0.clone(), vr = v0.clone();
    OptimizerUpdate u;
    u.kind = OptimizerUpdate::Kind::adamw, u.lr = 1e-3, u.weight_decay = 0.05, u.beta1 = 0.9, u.beta2 = 0.999;
    u.eps = 1e-8, u.scale = 0.7, u.decoupled_decay = true;
    for (int64_t step = 1; step <= 20; ++step) {
      u.step = step;
      Tensor g = Tensor::rand({n}, gen, -1, 1);
      if (step == 3) g.fill_(0.0);  // v decays towards 0: sqrt(v) small next to eps
      cpu_backend().optimizer_update(u, pf, g, mf, vf);
      reference_backend().optimizer_update(u, pr, g, mr, vr);
    }
    const std::string what = "AdamW, " + std::to_string(n) + " elements";
    expect_equal(pf, pr, 2e-6, what + " parameters");
    expect_equal(mf, mr, 1e-6, what + " first moment");
    expect_equal(vf, vr, 1e-7, what + " second moment");
    // The update moved the parameters (a check that compares two no-ops would pass too).
    double moved = 0;
    auto a = pf.to_vector<float>(), b = p0.to_vector<float>();
    for (size_t i = 0; i < a.size(); ++i) moved = std::max(moved, static_cast<double>(std::abs(a[i] - b[i])));
    EXPECT_GT(moved, 1e-3) << what;
  }
  // Each element's result does not depend on where a thread's range starts (a vector body or a
  // scalar tail): one thread and three, and an update of the second half alone, agree bitwise.
  Generator gen(99);
  const int64_t n = 70001, half = 33333;
  const Tensor p0 = Tensor::rand({n}, gen, -1, 1), g = Tensor::rand({n}, gen, -1, 1);
  OptimizerUpdate u;
  u.kind = OptimizerUpdate::Kind::adamw, u.lr = 1e-2, u.weight_decay = 0.01, u.step = 2, u.decoupled_decay = true;
  std::vector<std::vector<float>> results;
  const int before = num_threads();
  for (int threads : {1, 3}) {
    set_num_threads(threads);
    Tensor p = p0.clone(), m = Tensor::zeros({n}), v = Tensor::zeros({n});
    cpu_backend().optimizer_update(u, p, g, m, v);
    results.push_back(p.to_vector<float>());
  }
  set_num_threads(before);
  Tensor p = p0.slice(0, half, n).clone(), m = Tensor::zeros({n - half}), v = Tensor::zeros({n - half});
  cpu_backend().optimizer_update(u, p, g.slice(0, half, n).contiguous(), m, v);
  const auto shard = p.to_vector<float>();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(results[0][i], results[1][i]) << "element " << i << ", one thread against three";
    if (i >= half) {
      ASSERT_EQ(results[0][i], shard[i - half]) << "element " << i << ", whole against a shard";
    }
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

// Binary ops' vectorized rows (dense, and against a value broadcast along the row, as a conv bias
// [1, K, 1, 1] is) against the definitions in backend.h, element by element, with a strided
// operand too (the generic loop): signs mixed so every select takes both sides.
TEST(CpuFastPaths, BinaryRowsMatchTheirDefinitions) {
  const double alpha = 0.2;
  auto expected = [&](BinaryOp op, double a, double b) {
    switch (op) {
      case BinaryOp::add: return a + b;
      case BinaryOp::sub: return a - b;
      case BinaryOp::mul: return a * b;
      case BinaryOp::div: return a / b;
      case BinaryOp::relu_grad: return b > 0 ? a : 0.0;
      case BinaryOp::leaky_relu_grad: return b > 0 ? a : alpha * a;
      case BinaryOp::add_relu: return std::max(a + b, 0.0);
      default: return 0.0;
    }
  };
  Generator g(47);
  const Shape full = {3, 4, 5, 6}, bias = {1, 4, 1, 1};
  Tensor dense_a = Tensor::randn(full, g), dense_b = Tensor::randn(full, g), bias_v = Tensor::randn(bias, g);
  Tensor strided_b = Tensor::randn({3, 4, 6, 5}, g).transpose(2, 3);  // inner stride 5
  struct Operands {
    const char* what;
    Tensor a, b;
  };
  for (const Operands& c : {Operands{"dense", dense_a, dense_b}, Operands{"row against a bias", dense_a, bias_v},
                            Operands{"bias against a row", bias_v, dense_b},
                            Operands{"strided", dense_a, strided_b}})
    for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div, BinaryOp::relu_grad,
                        BinaryOp::leaky_relu_grad, BinaryOp::add_relu}) {
      Tensor out = Tensor::full(full, 7.0);
      cpu_backend().binary(op, c.a, c.b, out, alpha);
      Tensor a = c.a.expand(full).contiguous(), b = c.b.expand(full).contiguous();
      std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>(), ov = out.to_vector<float>();
      for (size_t i = 0; i < ov.size(); ++i)
        ASSERT_NEAR(ov[i], expected(op, av[i], bv[i]), 1e-6 * (1 + std::abs(expected(op, av[i], bv[i]))))
            << binary_name(op) << ", " << c.what << ", element " << i;
    }
}

// The reference backend's vectorized unary rows (dense operands: DataParallel scales every
// gradient bucket with mul_scalar) against its generic loop on the same values through a strided
// view, bit for bit, and against the definitions; float32 and float64, signs mixed and zeros.
TEST(CpuFastPaths, ReferenceUnaryRowsMatchTheGenericLoop) {
  const double alpha = -0.375;
  auto expected = [&](UnaryOp op, double x) {
    switch (op) {
      case UnaryOp::mul_scalar: return x * alpha;
      case UnaryOp::add_scalar: return x + alpha;
      case UnaryOp::neg: return -x;
      case UnaryOp::square: return x * x;
      case UnaryOp::relu: return x > 0 ? x : 0.0;
      default: return 0.0;
    }
  };
  Generator g(53);
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor base = Tensor::randn({6, 37}, g).to(dt);
    base.slice(1, 0, 5).fill_(0.0);
    Tensor dense = base.contiguous(), strided = base.t().contiguous().t();  // same values, inner stride 6
    for (UnaryOp op : {UnaryOp::mul_scalar, UnaryOp::add_scalar, UnaryOp::neg, UnaryOp::square, UnaryOp::relu}) {
      // A dense output against the strided input: no dimension order gives both unit strides.
      Tensor fast = Tensor::full({6, 37}, 7.0, dt), slow = Tensor::full({6, 37}, 7.0, dt);
      reference_backend().unary(op, dense, fast, alpha);
      reference_backend().unary(op, strided, slow, alpha);
      const std::vector<double> f = fast.to_vector<double>(), s = slow.to_vector<double>(), x = dense.to_vector<double>();
      for (size_t i = 0; i < f.size(); ++i) {
        ASSERT_EQ(f[i], s[i]) << unary_name(op) << " " << dtype_name(dt) << ", element " << i;
        const double e = dt == DType::f32 ? static_cast<double>(static_cast<float>(expected(op, x[i]))) : expected(op, x[i]);
        ASSERT_NEAR(f[i], e, 1e-6 * (1 + std::abs(e))) << unary_name(op) << " " << dtype_name(dt) << ", element " << i;
      }
    }
  }
}

// Direct convolution for few input channels (backend/cpu/direct_conv.h): forward, weight, bias and
// input gradients against the reference over the shapes it special-cases: 1 to 4 input channels, filter
// widths 1 to 7 and non-square filters, output widths that are not a multiple of 8 (and below 8),
// output channel counts around its blocks of 8, padding from 0 to kernel - 1; and strided ones, which
// it computes on the space-to-depth input (input channels x strides <= 4): DCGAN's 4x4 stride-2 layer,
// odd sizes whose last rows and columns no window reaches, filters not divisible by the stride,
// different strides per axis.
TEST(CpuFastPaths, DirectConvolutionMatchesReference) {
  struct Case {
    Shape x, w;
    int64_t pad_h, pad_w;
    int64_t stride_h = 1, stride_w = 1;
  };
  for (const Case& c : {Case{{5, 1, 28, 28}, {6, 1, 5, 5}, 2, 2},      // LeNet-5 conv1
                        Case{{3, 1, 28, 28}, {16, 1, 3, 3}, 1, 1},     // ResNet-20's stem on Fashion-MNIST
                        Case{{2, 3, 13, 11}, {17, 3, 3, 3}, 1, 1},     // RGB, 17 = 2 blocks of 8 + 1
                        Case{{2, 2, 9, 30}, {9, 2, 5, 3}, 0, 2},       // non-square filter, no row padding
                        Case{{2, 4, 6, 5}, {3, 4, 7, 7}, 6, 6},        // output 12x11 from 6x5, pad = kernel - 1
                        Case{{1, 1, 4, 4}, {2, 1, 1, 1}, 0, 0},        // 1x1 filter, 4-wide output
                        Case{{4, 1, 8, 8}, {8, 1, 4, 2}, 1, 0},        // even filter sizes
                        Case{{3, 1, 28, 28}, {64, 1, 4, 4}, 1, 1, 2, 2},  // DCGAN's D conv1: 28 -> 14
                        Case{{2, 1, 13, 12}, {9, 1, 3, 5}, 1, 2, 2, 2},   // odd filters, row 12 unread
                        Case{{2, 1, 10, 9}, {3, 1, 2, 2}, 0, 0, 2, 2},    // 2x2 stride 2: one tap per phase
                        Case{{2, 2, 9, 10}, {5, 2, 3, 3}, 1, 0, 2, 1},    // stride 2 x 1 on 2 channels
                        Case{{3, 1, 10, 17}, {4, 1, 2, 7}, 0, 3, 1, 3}}) {  // stride 1 x 3, 7 -> 3 wide
    Conv2dParams p;
    p.pad_h = c.pad_h, p.pad_w = c.pad_w;
    p.stride_h = c.stride_h, p.stride_w = c.stride_w;
    const int64_t P = Conv2dParams::out_size(c.x[2], c.w[2], c.stride_h, c.pad_h, 1);
    const int64_t Q = Conv2dParams::out_size(c.x[3], c.w[3], c.stride_w, c.pad_w, 1);
    const Shape ys = {c.x[0], c.w[0], P, Q};
    const std::string what = fmt::format("direct conv x {} w {} pad {},{} stride {},{}", shape_str(c.x),
                                         shape_str(c.w), c.pad_h, c.pad_w, c.stride_h, c.stride_w);
    Generator g(41);
    Tensor x = Tensor::randn(c.x, g), w = Tensor::randn(c.w, g, 0, 0.3), b = Tensor::randn({c.w[0]}, g);
    Tensor dy = Tensor::randn(ys, g);
    ASSERT_TRUE(cpu::direct_conv_applies(c.x, c.w, p)) << what;
    Tensor yf = Tensor::full(ys, 7.0), yr = Tensor::empty(ys);
    cpu::direct_conv_forward(x, w, b, yf, p);
    reference_backend().conv2d_forward(x, w, b, yr, p);
    // Relative to the largest value, as for the oneDNN convolutions above.
    auto scaled = [](const Tensor& t) {
      float m = 0;
      for (float v : t.to_vector<float>()) m = std::max(m, std::abs(v));
      return 1e-5 * m;
    };
    expect_equal(yf, yr, scaled(yr), what + " forward");
    Tensor dwf = Tensor::full(c.w, 7.0), dbf = Tensor::full({c.w[0]}, 7.0);
    Tensor dwr = Tensor::empty(c.w), dbr = Tensor::empty({c.w[0]});
    cpu::direct_conv_backward_weights(x, dy, dwf, dbf, p);
    reference_backend().conv2d_backward_weights(x, dy, dwr, dbr, p);
    expect_equal(dwf, dwr, scaled(dwr), what + " backward weights");
    expect_equal(dbf, dbr, scaled(dbr), what + " backward bias");
    Tensor dwn = Tensor::full(c.w, 7.0);  // without the bias gradient
    cpu::direct_conv_backward_weights(x, dy, dwn, Tensor(), p);
    EXPECT_EQ(dwn.to_vector<float>(), dwf.to_vector<float>()) << what;
    Tensor dxf = Tensor::full(c.x, 7.0), dxr = Tensor::empty(c.x);
    cpu::direct_conv_backward_data(dy, w, dxf, p);
    reference_backend().conv2d_backward_data(dy, w, dxr, p);
    expect_equal(dxf, dxr, scaled(dxr), what + " backward data");
    // Through the backend, whichever kernel it prefers for the shape.
    Tensor yb = Tensor::empty(ys), dwb = Tensor::empty(c.w);
    cpu_backend().conv2d_forward(x, w, b, yb, p);
    cpu_backend().conv2d_backward_weights(x, dy, dwb, Tensor(), p);
    Tensor dxb = Tensor::empty(c.x);
    cpu_backend().conv2d_backward_data(dy, w, dxb, p);
    expect_equal(dxb, dxr, scaled(dxr), what + " backward data through the backend");
    expect_equal(yb, yr, scaled(yr), what + " forward through the backend");
    expect_equal(dwb, dwr, scaled(dwr), what + " backward weights through the backend");
  }
  // Shapes it does not take.
  Conv2dParams strided;
  strided.stride_h = strided.stride_w = 2;
  EXPECT_TRUE(cpu::direct_conv_applies({1, 1, 8, 8}, {4, 1, 3, 3}, strided));
  EXPECT_FALSE(cpu::direct_conv_applies({1, 2, 8, 8}, {4, 2, 3, 3}, strided));   // 2 channels x 4 phases
  strided.stride_h = strided.stride_w = 3;
  EXPECT_FALSE(cpu::direct_conv_applies({1, 1, 9, 9}, {4, 1, 3, 3}, strided));   // 9 phases
  Conv2dParams dilated;
  dilated.dilation_h = 2;
  EXPECT_FALSE(cpu::direct_conv_applies({1, 1, 8, 8}, {4, 1, 3, 3}, dilated));
  EXPECT_FALSE(cpu::direct_conv_applies({1, 5, 8, 8}, {4, 5, 3, 3}, {}));     // 5 input channels
  EXPECT_FALSE(cpu::direct_conv_applies({1, 1, 16, 16}, {4, 1, 9, 9}, {}));   // 9x9 filter
}

// Its weight gradient sums the batch in fixed chunks combined in a fixed order: bit for bit the
// same with 1 and 2 threads (the kill -9 resume tests rely on reproducible steps).
TEST(CpuFastPaths, DirectConvolutionWeightGradientDoesNotDependOnThreads) {
  Generator g(43);
  Tensor x = Tensor::randn({37, 1, 28, 28}, g), dy = Tensor::randn({37, 6, 28, 28}, g);
  Conv2dParams p;
  p.pad_h = p.pad_w = 2;
  const int before = num_threads();
  std::vector<std::vector<float>> dws;
  for (int t : {1, 2}) {
    set_num_threads(t);
    Tensor dw = Tensor::empty({6, 1, 5, 5}), db = Tensor::empty({6});
    cpu_backend().conv2d_backward_weights(x, dy, dw, db, p);
    dws.push_back(dw.to_vector<float>());
  }
  set_num_threads(before);
  EXPECT_EQ(dws[0], dws[1]);
}

// The convolution kernels check their shapes themselves: called directly with shapes conv2d
// refuses (3 input channels for weights of 2 groups of 2; a zero group count), they throw an
// hpdl::Error naming the kernel and the shapes instead of reading past the end of x (reference),
// failing inside oneDNN, or dividing by zero.
TEST(CpuConvKernels, RefuseInconsistentShapesWithAnError) {
  Generator g(7);
  Conv2dParams p;
  p.stride_h = p.stride_w = 2, p.pad_h = p.pad_w = 1, p.groups = 2;
  Conv2dParams zero_groups = p;
  zero_groups.groups = 0;
  Tensor x = Tensor::randn({2, 3, 9, 9}, g), w = Tensor::randn({8, 2, 3, 3}, g), y = Tensor::empty({2, 8, 5, 5});
  Tensor x4 = Tensor::randn({2, 4, 9, 9}, g), dw = Tensor::empty({8, 2, 3, 3}), db = Tensor::empty({8});
  for (Backend* be : {&reference_backend(), &cpu_backend()}) {
    const std::string name = be->name();
    std::string m = test::error_of([&] { be->conv2d_forward(x, w, Tensor(), y, p); });
    EXPECT_NE(m.find("conv2d_forward"), std::string::npos) << name << ": " << m;
    EXPECT_NE(m.find("[2, 3, 9, 9]"), std::string::npos) << name << ": " << m;
    EXPECT_NE(m.find("[8, 2, 3, 3]"), std::string::npos) << name << ": " << m;
    m = test::error_of([&] { be->conv2d_backward_data(y, w, x, p); });
    EXPECT_NE(m.find("conv2d_backward_data"), std::string::npos) << name << ": " << m;
    m = test::error_of([&] { be->conv2d_backward_weights(x, y, dw, db, p); });
    EXPECT_NE(m.find("conv2d_backward_weights"), std::string::npos) << name << ": " << m;
    m = test::error_of([&] { be->conv2d_forward(x4, w, Tensor(), y, zero_groups); });
    EXPECT_NE(m.find("groups 0"), std::string::npos) << name << ": " << m;
    m = test::error_of([&] { be->conv2d_forward(x4, w, Tensor::empty({7}), y, p); });  // bias of 7 for 8 filters
    EXPECT_NE(m.find("bias [7]"), std::string::npos) << name << ": " << m;
    // The same kernels with consistent shapes still run.
    be->conv2d_forward(x4, w, db.fill_(0.0), y, p);
    EXPECT_TRUE(std::isfinite(y.to_vector<float>()[0])) << name;
  }
}

}  // namespace
}  // namespace hpdl
