// CPU mixed precision (design decision 69): under AutocastScope(DType::bf16)
// conv2d, conv_transpose2d, linear and matmul on float32 CPU tensors compute
// with bfloat16 operands and float32 accumulation, forward and gradients.
//
// Each case checks the op and all its gradients three ways:
//  - against a float64 reference on the operands rounded to bfloat16 (tight:
//    products of two bfloat16 values are exact in float32, so only the float32
//    accumulation order differs);
//  - against plain float32 (loose: bfloat16 keeps 8 significant bits, relative
//    error up to 2^-8 per operand; stated tolerance 3% of the largest value);
//  - and that it does differ from plain float32 by more than float32 rounding
//    (fails if bfloat16 were silently not applied, in forward or backward).
// The upstream gradient is itself a bfloat16 value, so the reference's inputs are exact.
// The rounded reference stands in for a finite-difference gradcheck: rounding
// is piecewise constant, so finite differences of the bf16 op say nothing,
// while the rounded reference checks the gradients exactly up to accumulation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "hpdl/autograd/engine.h"
#include "hpdl/backend/compute_scope.h"
#include "hpdl/backend/cpu/onednn.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

#define SKIP_WITHOUT_BF16()                                                                          \
  if (!cpu::onednn_bf16_supported()) GTEST_SKIP() << "no AVX512_BF16/AMX on this CPU (oneDNN ISA " \
                                                  << cpu::onednn_isa() << ")"

Tensor round_bf16(const Tensor& t) { return t.to(DType::bf16).to(DType::f32); }

// Random float32 values in [-1, 1], already bfloat16-exact when `exact`.
Tensor rand_t(const Shape& s, uint64_t seed, bool exact = false) {
  Generator g(seed);
  Tensor t = Tensor::rand(s, g, -1, 1, DType::f32);
  return exact ? round_bf16(t) : t;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

double max_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// The op's output and the gradients of <g, out> with respect to its inputs.
struct Run {
  Tensor out;
  std::vector<Tensor> grads;
};

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

Run run(const Fn& f, const std::vector<Tensor>& inputs, const Tensor& g, bool bf16) {
  std::vector<Tensor> in;
  for (const Tensor& t : inputs) in.push_back(t.detach().clone().set_requires_grad());
  Tensor out, loss;
  {
    AutocastScope ac(DType::bf16, bf16);
    out = f(in);
    loss = sum(mul(out, g.to(out.dtype())));
  }
  loss.backward();  // outside the scope, as in training: the closures must remember bf16
  Run r{out.detach(), {}};
  for (const Tensor& t : in) r.grads.push_back(t.grad());
  return r;
}

// The three checks of the file comment for op f on `inputs` (float32). The last input is a bias
// when `bias`: added in float32, never rounded, and its gradient (a sum of the upstream gradient)
// has no product to round, so it is only compared, not required to differ from float32.
void check_op(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs, bool bias = false) {
  const Run probe = run(f, inputs, Tensor::ones({1}), false);
  const Tensor g = rand_t(probe.out.shape(), 99, /*exact=*/true);
  const Run b = run(f, inputs, g, true), p = run(f, inputs, g, false);
  // float64 on the rounded operands (the upstream gradient is already exact)
  std::vector<Tensor> rounded;
  for (size_t i = 0; i < inputs.size(); ++i)
    rounded.push_back((bias && i + 1 == inputs.size() ? inputs[i] : round_bf16(inputs[i])).to(DType::f64));
  const Run r = run(f, rounded, g.to(DType::f64), false);
  ASSERT_EQ(b.grads.size(), r.grads.size());
  struct Cmp {
    std::string name;
    Tensor got, ref, fp32;
    bool rounded;
  };
  std::vector<Cmp> cmp{{"output", b.out, r.out, p.out, true}};
  for (size_t i = 0; i < b.grads.size(); ++i)
    cmp.push_back({fmt::format("gradient of input {}", i), b.grads[i], r.grads[i], p.grads[i],
                   !(bias && i + 1 == b.grads.size())});
  for (const auto& [name, got, ref, fp32, rounded_op] : cmp) {
    ASSERT_TRUE(got.defined() && ref.defined()) << what << " " << name;
    EXPECT_TRUE(got.dtype() == DType::f32) << what << " " << name << " must stay float32";
    const double scale = std::max(max_abs(ref), 1e-3);
    // tight: float32 accumulation of exact products (relative 2e-5 of the largest value)
    EXPECT_LE(max_diff(got, ref), 2e-5 * scale) << what << " " << name << " vs the bf16-rounded float64 reference";
    // loose: plain float32 within 3% of the largest value
    EXPECT_LE(max_diff(got, fp32), 3e-2 * scale) << what << " " << name << " vs plain float32";
    // bfloat16 applied: far more than float32 rounding away from plain float32
    if (rounded_op) {
      EXPECT_GT(max_diff(got, fp32), 1e-4 * scale) << what << " " << name << " equals plain float32: bf16 not applied";
    }
  }
}

TEST(CpuBf16, Conv2dForwardAndGradients) {
  SKIP_WITHOUT_BF16();
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  check_op("conv2d 3x3", [&](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); },
           {rand_t({4, 8, 10, 10}, 1), rand_t({24, 8, 3, 3}, 2), rand_t({24}, 3)}, /*bias=*/true);
  Conv2dParams s;
  s.stride_h = s.stride_w = 2;
  s.groups = 2;
  check_op("conv2d grouped, stride 2",
           [&](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), s); },
           {rand_t({2, 8, 9, 9}, 4), rand_t({32, 4, 3, 3}, 5)});
}

