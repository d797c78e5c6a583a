// The op harness: one table of cases, one runner (after ggml's
// test-backend-ops). Every case gives input shapes and a function of the
// inputs; the runner
//   (a) checks backward against central finite differences in float64
//       (hpdl::gradcheck), and
//   (b) when the case lists `fast` shapes, runs it in float32 on the fast CPU
//       backend (oneDNN) and on the reference kernels, and compares the
//       outputs and the input gradients.
// To add an op: add its cases to `cases()` in the same change. Non-float
// arguments (targets, indices, running statistics, generators) are built inside
// the case function so every evaluation sees the same ones. Kinks: inputs are
// drawn from [low, high]; `away_from` pushes them at least 0.1 from a kink.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"
#include "hpdl/core/threading.h"
#include "hpdl/ops/ops.h"

namespace hpdl {
namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct OpCase {
  std::string name;
  std::vector<Shape> shapes;  // gradcheck inputs (float64, all require grad)
  Fn f;
  double low = -1, high = 1;
  std::optional<double> away_from{};  // kink to keep inputs 0.1 away from
  double eps = 1e-6, atol = 1e-6, rtol = 1e-4;
  std::vector<Shape> fast{};  // float32 shapes for the fast-vs-reference check (empty: skip)
  double fast_tol = 2e-5;   // relative to the largest magnitude of the compared tensor
};

std::vector<Tensor> make_inputs(const OpCase& c, const std::vector<Shape>& shapes, DType dtype, uint64_t seed) {
  Generator gen(seed);
  std::vector<Tensor> in;
  for (const Shape& s : shapes) {
    Tensor t = Tensor::rand(s, gen, c.low, c.high, DType::f64);
    if (c.away_from) {
      double* p = t.data<double>();
      for (int64_t i = 0; i < t.numel(); ++i) {
        double d = p[i] - *c.away_from;
        if (std::abs(d) < 0.1) p[i] = *c.away_from + (d < 0 ? -0.1 : 0.1) + d;
      }
    }
    in.push_back(t.to(dtype).set_requires_grad());
  }
  return in;
}

Tensor i64(const std::vector<int64_t>& v) { return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}); }

// Class targets for logits [N, C]: a fixed scatter over the classes.
Tensor targets_for(const Tensor& logits) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < logits.dim(0); ++i) t.push_back((i * 7 + 3) % logits.dim(1));
  return i64(t);
}

// Running statistics for x [N, C, ...]: mean 0.2, variance 1.5.
std::pair<Tensor, Tensor> running_stats(const Tensor& x) {
  return {Tensor::full({x.dim(1)}, 0.2, x.dtype()), Tensor::full({x.dim(1)}, 1.5, x.dtype())};
}

Conv2dParams conv(int64_t stride, int64_t pad, int64_t dil = 1, int64_t groups = 1) {
  Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.dilation_h = p.dilation_w = dil;
  p.groups = groups;
  return p;
}

ConvTranspose2dParams convt(int64_t stride, int64_t pad, int64_t out_pad, int64_t dil = 1, int64_t groups = 1) {
  ConvTranspose2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.output_pad_h = p.output_pad_w = out_pad;
  p.dilation_h = p.dilation_w = dil;
  p.groups = groups;
  return p;
}

Pool2dParams pool(int64_t k, int64_t s, int64_t pad = 0, bool include_pad = false) {
  Pool2dParams p;
  p.kernel_h = p.kernel_w = k;
  p.stride_h = p.stride_w = s;
  p.pad_h = p.pad_w = pad;
  p.count_include_pad = include_pad;
  return p;
}

