// Second derivatives through convolutions and pooling: gradgradcheck (finite
// differences of the create_graph first derivative, float64) of conv2d,
// conv_transpose2d and conv2d_weight in input and weight over strides,
// padding, dilation and groups, and of max and avg pooling; the plain
// (unrecorded) backward still runs the fused kernels bitwise; the errors
// conv2d_weight gives bad input.
#include <gtest/gtest.h>

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

Conv2dParams conv_params(int64_t stride, int64_t pad, int64_t dil, int64_t groups) {
  Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.dilation_h = p.dilation_w = dil;
  p.groups = groups;
  return p;
}

Tensor leaf(const Shape& s, Generator& gen) { return Tensor::rand(s, gen, -1, 1, DType::f64).set_requires_grad(); }

struct ConvCase {
  const char* name;
  int64_t n, c, h, w, k, r, s, stride, pad, dil, groups;
};

// Strides that do and do not divide the input, padding, dilation, groups, a non-square kernel.
const std::vector<ConvCase> kConvCases = {
    {"plain 3x3", 1, 2, 5, 5, 2, 3, 3, 1, 0, 1, 1},
    {"stride 2 pad 1", 2, 2, 6, 5, 3, 3, 3, 2, 1, 1, 1},
    {"stride 2, cropped last row", 1, 2, 7, 6, 2, 2, 2, 2, 0, 1, 1},
    {"dilation 2 pad 2", 1, 1, 7, 7, 2, 3, 3, 1, 2, 2, 1},
    {"groups 2 stride 2", 1, 4, 6, 6, 4, 3, 2, 2, 1, 1, 2},
    {"stride 3 pad 1 dil 2 groups 2", 1, 2, 9, 8, 2, 2, 3, 3, 1, 2, 2},
};

// The first derivative is bilinear in (x, w) for conv2d alone, so a tanh after
// it makes the second derivative depend on everything (dy depends on x and w).
TEST(GradGrad, Conv2dInInputAndWeight) {
  for (const ConvCase& t : kConvCases) {
    Generator gen(11);
    Tensor x = leaf({t.n, t.c, t.h, t.w}, gen), w = leaf({t.k, t.c / t.groups, t.r, t.s}, gen), b = leaf({t.k}, gen);
    const Conv2dParams p = conv_params(t.stride, t.pad, t.dil, t.groups);
    Fn f = [p](const std::vector<Tensor>& in) { return tanh(conv2d(in[0], in[1], in[2], p)); };
    GradcheckResult r = gradgradcheck(f, {x, w, b});
    EXPECT_TRUE(r.ok) << t.name << ": " << r.message;
    // Plain conv2d (no nonlinearity): the cross terms d2/dx dw alone.
    Fn lin = [p](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), p); };
    r = gradgradcheck(lin, {x, w});
    EXPECT_TRUE(r.ok) << t.name << " (linear): " << r.message;
  }
}

TEST(GradGrad, ConvTranspose2dInInputAndWeight) {
  struct Case {
    const char* name;
    int64_t n, c, h, w, k, r, s, stride, pad, out_pad, dil, groups;
  };
  const std::vector<Case> cases = {
      {"plain", 1, 2, 3, 3, 2, 3, 3, 1, 0, 0, 1, 1},
      {"stride 2 pad 1 (DCGAN)", 2, 2, 3, 3, 2, 4, 4, 2, 1, 0, 1, 1},
      {"stride 2 output pad 1", 1, 2, 3, 4, 3, 3, 3, 2, 1, 1, 1, 1},
      {"dilation 2 groups 2", 1, 4, 3, 3, 2, 2, 3, 2, 1, 1, 2, 2},
  };
  for (const Case& t : cases) {
    Generator gen(12);
    Tensor x = leaf({t.n, t.c, t.h, t.w}, gen), w = leaf({t.c, t.k / t.groups, t.r, t.s}, gen), b = leaf({t.k}, gen);
    ConvTranspose2dParams p;
    p.stride_h = p.stride_w = t.stride;
    p.pad_h = p.pad_w = t.pad;
    p.output_pad_h = p.output_pad_w = t.out_pad;
    p.dilation_h = p.dilation_w = t.dil;
    p.groups = t.groups;
    Fn f = [p](const std::vector<Tensor>& in) { return tanh(conv_transpose2d(in[0], in[1], in[2], p)); };
    GradcheckResult r = gradgradcheck(f, {x, w, b});
    EXPECT_TRUE(r.ok) << t.name << ": " << r.message;
  }
}

