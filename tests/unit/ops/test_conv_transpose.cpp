// conv_transpose2d: values worked out by hand (what PyTorch's
// torch.nn.functional.conv_transpose2d gives by its definition), the fast
// backend against the scatter-loop reference over many geometries, the adjoint
// identity with conv2d, finite-difference gradients in float64, the
// recorded second derivative, nn::ConvTranspose2d, and the errors bad input gets.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"
#include "hpdl/nn/layers.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using test::error_of;

using test::contains;

ConvTranspose2dParams params(int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t oph = 0, int64_t opw = 0,
                             int64_t dh = 1, int64_t dw = 1, int64_t groups = 1) {
  ConvTranspose2dParams p;
  p.stride_h = sh, p.stride_w = sw, p.pad_h = ph, p.pad_w = pw;
  p.output_pad_h = oph, p.output_pad_w = opw, p.dilation_h = dh, p.dilation_w = dw, p.groups = groups;
  return p;
}

Tensor f32(const std::vector<float>& v, const Shape& s) { return Tensor::from_vector(v, s); }

void expect_values(const Tensor& y, const Shape& shape, const std::vector<float>& expected, const std::string& what) {
  ASSERT_EQ(y.shape(), shape) << what;
  std::vector<float> got = y.to_vector<float>();
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-5) << what << " element " << i;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// x = [[1, 2], [3, 4]], w = [[1, 2], [3, 4]] (one channel each). Each input pixel
// adds x[a][b] * w at output offset (a*stride - pad, b*stride - pad).
TEST(ConvTranspose, ForwardMatchesHandComputedValues) {
  Tensor x = f32({1, 2, 3, 4}, {1, 1, 2, 2});
  Tensor w = f32({1, 2, 3, 4}, {1, 1, 2, 2});
  // Stride 1: the "full" convolution, overlapping windows summed.
  expect_values(conv_transpose2d(x, w), {1, 1, 3, 3}, {1, 4, 4, 6, 20, 16, 9, 24, 16}, "stride 1");
  // Padding 1 crops one row and column on every side of that.
  expect_values(conv_transpose2d(x, w, {}, params(1, 1, 1, 1)), {1, 1, 1, 1}, {20}, "stride 1 padding 1");
  // Stride 2: the windows tile the output without overlap; bias 0.5 everywhere.
  Tensor b = f32({0.5f}, {1});
  const std::vector<float> tiled = {1.5, 2.5, 2.5, 4.5, 3.5, 4.5, 6.5, 8.5, 3.5, 6.5, 4.5, 8.5, 9.5, 12.5, 12.5, 16.5};
  expect_values(conv_transpose2d(x, w, b, params(2, 2, 0, 0)), {1, 1, 4, 4}, tiled, "stride 2 bias");
  // Output padding 1 adds a last row and column that no input reaches: bias only.
  std::vector<float> padded;
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 5; ++c) padded.push_back(r < 4 && c < 4 ? tiled[r * 4 + c] : 0.5f);
  expect_values(conv_transpose2d(x, w, b, params(2, 2, 0, 0, 1, 1)), {1, 1, 5, 5}, padded, "output padding");
  // Stride 2, padding 1, output padding 1: rows/cols hit by (a, r) = (0, 1), (1, 0), (1, 1).
  expect_values(conv_transpose2d(x, w, {}, params(2, 2, 1, 1, 1, 1)), {1, 1, 3, 3}, {4, 6, 8, 6, 4, 8, 12, 12, 16},
                "stride 2 padding 1 output padding 1");
  // Two input channels into two output channels: y[k] = sum_c x[c] (*) w[c, k].
  Tensor x2 = f32({1, 2, 3, 4, 1, 0, 0, 1}, {1, 2, 2, 2});
  Tensor w2 = f32({1, 0, 0, 0, /**/ 0, 0, 0, 2, /**/ 1, 1, 1, 1, /**/ -1, 0, 0, 0}, {2, 2, 2, 2});
  // k = 0: x[0] * delta(0,0) + x[1] (*) ones;  k = 1: x[0] * 2 delta(1,1) - x[1] * delta(0,0)
  expect_values(conv_transpose2d(x2, w2), {1, 2, 3, 3},
                {2, 3, 0, 4, 6, 1, 0, 1, 1, /**/ -1, 0, 0, 0, 1, 4, 0, 6, 8}, "two channels");
}