std::vector<OpCase> cases() {
  std::vector<OpCase> v;
  auto add = [&](OpCase c) { v.push_back(std::move(c)); };
  using T = const std::vector<Tensor>&;
  const Shape big = {64, 128};  // 8192 elements: large enough for the oneDNN eltwise path

  // ---- elementwise, with broadcasting ----
  add({"add_broadcast", {{2, 3}, {3}}, [](T x) { return hpdl::add(x[0], x[1]); }});
  add({"sub_broadcast", {{2, 3}, {2, 1}}, [](T x) { return sub(x[0], x[1]); }});
  add({"mul_broadcast", {{2, 1, 3}, {4, 1}}, [](T x) { return mul(x[0], x[1]); }});
  add({"div_broadcast", {{2, 3}, {3}}, [](T x) { return div(x[0], x[1]); }, 0.5, 2});
  add({"pow_tensor", {{2, 3}, {3}}, [](T x) { return pow(x[0], x[1]); }, 0.5, 2});
  add({"pow_scalar", {{2, 3}}, [](T x) { return pow(x[0], 3.0); }});
  add({"maximum", {{2, 3}, {2, 3}}, [](T x) { return maximum(x[0], x[1]); }});
  add({"minimum", {{2, 3}, {3}}, [](T x) { return minimum(x[0], x[1]); }});
  add({"add_scalar", {{5}}, [](T x) { return hpdl::add(x[0], 2.5); }, -1, 1, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"mul_scalar", {{5}}, [](T x) { return mul(x[0], -1.5); }, -1, 1, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"neg", {{5}}, [](T x) { return neg(x[0]); }, -1, 1, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"exp", {{2, 3}}, [](T x) { return exp(x[0]); }, -1, 1, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"log", {{2, 3}}, [](T x) { return log(x[0]); }, 0.5, 2, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"sqrt", {{2, 3}}, [](T x) { return sqrt(x[0]); }, 0.5, 2, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"rsqrt", {{2, 3}}, [](T x) { return rsqrt(x[0]); }, 0.5, 2});
  add({"tanh", {{2, 3}}, [](T x) { return tanh(x[0]); }, -2, 2, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"sigmoid", {{2, 3}}, [](T x) { return sigmoid(x[0]); }, -3, 3, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"relu", {{2, 3}}, [](T x) { return relu(x[0]); }, -1, 1, 0.0, 1e-6, 1e-6, 1e-4, {big}});
  // The second operand is scaled so that the sums stay >= 0.09 away from the kink.
  add({"add_relu", {{2, 3}, {2, 3}}, [](T x) { return add_relu(x[0], mul(x[1], 0.01)); }, -1, 1, 0.0});
  add({"add_relu_broadcast", {{2, 3}, {3}}, [](T x) { return add_relu(x[0], mul(x[1], 0.01)); }, -1, 1, 0.0});
  add({"leaky_relu", {{2, 3}}, [](T x) { return leaky_relu(x[0], 0.1); }, -1, 1, 0.0, 1e-6, 1e-6, 1e-4, {big}});
  add({"gelu", {{2, 3}}, [](T x) { return gelu(x[0]); }, -3, 3, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"erf", {{2, 3}}, [](T x) { return erf(x[0]); }, -2, 2});
  add({"abs", {{2, 3}}, [](T x) { return abs(x[0]); }, -1, 1, 0.0, 1e-6, 1e-6, 1e-4, {big}});
  add({"square", {{2, 3}}, [](T x) { return square(x[0]); }, -1, 1, {}, 1e-6, 1e-6, 1e-4, {big}});
  add({"sin", {{2, 3}}, [](T x) { return sin(x[0]); }});
  add({"cos", {{2, 3}}, [](T x) { return cos(x[0]); }});
  add({"reciprocal", {{2, 3}}, [](T x) { return reciprocal(x[0]); }, 0.5, 2});

  // ---- reductions ----
  add({"sum_axes", {{2, 3, 4}}, [](T x) { return sum(x[0], {0, 2}); }});
  add({"mean_keepdim", {{2, 3, 4}}, [](T x) { return mean(x[0], {1}, true); }});
  add({"max_axis", {{3, 5}}, [](T x) { return max(x[0], {1}); }});
  add({"min_all", {{3, 5}}, [](T x) { return min(x[0]); }});
  add({"sum_square", {{3, 4}}, [](T x) { return sum_square(x[0]); }});

  // ---- matrix products ----
  add({"matmul", {{3, 4}, {4, 5}}, [](T x) { return matmul(x[0], x[1]); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{64, 96}, {96, 80}}});
  add({"matmul_transposed", {{4, 3}, {5, 4}}, [](T x) { return matmul(x[0].t(), x[1].t()); }, -1, 1, {}, 1e-6, 1e-6,
       1e-4, {{96, 64}, {80, 96}}});
  add({"matmul_batched", {{2, 3, 4}, {2, 4, 2}}, [](T x) { return matmul(x[0], x[1]); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{4, 32, 48}, {4, 48, 16}}});
  add({"matmul_broadcast", {{3, 4}, {2, 4, 2}}, [](T x) { return matmul(x[0], x[1]); }});
  add({"bmm", {{2, 2, 3}, {2, 3, 2}}, [](T x) { return bmm(x[0], x[1]); }});
  add({"linear", {{3, 4}, {5, 4}, {5}}, [](T x) { return linear(x[0], x[1], x[2]); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{128, 256}, {64, 256}, {64}}});
  add({"linear_3d", {{2, 3, 4}, {2, 4}}, [](T x) { return linear(x[0], x[1]); }});

  // ---- views and joins ----
  add({"reshape", {{2, 6}}, [](T x) { return mul(x[0].reshape({3, -1}), x[0].reshape({3, 4})); }});
  add({"permute", {{2, 3, 4}}, [](T x) { return mul(x[0].permute({2, 0, 1}), 2.0).contiguous(); }});
  add({"transpose", {{3, 4}}, [](T x) { return x[0].transpose(0, 1).contiguous(); }});
  add({"slice", {{5, 4}}, [](T x) { return square(x[0].slice(0, 1, 4)); }});
  add({"slice_step", {{6, 3}}, [](T x) { return square(x[0].slice(0, 0, 6, 2)); }});
  add({"select", {{3, 4}}, [](T x) { return square(x[0].select(1, 2)); }});
  add({"expand", {{3, 1}}, [](T x) { return mul(x[0].expand({3, 4}), x[0].expand({3, 4})); }});
  add({"unsqueeze_squeeze", {{3}}, [](T x) { return square(x[0].unsqueeze(0).squeeze(0)); }});
  add({"cat", {{2, 3}, {2, 2}}, [](T x) { return square(cat({x[0], x[1]}, 1)); }});
  add({"stack", {{2, 3}, {2, 3}}, [](T x) { return square(stack({x[0], x[1]}, 1)); }});
  add({"split", {{5, 2}}, [](T x) {
         auto parts = split(x[0], {2, 3}, 0);
         return hpdl::add(sum(square(parts[0])), sum(exp(parts[1])));
       }});

  // ---- convolution ----
  add({"conv2d_pad1", {{2, 3, 5, 5}, {4, 3, 3, 3}, {4}}, [](T x) { return conv2d(x[0], x[1], x[2], conv(1, 1)); }, -1,
       1, {}, 1e-6, 1e-6, 1e-4, {{4, 8, 12, 12}, {16, 8, 3, 3}, {16}}});
  add({"conv2d_stride2", {{1, 2, 7, 6}, {3, 2, 3, 3}}, [](T x) { return conv2d(x[0], x[1], {}, conv(2, 1)); }, -1, 1,
       {}, 1e-6, 1e-6, 1e-4, {{3, 16, 15, 15}, {32, 16, 3, 3}}});
  add({"conv2d_dilation", {{1, 2, 7, 7}, {2, 2, 3, 3}, {2}}, [](T x) { return conv2d(x[0], x[1], x[2], conv(1, 2, 2)); },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{2, 8, 14, 14}, {8, 8, 3, 3}, {8}}});
  add({"conv2d_groups", {{1, 4, 5, 5}, {6, 2, 3, 3}, {6}}, [](T x) { return conv2d(x[0], x[1], x[2], conv(1, 1, 1, 2)); },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{2, 16, 10, 10}, {32, 8, 3, 3}, {32}}});
  add({"conv2d_5x5_lenet", {{2, 1, 8, 8}, {3, 1, 5, 5}, {3}}, [](T x) { return conv2d(x[0], x[1], x[2], conv(1, 2)); },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{8, 1, 28, 28}, {6, 1, 5, 5}, {6}}});
  add({"conv2d_1x1", {{2, 3, 3, 3}, {2, 3, 1, 1}}, [](T x) { return conv2d(x[0], x[1]); }});
  // Every window in the padding (1-pixel input, stride 8, padding 2): the output is the bias alone.
  // conv2d's crop of unread rows once recursed without end here (a stack overflow).
  add({"conv2d_windows_in_padding", {{2, 2, 1, 1}, {3, 2, 1, 1}, {3}},
       [](T x) { return conv2d(x[0], x[1], x[2], conv(8, 2)); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{4, 8, 1, 1}, {16, 8, 1, 1}, {16}}});
  // Windows past the first in the padding too (rows -2 and 6 of a 3-row input, row 2 read).
  add({"conv2d_some_windows_in_padding", {{1, 2, 3, 3}, {2, 2, 1, 1}, {2}},
       [](T x) { return conv2d(x[0], x[1], x[2], conv(4, 2)); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{2, 8, 3, 3}, {8, 8, 1, 1}, {8}}});
  // Transposed convolution: the DCGAN up-sampling (k4 s2 p1), output padding, dilation with groups.
  add({"conv_transpose2d_k4s2p1", {{2, 3, 3, 4}, {3, 2, 4, 4}, {2}},
       [](T x) { return conv_transpose2d(x[0], x[1], x[2], convt(2, 1, 0)); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{4, 16, 7, 7}, {16, 8, 4, 4}, {8}}});
  add({"conv_transpose2d_output_padding", {{1, 2, 3, 2}, {2, 3, 3, 2}},
       [](T x) { return conv_transpose2d(x[0], x[1], {}, convt(2, 1, 1)); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{2, 4, 5, 6}, {4, 3, 3, 3}}});
  add({"conv_transpose2d_dilation_groups", {{1, 4, 3, 3}, {4, 1, 2, 3}, {2}},
       [](T x) { return conv_transpose2d(x[0], x[1], x[2], convt(1, 1, 0, 2, 2)); }});

  // ---- pooling ----
  add({"max_pool_2x2", {{2, 2, 4, 4}}, [](T x) { return max_pool2d(x[0], pool(2, 2)); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{4, 8, 16, 16}}});
  add({"max_pool_3x3_s2_p1", {{1, 2, 5, 5}}, [](T x) { return max_pool2d(x[0], pool(3, 2, 1)); }, -1, 1, {}, 1e-6,
       1e-6, 1e-4, {{4, 8, 15, 15}}});
  add({"avg_pool_2x2", {{2, 2, 4, 4}}, [](T x) { return avg_pool2d(x[0], pool(2, 2)); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{4, 8, 16, 16}}});
  add({"avg_pool_3x3_p1_exclude", {{1, 2, 5, 5}}, [](T x) { return avg_pool2d(x[0], pool(3, 1, 1)); }, -1, 1, {},
       1e-6, 1e-6, 1e-4, {{4, 8, 15, 15}}});
  add({"avg_pool_3x3_p1_include", {{1, 2, 5, 5}}, [](T x) { return avg_pool2d(x[0], pool(3, 2, 1, true)); }, -1, 1,
       {}, 1e-6, 1e-6, 1e-4, {{4, 8, 15, 15}}});
  add({"adaptive_avg_pool_divisible", {{2, 2, 4, 6}}, [](T x) { return adaptive_avg_pool2d(x[0], 2, 3); }, -1, 1, {},
       1e-6, 1e-6, 1e-4, {{4, 8, 8, 8}}});
  add({"adaptive_avg_pool_uneven", {{1, 2, 5, 7}}, [](T x) { return adaptive_avg_pool2d(x[0], 3, 2); }});

  // ---- normalization ----
  add({"batch_norm_train_4d", {{3, 2, 3, 3}, {2}, {2}},
       [](T x) {
         auto [rm, rv] = running_stats(x[0]);
         return batch_norm(x[0], x[1], x[2], rm, rv, true);
       },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{8, 16, 10, 10}, {16}, {16}}, 1e-4});
  add({"batch_norm_train_2d", {{5, 3}, {3}, {3}},
       [](T x) { return batch_norm(x[0], x[1], x[2], Tensor(), Tensor(), true); }, -1, 1, {}, 1e-6, 1e-6, 1e-4,
       {{64, 32}, {32}, {32}}, 1e-4});
  add({"batch_norm_relu_train", {{3, 2, 3, 3}, {2}, {2}},
       [](T x) {
         auto [rm, rv] = running_stats(x[0]);
         return batch_norm_relu(x[0], x[1], x[2], rm, rv, true);
       },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{8, 16, 10, 10}, {16}, {16}}, 1e-4});
  add({"batch_norm_add_relu_train", {{3, 2, 3, 3}, {3, 2, 3, 3}, {2}, {2}},
       [](T x) {
         auto [rm, rv] = running_stats(x[0]);
         return batch_norm_add_relu(x[0], x[1], x[2], x[3], rm, rv, true);
       },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{8, 16, 10, 10}, {8, 16, 10, 10}, {16}, {16}}, 1e-4});
  add({"batch_norm_add_relu_eval", {{2, 3, 2, 2}, {2, 3, 2, 2}, {3}, {3}},
       [](T x) {
         auto [rm, rv] = running_stats(x[0]);
         return batch_norm_add_relu(x[0], x[1], x[2], x[3], rm, rv, false);
       },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{8, 16, 6, 6}, {8, 16, 6, 6}, {16}, {16}}});
  add({"batch_norm_eval", {{2, 3, 2, 2}, {3}, {3}},
       [](T x) {
         auto [rm, rv] = running_stats(x[0]);
         return batch_norm(x[0], x[1], x[2], rm, rv, false);
       },
       -1, 1, {}, 1e-6, 1e-6, 1e-4, {{8, 16, 6, 6}, {16}, {16}}});
  add({"layer_norm_2d", {{4, 5}, {5}, {5}}, [](T x) { return layer_norm(x[0], x[1], x[2]); }, -1, 1, {}, 1e-6, 1e-6,
       1e-4, {{64, 100}, {100}, {100}}, 1e-4});
  add({"layer_norm_3d", {{2, 3, 4}, {4}, {4}}, [](T x) { return layer_norm(x[0], x[1], x[2]); }});

  // ---- softmax family and dropout ----
  add({"softmax_last", {{3, 5}}, [](T x) { return softmax(x[0]); }, -2, 2, {}, 1e-6, 1e-6, 1e-4, {{64, 100}}});
  add({"softmax_axis1_3d", {{2, 4, 3}}, [](T x) { return softmax(x[0], 1); }, -2, 2, {}, 1e-6, 1e-6, 1e-4,
       {{8, 10, 12}}});
  add({"log_softmax", {{3, 5}}, [](T x) { return log_softmax(x[0]); }, -2, 2, {}, 1e-6, 1e-6, 1e-4, {{64, 100}}});
  add({"dropout_fixed_mask", {{4, 5}},
       [](T x) {
         Generator gen(42);  // the same mask on every evaluation
         return dropout(x[0], 0.4, true, gen);
       }});

  // ---- losses and embedding ----
  add({"cross_entropy", {{4, 5}}, [](T x) { return cross_entropy(x[0], i64({0, 4, 2, 2})); }, -2, 2, {}, 1e-6, 1e-6,
       1e-4});
  add({"cross_entropy_smooth", {{4, 5}},
       [](T x) { return cross_entropy(x[0], targets_for(x[0]), 0.1, Reduction::sum); }, -2, 2, {}, 1e-6, 1e-6, 1e-4,
       {{128, 10}}});
  add({"nll_loss", {{3, 4}}, [](T x) { return nll_loss(x[0], i64({3, 0, 1}), Reduction::none); }});
  add({"mse_loss", {{3, 4}, {3, 4}}, [](T x) { return mse_loss(x[0], x[1]); }});
  add({"mse_loss_sum", {{5, 2}, {5, 2}}, [](T x) { return mse_loss(x[0], x[1], Reduction::sum); }});
  // l1: |r| has its kink at r = 0, so one side is a fixed zero target and the input keeps away from 0.
  add({"l1_loss_input", {{3, 4}}, [](T x) { return l1_loss(x[0], Tensor::zeros(x[0].shape(), x[0].dtype())); },
       -1, 1, 0.0});
  add({"l1_loss_target", {{3, 4}}, [](T x) {
         return l1_loss(Tensor::zeros(x[0].shape(), x[0].dtype()), x[0], Reduction::none);
       }, -1, 1, 0.0});
  // huber: residuals in [-2, 2] with delta 0.5 fall on both pieces.
  add({"huber_loss", {{4, 3}, {4, 3}}, [](T x) { return huber_loss(x[0], x[1], 0.5); }});
  add({"huber_loss_none", {{6}, {6}}, [](T x) { return huber_loss(x[0], x[1], 1.5, Reduction::none); }, -2, 2});
  add({"bce_with_logits", {{3, 4}, {3, 4}}, [](T x) { return bce_with_logits(x[0], x[1]); }, -3, 3});
  add({"embedding", {{6, 3}}, [](T x) { return embedding(x[0], Tensor::from_vector<int64_t>({1, 5, 1, 0}, {2, 2})); }});
  add({"index_select_axis1", {{3, 4}}, [](T x) { return square(index_select(x[0], 1, i64({3, 0, 3}))); }});
  return v;
}