// conv2d_weight itself: first derivatives (its recorded node) and second ones.
TEST(GradGrad, Conv2dWeightOp) {
  for (const ConvCase& t : kConvCases) {
    Generator gen(13);
    const Conv2dParams p = conv_params(t.stride, t.pad, t.dil, t.groups);
    const Shape ws{t.k, t.c / t.groups, t.r, t.s};
    Tensor x = leaf({t.n, t.c, t.h, t.w}, gen);
    const Shape ys = conv2d(x.detach(), Tensor::zeros(ws, DType::f64), Tensor(), p).shape();
    Tensor dy = leaf(ys, gen);
    // Against the fused kernel's weight gradient of the same convolution.
    Tensor xx = x.detach().set_requires_grad(), ww = Tensor::zeros(ws, DType::f64).set_requires_grad();
    Tensor expected = grad({sum(mul(conv2d(xx, ww, Tensor(), p), dy.detach()))}, {ww})[0];
    Tensor got = conv2d_weight(x.detach(), dy.detach(), ws, p);
    std::vector<double> e = expected.to_vector<double>(), g = got.to_vector<double>();
    ASSERT_EQ(e.size(), g.size());
    for (size_t i = 0; i < e.size(); ++i) EXPECT_NEAR(g[i], e[i], 1e-12) << t.name << " element " << i;
    Fn f = [p, ws](const std::vector<Tensor>& in) { return conv2d_weight(in[0], in[1], ws, p); };
    GradcheckResult r = gradcheck(f, {x, dy});
    EXPECT_TRUE(r.ok) << t.name << ": " << r.message;
    Fn sq = [p, ws](const std::vector<Tensor>& in) { return square(conv2d_weight(in[0], in[1], ws, p)); };
    r = gradgradcheck(sq, {x, dy});
    EXPECT_TRUE(r.ok) << t.name << " (second order): " << r.message;
  }
}

// A third derivative goes through the closed set {conv2d, conv_transpose2d, conv2d_weight} once more.
TEST(GradGrad, Conv2dThirdDerivative) {
  Generator gen(14);
  Tensor x = leaf({1, 2, 5, 5}, gen), w = leaf({2, 2, 3, 3}, gen);
  const Conv2dParams p = conv_params(2, 1, 1, 1);
  Fn first = [p](const std::vector<Tensor>& in) {
    Tensor y = tanh(conv2d(in[0], in[1], Tensor(), p));
    std::vector<Tensor> g = grad({sum(square(y))}, {in[0], in[1]}, {}, true, true);
    return add(sum(square(g[0])), sum(square(g[1])));
  };
  GradcheckResult r = gradgradcheck(first, {x, w});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(GradGrad, Pooling) {
  struct Case {
    const char* name;
    PoolKind kind;
    int64_t k, stride, pad;
    bool include_pad;
  };
  const std::vector<Case> cases = {
      {"max 2x2", PoolKind::max, 2, 2, 0, false},       {"max 3x3 stride 2 pad 1", PoolKind::max, 3, 2, 1, false},
      {"avg 2x2", PoolKind::avg, 2, 2, 0, false},       {"avg 3x3 stride 2 pad 1", PoolKind::avg, 3, 2, 1, false},
      {"avg 3x3 pad 1 incl.", PoolKind::avg, 3, 1, 1, true},
  };
  for (const Case& t : cases) {
    Generator gen(15);
    // randn values: no ties inside a window, and no argmax flips within eps.
    Tensor x = Tensor::randn({2, 2, 6, 5}, gen, 0, 1, DType::f64).set_requires_grad();
    Pool2dParams p;
    p.kernel_h = p.kernel_w = t.k;
    p.stride_h = p.stride_w = t.stride;
    p.pad_h = p.pad_w = t.pad;
    p.count_include_pad = t.include_pad;
    const PoolKind kind = t.kind;
    Fn f = [p, kind](const std::vector<Tensor>& in) {
      Tensor y = kind == PoolKind::max ? max_pool2d(in[0], p) : avg_pool2d(in[0], p);
      return mul(y, sin(y));  // nonlinear after the pooling: dy depends on x
    };
    GradcheckResult r = gradgradcheck(f, {x});
    EXPECT_TRUE(r.ok) << t.name << ": " << r.message;
    // The recorded first derivative equals the fused one.
    Tensor v = Tensor::rand(f({x.detach()}).shape(), gen, -1, 1, DType::f64);
    Tensor fused = grad({sum(mul(f({x}), v))}, {x})[0];
    Tensor recorded = grad({sum(mul(f({x}), v))}, {x}, {}, false, true)[0];
    std::vector<double> a = fused.to_vector<double>(), b = recorded.to_vector<double>();
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12) << t.name << " element " << i;
  }
}