// The fast CPU backend (oneDNN and the direct kernels) against the scatter loops.
TEST(ConvTranspose, ForwardMatchesReferenceLoops) {
  struct Case {
    Shape x, w;
    ConvTranspose2dParams p;
    bool bias;
  };
  const std::vector<Case> cases = {
      {{2, 3, 5, 5}, {3, 4, 3, 3}, params(1, 1, 0, 0), true},
      {{2, 3, 5, 5}, {3, 4, 3, 3}, params(1, 1, 1, 1), false},
      {{4, 16, 7, 7}, {16, 8, 4, 4}, params(2, 2, 1, 1), true},        // DCGAN up-sampling 7 -> 14
      {{3, 8, 14, 14}, {8, 1, 4, 4}, params(2, 2, 1, 1), true},        // 14 -> 28, one output channel
      {{2, 3, 4, 6}, {3, 2, 3, 2}, params(2, 3, 1, 0, 1, 2), true},    // non-square everything, output padding
      {{1, 2, 5, 3}, {2, 3, 3, 3}, params(3, 2, 2, 1, 2, 1), false},   // stride 3, output padding 2
      {{2, 4, 4, 4}, {4, 3, 3, 3}, params(1, 1, 2, 2, 0, 0, 2, 2), true},  // dilation 2
      {{2, 4, 3, 5}, {4, 2, 3, 3}, params(2, 2, 1, 1, 1, 0, 1, 1, 2), true},  // groups 2
  };
  Generator gen(7);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    Tensor x = Tensor::rand(c.x, gen, -1, 1), w = Tensor::rand(c.w, gen, -1, 1);
    Tensor b = c.bias ? Tensor::rand({c.w[1] * c.p.groups}, gen, -1, 1) : Tensor();
    Tensor ref = conv_transpose2d_reference(x, w, b, c.p);
    const double scale = std::max(1.0, max_abs(ref));
    EXPECT_LE(max_abs_diff(conv_transpose2d(x, w, b, c.p), ref), 1e-5 * scale) << "case " << i << " on cpu";
    {
      ScopedCpuBackend use(reference_backend());
      EXPECT_LE(max_abs_diff(conv_transpose2d(x, w, b, c.p), ref), 1e-5 * scale) << "case " << i << " on reference";
    }
    // float64 runs on the reference kernels through the same op.
    Tensor y64 = conv_transpose2d(x.to(DType::f64), w.to(DType::f64), c.bias ? b.to(DType::f64) : Tensor(), c.p);
    EXPECT_EQ(y64.dtype(), DType::f64);
    EXPECT_LE(max_abs_diff(y64, conv_transpose2d_reference(x.to(DType::f64), w.to(DType::f64),
                                                           c.bias ? b.to(DType::f64) : Tensor(), c.p)),
              1e-12 * scale)
        << "case " << i << " in float64";
  }
}

// <conv_transpose2d(x, w), y> = <x, conv2d(y, w)> for every x, y: the defining property.
TEST(ConvTranspose, IsTheAdjointOfConv2d) {
  Generator gen(3);
  for (const ConvTranspose2dParams& p : {params(1, 1, 0, 0), params(2, 2, 1, 1), params(2, 3, 1, 2, 1, 2, 1, 2)}) {
    Tensor x = Tensor::rand({2, 3, 4, 5}, gen, -1, 1, DType::f64);
    Tensor w = Tensor::rand({3, 2, 3, 4}, gen, -1, 1, DType::f64);
    Tensor t = conv_transpose2d(x, w, {}, p);
    Tensor y = Tensor::rand(t.shape(), gen, -1, 1, DType::f64);
    Tensor c = conv2d(y, w, {}, p.as_conv());
    ASSERT_EQ(c.shape(), x.shape()) << "conv2d maps the transposed output back to the input size";
    EXPECT_NEAR(sum(mul(t, y)).item(), sum(mul(x, c)).item(), 1e-10);
  }
}