void PrintTo(const OpCase& c, std::ostream* os) { *os << c.name; }

class OpTest : public ::testing::TestWithParam<OpCase> {};

TEST_P(OpTest, BackwardMatchesFiniteDifferences) {
  const OpCase& c = GetParam();
  auto in = make_inputs(c, c.shapes, DType::f64, 17);
  GradcheckResult r = gradcheck(c.f, in, c.eps, c.atol, c.rtol);
  EXPECT_TRUE(r.ok) << c.name << ": " << r.message;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Max |a - b| relative to max(|b|, 1e-3); names what differs.
void expect_close(const Tensor& a, const Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double scale = std::max(max_abs(vb), 1e-3), worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < va.size(); ++i)
    if (std::abs(va[i] - vb[i]) > worst) worst = std::abs(va[i] - vb[i]), at = i;
  EXPECT_LE(worst / scale, tol) << what << ": element " << at << " fast " << va[at] << " vs reference " << vb[at];
}

TEST_P(OpTest, FastBackendMatchesReference) {
  const OpCase& c = GetParam();
  if (c.fast.empty()) return;  // no fast path for this op
  auto run = [&](bool reference, std::vector<Tensor>& grads) {
    std::optional<ScopedCpuBackend> guard;
    if (reference) guard.emplace(reference_backend());
    auto in = make_inputs(c, c.fast, DType::f32, 23);
    Tensor out = c.f(in);
    Generator gen(5);
    Tensor w = Tensor::rand(out.shape(), gen, -1, 1, DType::f32);
    grads = grad({sum(mul(out, w))}, in);
    return out;
  };
  std::vector<Tensor> gf, gr;
  Tensor yf = run(false, gf), yr = run(true, gr);
  expect_close(yf, yr, c.fast_tol, c.name + " forward");
  for (size_t i = 0; i < gf.size(); ++i)
    expect_close(gf[i], gr[i], c.fast_tol, c.name + " gradient of input " + std::to_string(i));
}