TEST(CpuBf16, ConvTranspose2dForwardAndGradients) {
  SKIP_WITHOUT_BF16();
  ConvTranspose2dParams p;
  p.stride_h = p.stride_w = 2;
  p.pad_h = p.pad_w = 1;
  p.output_pad_h = p.output_pad_w = 1;
  check_op("conv_transpose2d", [&](const std::vector<Tensor>& in) { return conv_transpose2d(in[0], in[1], Tensor(), p); },
           {rand_t({2, 24, 5, 5}, 6), rand_t({24, 8, 3, 3}, 7)});
}

TEST(CpuBf16, LinearForwardAndGradients) {
  SKIP_WITHOUT_BF16();
  check_op("linear", [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); },
           {rand_t({16, 40}, 8), rand_t({24, 40}, 9), rand_t({24}, 10)}, /*bias=*/true);
}

TEST(CpuBf16, MatmulForwardAndGradients) {
  SKIP_WITHOUT_BF16();
  check_op("matmul batched", [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); },
           {rand_t({3, 8, 20}, 11), rand_t({3, 20, 12}, 12)});
  // a transposed operand: the kernel reads it with swapped strides
  check_op("matmul a^T", [](const std::vector<Tensor>& in) { return matmul(in[0].t(), in[1]); },
           {rand_t({30, 10}, 13), rand_t({30, 14}, 14)});
}