TEST(ConvTranspose, GradientsMatchFiniteDifferencesInFloat64) {
  struct Case {
    Shape x, w;
    ConvTranspose2dParams p;
  };
  const std::vector<Case> cases = {
      {{2, 2, 3, 3}, {2, 3, 2, 2}, params(1, 1, 0, 0)},
      {{1, 3, 3, 4}, {3, 2, 4, 4}, params(2, 2, 1, 1)},
      {{2, 2, 2, 3}, {2, 2, 3, 2}, params(2, 3, 1, 0, 1, 2)},
      {{1, 2, 3, 3}, {2, 2, 2, 3}, params(1, 2, 1, 1, 0, 1, 2, 1)},
  };
  Generator gen(11);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    Tensor x = Tensor::rand(c.x, gen, -1, 1, DType::f64).set_requires_grad();
    Tensor w = Tensor::rand(c.w, gen, -1, 1, DType::f64).set_requires_grad();
    Tensor b = Tensor::rand({c.w[1]}, gen, -1, 1, DType::f64).set_requires_grad();
    const ConvTranspose2dParams p = c.p;
    GradcheckResult r = gradcheck([p](const std::vector<Tensor>& in) { return conv_transpose2d(in[0], in[1], in[2], p); },
                                  {x, w, b}, 1e-6, 1e-7, 1e-5);
    EXPECT_TRUE(r.ok) << "case " << i << ": " << r.message;
  }
}

// The float32 gradients of the fast backend equal the reference backend's.
TEST(ConvTranspose, FastGradientsMatchReferenceBackend) {
  Generator gen(5);
  const ConvTranspose2dParams p = params(2, 2, 1, 1);
  Tensor x0 = Tensor::rand({4, 16, 7, 7}, gen, -1, 1), w0 = Tensor::rand({16, 8, 4, 4}, gen, -1, 1);
  Tensor b0 = Tensor::rand({8}, gen, -1, 1), dy = Tensor::rand({4, 8, 14, 14}, gen, -1, 1);
  auto grads = [&] {
    Tensor x = x0.clone().set_requires_grad(), w = w0.clone().set_requires_grad(), b = b0.clone().set_requires_grad();
    sum(mul(conv_transpose2d(x, w, b, p), dy)).backward();
    return std::vector<Tensor>{x.grad(), w.grad(), b.grad()};
  };
  std::vector<Tensor> fast = grads(), ref;
  {
    ScopedCpuBackend use(reference_backend());
    ref = grads();
  }
  const char* names[] = {"dx", "dw", "db"};
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(fast[i].defined() && ref[i].defined()) << names[i];
    EXPECT_LE(max_abs_diff(fast[i], ref[i]), 1e-5 * std::max(1.0, max_abs(ref[i]))) << names[i];
  }
}

// Second derivatives used to be refused here; now the recorded backward is
// made of conv2d and conv2d_weight (checked against finite differences in
// test_gradgrad.cpp). d/dx sum(convT(x, w)^2) = 2 conv2d(convT(x, w), w) is linear
// in x, so its own x-gradient along ones is 2 conv2d(convT(1, w), w) summed back.
TEST(ConvTranspose, SecondDerivativesAreRecorded) {
  Tensor x = Tensor::ones({1, 1, 2, 2}, DType::f64).set_requires_grad();
  Tensor w = Tensor::ones({1, 1, 2, 2}, DType::f64).set_requires_grad();
  Tensor y = sum(square(conv_transpose2d(x, w)));
  Tensor g = grad({y}, {x}, {}, false, true)[0];
  ASSERT_TRUE(g.requires_grad());
  // y = sum of the 3x3 output of ones * ones: counts 1 2 1 / 2 4 2 / 1 2 1; each
  // input pixel sees one 2x2 corner block summing to 9, so dy/dx = 2 * 9 = 18.
  for (double v : g.to_vector<double>()) EXPECT_NEAR(v, 18.0, 1e-12);
  Tensor h = grad({sum(g)}, {x})[0];
  // d/dx_j sum_i 18(x) = sum_i 2 <convT(e_i), convT(e_j)>: overlaps 4 (i = j), 2 (edge neighbours), 1 (diagonal).
  for (double v : h.to_vector<double>()) EXPECT_NEAR(v, 2.0 * (4 + 2 + 2 + 1), 1e-12);
}