INSTANTIATE_TEST_SUITE_P(Ops, OpTest, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<OpCase>& info) { return info.param.name; });

// ---- behaviour beyond gradients ----

TEST(Ops, BatchNormUpdatesRunningStatisticsWithUnbiasedVariance) {
  Tensor x = Tensor::from_vector<double>({1, 10, 2, 20, 3, 30, 4, 40}, {4, 2});  // [N=4, C=2]
  Tensor rm = Tensor::zeros({2}, DType::f64), rv = Tensor::ones({2}, DType::f64);
  batch_norm(x, Tensor(), Tensor(), rm, rv, true, 0.1);
  // channel 0: mean 2.5, unbiased var 5/3; channel 1: mean 25, unbiased var 500/3
  auto m = rm.to_vector<double>(), v = rv.to_vector<double>();
  EXPECT_NEAR(m[0], 0.25, 1e-9);
  EXPECT_NEAR(m[1], 2.5, 1e-9);
  EXPECT_NEAR(v[0], 0.9 + 0.1 * 5.0 / 3.0, 1e-6);
  EXPECT_NEAR(v[1], 0.9 + 0.1 * 500.0 / 3.0, 1e-4);
  EXPECT_FALSE(rm.requires_grad());
}

// The fused op is relu(batch_norm(...)) bitwise on the CPU, values and gradients (the default
// Backend methods compose the same kernels), in training and eval mode.
TEST(Ops, BatchNormReluEqualsReluOfBatchNorm) {
  for (bool training : {true, false}) {
    Generator gen(5);
    Tensor x = Tensor::randn({4, 3, 5, 5}, gen), gm = Tensor::rand({3}, gen, 0.5, 1.5), bt = Tensor::randn({3}, gen);
    Tensor dy = Tensor::randn({4, 3, 5, 5}, gen);
    std::vector<std::vector<double>> out[2];
    for (int fused = 0; fused < 2; ++fused) {
      Tensor xv = x.clone().set_requires_grad(), g = gm.clone().set_requires_grad(), b = bt.clone().set_requires_grad();
      Tensor rm = Tensor::zeros({3}), rv = Tensor::ones({3});
      Tensor y = fused ? batch_norm_relu(xv, g, b, rm, rv, training) : relu(batch_norm(xv, g, b, rm, rv, training));
      sum(mul(y, dy)).backward();
      out[fused] = {y.to_vector<double>(), xv.grad().to_vector<double>(), g.grad().to_vector<double>(),
                    b.grad().to_vector<double>(), rm.to_vector<double>(), rv.to_vector<double>()};
    }
    for (size_t k = 0; k < out[0].size(); ++k) EXPECT_EQ(out[0][k], out[1][k]) << "output " << k << " training " << training;
  }
}