// Without create_graph the backward is the fused kernels' output, bit for bit:
// the same numbers as calling the backend directly (float32, the training path).
TEST(GradGrad, PlainBackwardStillRunsTheFusedKernels) {
  Generator gen(16);
  Tensor x = Tensor::randn({2, 3, 9, 9}, gen).set_requires_grad();
  Tensor w = Tensor::randn({4, 3, 3, 3}, gen).set_requires_grad();
  Tensor b = Tensor::randn({4}, gen).set_requires_grad();
  const Conv2dParams p = conv_params(2, 1, 1, 1);
  Tensor y = conv2d(x, w, b, p);
  Tensor dy = Tensor::randn(y.shape(), gen);
  y.backward(dy);
  Tensor dx = Tensor::empty(x.shape()), dw = Tensor::empty(w.shape()), db = Tensor::empty(b.shape());
  backend_for(kCPU).conv2d_backward(x.detach(), w.detach(), dy, dx, dw, db, p);
  auto bitwise = [](const Tensor& a, const Tensor& c) {
    return a.numel() == c.numel() && std::memcmp(a.contiguous().data<float>(), c.contiguous().data<float>(),
                                                 sizeof(float) * static_cast<size_t>(a.numel())) == 0;
  };
  EXPECT_TRUE(bitwise(x.grad(), dx));
  EXPECT_TRUE(bitwise(w.grad(), dw));
  EXPECT_TRUE(bitwise(b.grad(), db));
  EXPECT_FALSE(x.grad().requires_grad());

  // conv_transpose2d: dx = conv2d_forward(dy, w), dw = conv2d_backward_weights(dy, x).
  Tensor xt = Tensor::randn({2, 4, 5, 5}, gen).set_requires_grad();
  Tensor wt = Tensor::randn({4, 3, 4, 4}, gen).set_requires_grad();
  Tensor yt = conv_transpose2d(xt, wt, Tensor(), [] {
    ConvTranspose2dParams t;
    t.stride_h = t.stride_w = 2, t.pad_h = t.pad_w = 1;
    return t;
  }());
  Tensor dyt = Tensor::randn(yt.shape(), gen);
  yt.backward(dyt);
  Tensor dxt = Tensor::empty(xt.shape()), dwt = Tensor::empty(wt.shape());
  backend_for(kCPU).conv2d_forward(dyt, wt.detach(), Tensor(), dxt, p);
  backend_for(kCPU).conv2d_backward_weights(dyt, xt.detach(), dwt, Tensor(), p);
  EXPECT_TRUE(bitwise(xt.grad(), dxt));
  EXPECT_TRUE(bitwise(wt.grad(), dwt));

  // max pooling: the backend's pool2d_backward.
  Tensor xp = Tensor::randn({2, 3, 6, 6}, gen).set_requires_grad();
  Pool2dParams pp;
  pp.kernel_h = pp.kernel_w = 3, pp.stride_h = pp.stride_w = 2, pp.pad_h = pp.pad_w = 1;
  Tensor yp = max_pool2d(xp, pp);
  Tensor dyp = Tensor::randn(yp.shape(), gen);
  yp.backward(dyp);
  Tensor dxp = Tensor::empty(xp.shape());
  backend_for(kCPU).pool2d_backward(PoolKind::max, xp.detach(), yp.detach(), dyp, dxp, pp);
  EXPECT_TRUE(bitwise(xp.grad(), dxp));

  // With create_graph the gradient is a graph (the recorded path ran).
  Tensor x2 = x.detach().set_requires_grad();
  Tensor g = grad({sum(mul(conv2d(x2, w, Tensor(), p), dy))}, {x2}, {}, false, true)[0];
  EXPECT_TRUE(g.requires_grad());
}

TEST(GradGrad, Conv2dWeightBadInputIsNamed) {
  Tensor x = Tensor::ones({1, 2, 5, 5}), dy = Tensor::ones({1, 3, 3, 3});
  std::string m = error_of([&] { conv2d_weight(x, dy, {3, 2, 3}); });
  EXPECT_TRUE(contains(m, "conv2d_weight") && contains(m, "[3, 2, 3]")) << m;
  m = error_of([&] { conv2d_weight(x, Tensor::ones({1, 3, 2, 3}), {3, 2, 3, 3}); });
  EXPECT_TRUE(contains(m, "conv2d_weight") && contains(m, "[1, 3, 2, 3]") && contains(m, "[1, 3, 3, 3]")) << m;
  m = error_of([&] { conv2d_weight(x, dy, {3, 1, 3, 3}); });
  EXPECT_TRUE(contains(m, "conv2d_weight") && contains(m, "channels")) << m;
  m = error_of([&] { conv2d_weight(x, dy.to(DType::f64), {3, 2, 3, 3}); });
  EXPECT_TRUE(contains(m, "conv2d_weight") && contains(m, "dtype")) << m;
  EXPECT_EQ(error_of([&] { conv2d_weight(x, dy, {3, 2, 3, 3}); }), "");
}

}  // namespace
}  // namespace hpdl