// LSTM and GRU (design decision 71): under bf16 their gate GEMMs (input projection, recurrent
// part, and the GEMMs of both gradients) read bfloat16 operands; gate nonlinearities, states and
// biases stay float32. One step from a given state (T = 1): the output is the float64 network on
// the rounded x, h0 and weights up to float32 accumulation and float32 gate math (tight, 2e-4 of
// the largest value; bfloat16 moves it by ~1e-2). Several steps, and every gradient: the hidden
// state and the gate gradients are rounded again at each step, so there only loose against
// float32 (3%) and not equal to it (more than 1e-4; biases' gradients only compared).
TEST(CpuBf16, LstmAndGruGateGemms) {
  SKIP_WITHOUT_BF16();
  for (bool is_lstm : {true, false}) {
    const int64_t N = 4, I = 24, H = 16, G = is_lstm ? 4 : 3;
    const size_t w0 = is_lstm ? 3 : 2;
    auto f = [&](const std::vector<Tensor>& in) {
      std::vector<Tensor> w(in.begin() + static_cast<std::ptrdiff_t>(w0), in.end());
      return is_lstm ? lstm(in[0], w, in[1], in[2]).output : gru(in[0], w, in[1]).output;
    };
    for (int64_t T : {1, 6}) {
      const std::string what = fmt::format("{} T={}", is_lstm ? "lstm" : "gru", T);
      // h0 bfloat16-exact: GRU's h1 = (1 - z) n + z h0 also reads h0 outside the GEMM, unrounded.
      std::vector<Tensor> in;
      in.reserve(7);
      in.push_back(rand_t({T, N, I}, 20));
      in.push_back(rand_t({1, N, H}, 21, /*exact=*/true));
      if (is_lstm) in.push_back(rand_t({1, N, H}, 22));
      for (const Shape& s : {Shape{G * H, I}, Shape{G * H, H}, Shape{G * H}, Shape{G * H}})
        in.push_back(rand_t(s, 23 + in.size()));
      const Tensor g = rand_t({T, N, H}, 30, /*exact=*/true);
      const hpdl::Run b = run(f, in, g, true), p = run(f, in, g, false);
      const double scale = std::max(max_abs(p.out), 1e-3);
      EXPECT_TRUE(b.out.dtype() == DType::f32) << what;
      EXPECT_LE(max_diff(b.out, p.out), 3e-2 * scale) << what << " output vs plain float32";
      EXPECT_GT(max_diff(b.out, p.out), 1e-4 * scale) << what << " output equals plain float32: bf16 not applied";
      ASSERT_EQ(b.grads.size(), in.size());
      for (size_t i = 0; i < in.size(); ++i) {
        ASSERT_TRUE(b.grads[i].defined() && p.grads[i].defined()) << what << " gradient " << i;
        const double gs = std::max(max_abs(p.grads[i]), 1e-3);
        EXPECT_LE(max_diff(b.grads[i], p.grads[i]), 3e-2 * gs) << what << " gradient of input " << i << " vs float32";
        const bool bias = i >= w0 + 2, c0 = is_lstm && i == 2;
        if (!bias && !c0) {
          EXPECT_GT(max_diff(b.grads[i], p.grads[i]), 1e-4 * gs)
              << what << " gradient of input " << i << " equals plain float32: bf16 not applied";
        }
      }
      if (T == 1) {  // x and the two weight matrices rounded (h0 is exact); c0 and the biases are not GEMM operands
        std::vector<Tensor> rounded;
        for (size_t i = 0; i < in.size(); ++i) {
          const bool exact = i == 0 || i == 1 || i == w0 || i == w0 + 1;
          rounded.push_back((exact ? round_bf16(in[i]) : in[i]).to(DType::f64));
        }
        const hpdl::Run r = run(f, rounded, g.to(DType::f64), false);
        EXPECT_LE(max_diff(b.out, r.out), 2e-4 * scale) << what << " output vs the bf16-rounded float64 reference";
      }
    }
  }
}