// The residual blocks' last batch norm: batch_norm_add_relu is add_relu(batch_norm(...), residual)
// bitwise on the CPU, values, running statistics and the gradients of all four inputs, with planes
// large enough for the hand-written loops (8x8) and too small for them (2x2, oneDNN and the default).
TEST(Ops, BatchNormAddReluEqualsAddReluOfBatchNorm) {
  for (int64_t hw : {8, 2})
    for (bool training : {true, false}) {
      Generator gen(7);
      const Shape xs{4, 3, hw, hw};
      Tensor x = Tensor::randn(xs, gen), r = Tensor::randn(xs, gen), dy = Tensor::randn(xs, gen);
      Tensor gm = Tensor::rand({3}, gen, 0.5, 1.5), bt = Tensor::randn({3}, gen);
      std::vector<std::vector<double>> out[2];
      for (int fused = 0; fused < 2; ++fused) {
        Tensor xv = x.clone().set_requires_grad(), rv_ = r.clone().set_requires_grad();
        Tensor g = gm.clone().set_requires_grad(), b = bt.clone().set_requires_grad();
        Tensor rm = Tensor::zeros({3}), rv = Tensor::ones({3});
        Tensor y = fused ? batch_norm_add_relu(xv, rv_, g, b, rm, rv, training)
                         : add_relu(batch_norm(xv, g, b, rm, rv, training), rv_);
        sum(mul(y, dy)).backward();
        out[fused] = {y.to_vector<double>(),         xv.grad().to_vector<double>(), rv_.grad().to_vector<double>(),
                      g.grad().to_vector<double>(),  b.grad().to_vector<double>(),  rm.to_vector<double>(),
                      rv.to_vector<double>()};
      }
      for (size_t k = 0; k < out[0].size(); ++k)
        EXPECT_EQ(out[0][k], out[1][k]) << "output " << k << " training " << training << " hw " << hw;
      EXPECT_GT(std::count(out[1][0].begin(), out[1][0].end(), 0.0), 0) << "some sums must be clipped";
    }
}