TEST(ConvTranspose, BadInputGetsErrorsNamingOpAndShapes) {
  Tensor x = Tensor::ones({1, 3, 4, 4}), w = Tensor::ones({3, 2, 3, 3});
  std::string m = error_of([&] { conv_transpose2d(Tensor::ones({1, 4, 4, 4}), w); });
  EXPECT_TRUE(contains(m, "conv_transpose2d") && contains(m, "[1, 4, 4, 4]") && contains(m, "[3, 2, 3, 3]")) << m;
  m = error_of([&] { conv_transpose2d(x, w, {}, params(2, 2, 0, 0, 2, 0)); });
  EXPECT_TRUE(contains(m, "conv_transpose2d") && contains(m, "output padding (2, 0)") && contains(m, "stride (2, 2)"))
      << m;
  m = error_of([&] { conv_transpose2d(x, w, {}, params(1, 1, 0, 0, 0, 1)); });  // output padding needs stride > 1
  EXPECT_TRUE(contains(m, "output padding")) << m;
  m = error_of([&] { conv_transpose2d(x, w, Tensor::ones({3})); });
  EXPECT_TRUE(contains(m, "conv_transpose2d") && contains(m, "bias [3]") && contains(m, "2 output channels")) << m;
  m = error_of([&] { conv_transpose2d(Tensor::ones({3, 4, 4}), w); });
  EXPECT_TRUE(contains(m, "conv_transpose2d") && contains(m, "[3, 4, 4]")) << m;
  m = error_of([&] { conv_transpose2d(x, Tensor::ones({3, 2, 3, 3}, DType::f64)); });
  EXPECT_TRUE(contains(m, "conv_transpose2d") && contains(m, "dtype")) << m;
  m = error_of([&] { conv_transpose2d(x, w, {}, params(0, 1, 0, 0)); });
  EXPECT_TRUE(contains(m, "conv_transpose2d") && contains(m, "stride (0, 1)")) << m;
  m = error_of([&] { conv_transpose2d(Tensor::ones({1, 3, 1, 1}), w, {}, params(1, 1, 2, 2)); });  // 1 + 2 - 4 < 1
  EXPECT_TRUE(contains(m, "conv_transpose2d") && contains(m, "empty output")) << m;
  m = error_of([&] { conv_transpose2d_reference(x, w, {}, params(2, 2, 0, 0, 3, 0)); });
  EXPECT_TRUE(contains(m, "conv_transpose2d_reference") && contains(m, "output padding")) << m;
}

TEST(ConvTranspose, LayerShapesInitAndErrors) {
  Generator gen(1);
  nn::ConvTranspose2d up(6, 4, nn::ConvTranspose2dOptions::k(4).s(2).p(1), gen);
  EXPECT_EQ(up.weight.shape(), (Shape{6, 4, 4, 4}));
  EXPECT_EQ(up.bias.shape(), (Shape{4}));
  EXPECT_EQ(up.type_name(), "ConvTranspose2d");
  // PyTorch's init: fan_in = weight.dim(1) * kh * kw = 64, bound 1/8 for weight and bias.
  EXPECT_LE(max_abs(up.weight), 0.125 + 1e-7);
  EXPECT_GT(max_abs(up.weight), 0.1);
  EXPECT_LE(max_abs(up.bias), 0.125 + 1e-7);
  Tensor y = up(Tensor::ones({2, 6, 7, 5}));
  EXPECT_EQ(y.shape(), (Shape{2, 4, 14, 10}));
  EXPECT_EQ(up.output_size(7, 5), (std::pair<int64_t, int64_t>{14, 10}));
  // (H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1 = 4*3 - 2 + 2*2 + 2 + 1 = 17
  nn::ConvTranspose2d odd(2, 2, nn::ConvTranspose2dOptions::k(3).s(3).p(1).op(2).d(2).no_bias(), gen);
  EXPECT_FALSE(odd.bias.defined());
  EXPECT_EQ(odd(Tensor::ones({1, 2, 5, 5})).shape(), (Shape{1, 2, 17, 17}));
  EXPECT_EQ(odd.named_parameters().size(), 1u);

  std::string m = error_of([&] { up(Tensor::ones({2, 5, 7, 7})); });
  EXPECT_TRUE(contains(m, "ConvTranspose2d(6, 4)") && contains(m, "[2, 5, 7, 7]")) << m;
  m = error_of([&] { nn::ConvTranspose2d(6, 4, nn::ConvTranspose2dOptions::k(3).s(2).op(2), gen); });
  EXPECT_TRUE(contains(m, "ConvTranspose2d(6, 4)") && contains(m, "output_padding 2")) << m;
  m = error_of([&] { nn::ConvTranspose2d(6, 4, nn::ConvTranspose2dOptions::k(3).g(4), gen); });
  EXPECT_TRUE(contains(m, "groups = 4")) << m;
  m = error_of([&] { nn::ConvTranspose2d(0, 4, {}, gen); });
  EXPECT_TRUE(contains(m, "in_channels (0)")) << m;
}

}  // namespace
}  // namespace hpdl