// A gradient penalty (WGAN-GP style) through the recorded, create_graph backward of conv2d,
// relu and linear (whose closures re-enter the bf16 autocast scope): it runs, and the penalty's
// gradients stay within the loose tolerance of float32 while not equal to it.
TEST(CpuBf16, SecondDerivativesThroughTheRecordedBackward) {
  SKIP_WITHOUT_BF16();
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  auto penalty_grads = [&](bool bf16) {
    Tensor x = rand_t({2, 8, 6, 6}, 21).set_requires_grad();
    Tensor w = rand_t({16, 8, 3, 3}, 22).set_requires_grad(), v = rand_t({5, 16 * 36}, 23).set_requires_grad();
    Tensor out;
    {
      AutocastScope ac(DType::bf16, bf16);
      out = linear(relu(conv2d(x, w, Tensor(), p)).reshape({2, 16 * 36}), v, Tensor());
    }
    Tensor gx = grad({sum(out)}, {x}, {}, true, /*create_graph=*/true)[0];
    sum(square(gx)).backward();
    return std::vector<Tensor>{w.grad(), v.grad()};
  };
  auto b = penalty_grads(true), f = penalty_grads(false);
  for (size_t i = 0; i < b.size(); ++i) {
    ASSERT_TRUE(b[i].defined() && f[i].defined());
    const double scale = std::max(max_abs(f[i]), 1e-3);
    EXPECT_LE(max_diff(b[i], f[i]), 3e-2 * scale) << "penalty gradient " << i << " vs plain float32";
    EXPECT_GT(max_diff(b[i], f[i]), 1e-4 * scale) << "penalty gradient " << i << " equals float32: bf16 not applied";
  }
}

// The primitives oneDNN picks are its bfloat16 kernels, not float32 ones.
TEST(CpuBf16, OneDnnRunsBfloat16Kernels) {
  SKIP_WITHOUT_BF16();
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  std::string conv32 = cpu::onednn_conv_impl({8, 16, 14, 14}, {32, 16, 3, 3}, p);
  std::string mm32 = cpu::onednn_matmul_impl(64, 48, 96);
  CpuComputeScope bf16(DType::bf16);
  std::string conv = cpu::onednn_conv_impl({8, 16, 14, 14}, {32, 16, 3, 3}, p);
  std::string mm = cpu::onednn_matmul_impl(64, 48, 96);
  EXPECT_TRUE(test::contains(conv, "bf16")) << "convolution runs " << conv << " (float32: " << conv32 << ")";
  EXPECT_TRUE(test::contains(mm, "bf16")) << "matmul runs " << mm << " (float32: " << mm32 << ")";
}

// float64 is never rounded, and scopes restore what they replaced.
TEST(CpuBf16, Float64StaysExactAndScopesRestore) {
  SKIP_WITHOUT_BF16();
  Tensor x = rand_t({2, 4, 6, 6}, 15).to(DType::f64), w = rand_t({5, 4, 3, 3}, 16).to(DType::f64);
  Tensor a = conv2d(x, w, Tensor(), Conv2dParams());
  Tensor b;
  {
    AutocastScope ac(DType::bf16);
    b = conv2d(x, w, Tensor(), Conv2dParams());
  }
  EXPECT_EQ(max_diff(a, b), 0.0);
  EXPECT_TRUE(cpu_compute_dtype() == DType::f32);
  {
    CpuComputeScope on(DType::bf16);
    EXPECT_TRUE(cpu_compute_dtype() == DType::bf16);
    {
      CpuComputeScope off(DType::f32);
      EXPECT_TRUE(cpu_compute_dtype() == DType::f32);
    }
    EXPECT_TRUE(cpu_compute_dtype() == DType::bf16);
  }
  EXPECT_TRUE(cpu_compute_dtype() == DType::f32);
  EXPECT_THROW(CpuComputeScope(DType::f16), Error);
}

// On a CPU without bfloat16 kernels the ops refuse, naming the ISA; with them the check agrees with the ISA.
TEST(CpuBf16, SupportFollowsTheIsa) {
  const std::string isa = cpu::onednn_isa();
  EXPECT_EQ(cpu::onednn_bf16_supported(), isa == "avx512_core_bf16" || isa == "avx512_core_amx") << isa;
  if (cpu::onednn_bf16_supported()) return;
  AutocastScope ac(DType::bf16);
  const std::string err = test::error_of([] { linear(Tensor::ones({4, 8}), Tensor::ones({3, 8}), Tensor()); });
  EXPECT_TRUE(test::contains(err, "AVX512_BF16") && test::contains(err, isa)) << err;
}

}  // namespace
}  // namespace hpdl