// add_relu is relu(add(...)) bitwise, values and gradients of both operands (the residual blocks use it).
TEST(Ops, AddReluEqualsReluOfAdd) {
  Generator gen(6);
  Tensor a = Tensor::randn({4, 3, 5, 5}, gen), b = Tensor::randn({4, 3, 5, 5}, gen), dy = Tensor::randn({4, 3, 5, 5}, gen);
  std::vector<std::vector<double>> out[2];
  for (int fused = 0; fused < 2; ++fused) {
    Tensor av = a.clone().set_requires_grad(), bv = b.clone().set_requires_grad();
    Tensor y = fused ? add_relu(av, bv) : relu(hpdl::add(av, bv));
    sum(mul(y, dy)).backward();
    out[fused] = {y.to_vector<double>(), av.grad().to_vector<double>(), bv.grad().to_vector<double>()};
  }
  for (size_t k = 0; k < out[0].size(); ++k) EXPECT_EQ(out[0][k], out[1][k]) << "output " << k;
  EXPECT_GT(std::count(out[1][0].begin(), out[1][0].end(), 0.0), 0) << "some sums must be clipped";
}

TEST(Ops, CrossEntropyMatchesHandComputedValue) {
  Tensor logits = Tensor::from_vector<double>({1, 2, 3, 0, 0, 0}, {2, 3});
  Tensor t = i64({2, 0});
  double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), lse1 = std::log(3.0);
  double nll = ((lse0 - 3) + lse1) / 2;
  EXPECT_NEAR(cross_entropy(logits, t).item(), nll, 1e-12);
  double smooth = ((lse0 - 2) + lse1) / 2;  // mean over classes of -logp
  EXPECT_NEAR(cross_entropy(logits, t, 0.2).item(), 0.8 * nll + 0.2 * smooth, 1e-12);
}

// The regression losses against plain loops over the same residuals (the reference).
TEST(Ops, RegressionLossesMatchHandComputedValues) {
  const std::vector<double> in{0.5, -2.0, 1.25, 3.0, -0.1, 0.0}, tg{0.0, 1.0, 1.0, -1.0, 0.3, 0.0};
  Tensor x = Tensor::from_vector(in, {3, 2}), t = Tensor::from_vector(tg, {3, 2});
  const double delta = 0.75;
  double se = 0, ae = 0, hu = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const double r = in[i] - tg[i], a = std::abs(r);
    se += r * r, ae += a, hu += a <= delta ? 0.5 * r * r : delta * (a - 0.5 * delta);
  }
  EXPECT_NEAR(mse_loss(x, t).item(), se / 6, 1e-12);
  EXPECT_NEAR(mse_loss(x, t, Reduction::sum).item(), se, 1e-12);
  EXPECT_NEAR(l1_loss(x, t).item(), ae / 6, 1e-12);
  EXPECT_NEAR(l1_loss(x, t, Reduction::sum).item(), ae, 1e-12);
  EXPECT_NEAR(huber_loss(x, t, delta).item(), hu / 6, 1e-12);
  EXPECT_NEAR(huber_loss(x, t, delta, Reduction::sum).item(), hu, 1e-12);
  auto none = huber_loss(x, t, delta, Reduction::none).to_vector<double>();
  ASSERT_EQ(none.size(), 6u);
  EXPECT_NEAR(none[1], delta * (3.0 - 0.5 * delta), 1e-12);  // |r| = 3 > delta: the linear piece
  EXPECT_NEAR(none[0], 0.5 * 0.25, 1e-12);                   // |r| = 0.5 < delta: the quadratic piece
  // Huber with a large delta is half the squared error; l1 of float32 equals float64's.
  EXPECT_NEAR(huber_loss(x, t, 100.0, Reduction::sum).item(), 0.5 * se, 1e-12);
  EXPECT_NEAR(l1_loss(x.to(DType::f32), t.to(DType::f32)).item(), ae / 6, 1e-6);
}

// At |r| = delta the two pieces meet with the same slope: the gradient is +-delta
// there and matches central differences.
TEST(Ops, HuberGradientAtDeltaMatchesFiniteDifferences) {
  const double delta = 0.5;
  Tensor x = Tensor::from_vector<double>({0.5, -0.5, 1.2, 0.5, -1.5}, {5}).set_requires_grad();
  Tensor t = Tensor::from_vector<double>({0.0, 0.0, 0.7, 1.0, -1.0}, {5});  // r = .5, -.5, .5, -.5, -.5
  Tensor l = huber_loss(x, t, delta, Reduction::sum);
  auto g = grad({l}, {x})[0].to_vector<double>();
  const std::vector<double> expect{0.5, -0.5, 0.5, -0.5, -0.5};
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], expect[i], 1e-12) << "element " << i;
  GradcheckResult r = gradcheck([&](const std::vector<Tensor>& in) { return huber_loss(in[0], in[1], delta); },
                                {x.detach().clone().set_requires_grad(), t.clone().set_requires_grad()});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(Ops, Conv2dWindowsAllInPaddingGiveTheBias) {
  // x [2, 2, 1, 1], 1x1 kernel, stride 8, padding 2: one output pixel per filter, centred on row -2.
  Generator gen(3);
  Tensor x = Tensor::randn({2, 2, 1, 1}, gen).set_requires_grad();
  Tensor w = Tensor::randn({3, 2, 1, 1}, gen).set_requires_grad();
  Tensor b = Tensor::from_vector<float>({0.5f, -1.0f, 2.0f}, {3}).set_requires_grad();
  Tensor y = conv2d(x, w, b, conv(8, 2));
  ASSERT_EQ(y.shape(), (Shape{2, 3, 1, 1}));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{0.5f, -1.0f, 2.0f, 0.5f, -1.0f, 2.0f}));
  auto g = grad({sum(y)}, {x, w, b});
  EXPECT_EQ(g[0].to_vector<float>(), std::vector<float>(4, 0.0f));
  EXPECT_EQ(g[1].to_vector<float>(), std::vector<float>(6, 0.0f));
  EXPECT_EQ(g[2].to_vector<float>(), std::vector<float>(3, 2.0f));  // N * P * Q = 2
}

TEST(Ops, DropoutKeepsExpectationAndIsIdentityInEval) {
  Generator gen(3);
  Tensor x = Tensor::ones({100000});
  Tensor y = dropout(x, 0.25, true, gen);
  EXPECT_NEAR(mean(y).item(), 1.0, 0.02);
  auto v = y.to_vector<float>();
  for (float e : v) EXPECT_TRUE(e == 0.f || std::abs(e - 1.f / 0.75f) < 1e-6);
  EXPECT_TRUE(dropout(x, 0.25, false, gen).is_same(x));
}

TEST(Ops, SoftmaxSecondDerivativeMatchesFiniteDifferences) {
  Generator gen(9);
  Tensor x = Tensor::rand({2, 4}, gen, -1, 1, DType::f64).set_requires_grad();
  Fn f = [](const std::vector<Tensor>& in) {
    EnableGradGuard record_even_inside_gradcheck(true);
    Tensor y = log_softmax(in[0]);
    Tensor g = grad({sum(mul(y, y))}, {in[0]}, {}, true, true)[0];
    return g;
  };
  GradcheckResult r = gradcheck(f, {x});
  EXPECT_TRUE(r.ok) << r.message;
}

// conv2d, pooling and the norms have recorded backwards now (test_gradgrad.cpp,
// test_norm_gradgrad.cpp); the recurrent kernels (lstm, gru) are still first-order only.
TEST(Ops, FusedBackwardRefusesCreateGraphAndSaysWhy) {
  Generator gen(4);
  const int64_t I = 2, H = 3;
  Tensor x = Tensor::rand({2, 1, I}, gen, -1, 1, DType::f64).set_requires_grad();  // [T, N, I]
  std::vector<Tensor> w{Tensor::rand({3 * H, I}, gen, -0.5, 0.5, DType::f64),
                        Tensor::rand({3 * H, H}, gen, -0.5, 0.5, DType::f64), Tensor::zeros({3 * H}, DType::f64),
                        Tensor::zeros({3 * H}, DType::f64)};
  Tensor y = sum(square(gru(x, w).output));
  try {
    grad({y}, {x}, {}, false, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gru"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("first-order"), std::string::npos) << e.what();
  }
}

// ---- errors name the op, the shapes, the dtype, the device ----

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Inference without a graph takes the fused output pass (batchnorm_forward_infer_relu); it must
// equal the composition, which the eval tests above differentiate through.
TEST(Ops, EvalBatchNormReluWithoutGradEqualsComposition) {
  for (int64_t hw : {8, 2}) {
    Generator gen(8);
    const Shape xs{4, 3, hw, hw};
    Tensor x = Tensor::randn(xs, gen), r = Tensor::randn(xs, gen);
    Tensor g = Tensor::rand({3}, gen, 0.5, 1.5), b = Tensor::randn({3}, gen);
    Tensor rm = Tensor::randn({3}, gen), rv = Tensor::rand({3}, gen, 0.5, 2.0);
    NoGradGuard ng;
    Tensor bn = batch_norm(x, g, b, rm, rv, false);
    EXPECT_EQ(batch_norm_relu(x, g, b, rm, rv, false).to_vector<double>(), relu(bn).to_vector<double>()) << hw;
    Tensor fused = batch_norm_add_relu(x, r, g, b, rm, rv, false);
    EXPECT_EQ(fused.to_vector<double>(), add_relu(bn, r).to_vector<double>()) << hw;
    auto v = fused.to_vector<double>();
    EXPECT_GT(std::count(v.begin(), v.end(), 0.0), 0) << "some sums must be clipped";
  }
}

TEST(OpErrors, BatchNormAddReluNamesAMismatchedResidual) {
  Tensor x = Tensor::zeros({2, 3, 4, 4}), g = Tensor::ones({3}), b = Tensor::zeros({3});
  EXPECT_NE(error_of([&] { batch_norm_add_relu(x, Tensor::zeros({2, 3, 4, 5}), g, b, Tensor(), Tensor(), true); })
                .find("batch_norm_add_relu: residual has shape [2, 3, 4, 5], the input [2, 3, 4, 4]"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              batch_norm_add_relu(x, Tensor::zeros({2, 3, 4, 4}, DType::f64), g, b, Tensor(), Tensor(), true);
            }).find("batch_norm_add_relu: dtype mismatch"),
            std::string::npos);
  EXPECT_NE(error_of([&] { batch_norm_add_relu(x, Tensor(), g, b, Tensor(), Tensor(), true); })
                .find("residual is an undefined tensor"),
            std::string::npos);
}

TEST(OpErrors, ShapeMismatchNamesOpAndBothShapes) {
  Tensor a = Tensor::ones({2, 3}), b = Tensor::ones({4});
  std::string m = error_of([&] { hpdl::add(a, b); });
  EXPECT_NE(m.find("add"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  EXPECT_NE(m.find("[4]"), std::string::npos) << m;

  m = error_of([&] { matmul(Tensor::ones({2, 3}), Tensor::ones({4, 5})); });
  EXPECT_NE(m.find("matmul"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 5]"), std::string::npos) << m;

  m = error_of([&] { conv2d(Tensor::ones({1, 3, 8, 8}), Tensor::ones({4, 2, 3, 3})); });
  EXPECT_NE(m.find("conv2d"), std::string::npos) << m;
  EXPECT_NE(m.find("[1, 3, 8, 8]"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 2, 3, 3]"), std::string::npos) << m;
  // An input smaller than the kernel with a stride: (2 - 3) / 2 + 1 truncated to 1 output row
  // (a window reading only padding); rounded down it is 0 and the input is refused.
  m = error_of([&] { conv2d(Tensor::ones({1, 1, 2, 2}), Tensor::ones({1, 1, 3, 3}), {}, conv(2, 0)); });
  EXPECT_NE(m.find("smaller than the dilated kernel"), std::string::npos) << m;
  EXPECT_EQ(Conv2dParams::out_size(2, 3, 2, 0, 1), 0);
  EXPECT_EQ(Conv2dParams::out_size(1, 3, 3, 0, 2), -1);  // span -4: floor(-4 / 3) = -2
  EXPECT_EQ(Conv2dParams::out_size(9, 3, 2, 1, 1), 5);

  m = error_of([&] { cross_entropy(Tensor::ones({4, 10}), i64({1, 2, 3})); });
  EXPECT_NE(m.find("cross_entropy"), std::string::npos) << m;
  EXPECT_NE(m.find("[3]"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 10]"), std::string::npos) << m;

  m = error_of([&] { mse_loss(Tensor::ones({2, 2}), Tensor::ones({2, 3})); });
  EXPECT_NE(m.find("mse_loss"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 2]"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
}

TEST(OpErrors, RegressionLossesNameTheOpAndTheProblem) {
  std::string m = error_of([] { l1_loss(Tensor::ones({2, 2}), Tensor::ones({2, 3})); });
  EXPECT_NE(m.find("l1_loss"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  m = error_of([] { huber_loss(Tensor::ones({2}), Tensor::ones({2}), 0.0); });
  EXPECT_NE(m.find("huber_loss: delta"), std::string::npos) << m;
  m = error_of([] { huber_loss(Tensor::ones({2}), Tensor::ones({2}, DType::i64)); });
  EXPECT_NE(m.find("huber_loss"), std::string::npos) << m;
}

TEST(OpErrors, UnsupportedDtypeIsNamed) {
  Tensor x = Tensor::from_vector<int64_t>({1, 2, 3}, {3});
  std::string m = error_of([&] { relu(x); });
  EXPECT_NE(m.find("relu"), std::string::npos) << m;
  EXPECT_NE(m.find("int64"), std::string::npos) << m;
  m = error_of([&] { softmax(Tensor::ones({2, 2}).to(DType::bf16)); });
  EXPECT_NE(m.find("softmax"), std::string::npos) << m;
  EXPECT_NE(m.find("bfloat16"), std::string::npos) << m;
  m = error_of([&] { cross_entropy(Tensor::ones({2, 3}), Tensor::ones({2})); });
  EXPECT_NE(m.find("int64"), std::string::npos) << m;
  EXPECT_NE(m.find("float32"), std::string::npos) << m;
}

TEST(OpErrors, CudaTensorWithoutCudaNamesTheDevice) {
  Device cuda{DeviceType::cuda, 0};
  std::string m = error_of([&] { Tensor::zeros({2}, DType::f32, cuda); });
  if (m.empty()) GTEST_SKIP() << "a CUDA device is available here";
  EXPECT_NE(m.find("cuda:0"), std::string::npos) << m;
  EXPECT_NE(m.find("CUDA"), std::string::npos) << m;
}

// ---- counter-based random numbers do not depend on the thread count ----

TEST(Random, FillsAreIdenticalForOneAndTwoThreads) {
  const int saved = num_threads();
  auto fill = [](int threads) {
    set_num_threads(threads);
    Generator gen(2024);
    Tensor u = Tensor::rand({300000}, gen);  // several parallel chunks
    Tensor n = Tensor::randn({300000}, gen, 0, 1, DType::f64);
    Tensor d = dropout(Tensor::ones({200000}), 0.5, true, gen);
    return std::make_tuple(u.to_vector<float>(), n.to_vector<double>(), d.to_vector<float>());
  };
  auto one = fill(1), two = fill(2);
  set_num_threads(saved);
  EXPECT_TRUE(std::get<0>(one) == std::get<0>(two));
  EXPECT_TRUE(std::get<1>(one) == std::get<1>(two));
  EXPECT_TRUE(std::get<2>(one) == std::get<2>(two));
}

}  // namespace
}  // namespace hpdl
