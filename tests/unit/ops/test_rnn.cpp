// lstm / gru ops: (a) forward and every gradient against an independent
// composition of small differentiable ops (linear, sigmoid, tanh, ...) that
// spells out the equations at RnnParams, so a wrong gate order or formula
// fails; (b) backward against central finite differences in float64 for every
// input (x, h0, c0, each weight and bias); (c) the fast CPU path (GEMMs) against
// the reference loops in float32 over several shapes; (d) errors that name
// what is wrong. To add a shape: add a Config to the lists below.
#include <gtest/gtest.h>

#include <functional>
#include <optional>
#include <string>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

struct Config {
  std::string name;
  bool lstm = true;
  int64_t T = 3, N = 2, I = 3, H = 2, L = 1;
  bool bidir = false, batch_first = false;
  int64_t G() const { return lstm ? 4 : 3; }
  int64_t D() const { return bidir ? 2 : 1; }
};

void PrintTo(const Config& c, std::ostream* os) { *os << c.name; }

// x, h0, (c0), then the weights, in the op's order; float `dtype`, uniform in [-0.8, 0.8].
std::vector<Tensor> make_inputs(const Config& c, DType dtype, uint64_t seed) {
  Generator gen(seed);
  auto r = [&](const Shape& s) { return Tensor::rand(s, gen, -0.8, 0.8, DType::f64).to(dtype).set_requires_grad(); };
  std::vector<Tensor> in;
  in.push_back(r(c.batch_first ? Shape{c.N, c.T, c.I} : Shape{c.T, c.N, c.I}));
  in.push_back(r({c.L * c.D(), c.N, c.H}));
  if (c.lstm) in.push_back(r({c.L * c.D(), c.N, c.H}));
  for (int64_t l = 0; l < c.L; ++l)
    for (int64_t d = 0; d < c.D(); ++d) {
      const int64_t in_l = l == 0 ? c.I : c.H * c.D();
      in.push_back(r({c.G() * c.H, in_l}));
      in.push_back(r({c.G() * c.H, c.H}));
      in.push_back(r({c.G() * c.H}));
      in.push_back(r({c.G() * c.H}));
    }
  return in;
}

RnnResult run_op(const Config& c, const std::vector<Tensor>& in) {
  const size_t w0 = c.lstm ? 3 : 2;
  std::vector<Tensor> w(in.begin() + static_cast<std::ptrdiff_t>(w0), in.end());
  RnnOptions o{c.L, c.bidir, c.batch_first};
  return c.lstm ? lstm(in[0], w, in[1], in[2], o) : gru(in[0], w, in[1], o);
}

// The same network from elementwise ops and linear layers, one step at a time.
RnnResult run_composed(const Config& c, const std::vector<Tensor>& in) {
  const size_t w0 = c.lstm ? 3 : 2;
  Tensor x = c.batch_first ? in[0].transpose(0, 1) : in[0];  // [T, N, I]
  std::vector<Tensor> hn, cn;
  for (int64_t l = 0; l < c.L; ++l) {
    std::vector<Tensor> outs_dir;  // per direction: [T, N, H]
    for (int64_t d = 0; d < c.D(); ++d) {
      const int64_t cell = l * c.D() + d;
      const Tensor& w_ih = in[w0 + 4 * cell];
      const Tensor& w_hh = in[w0 + 4 * cell + 1];
      const Tensor& b_ih = in[w0 + 4 * cell + 2];
      const Tensor& b_hh = in[w0 + 4 * cell + 3];
      Tensor h = in[1].select(0, cell), cs = c.lstm ? in[2].select(0, cell) : Tensor();
      std::vector<Tensor> hs(c.T);
      for (int64_t s = 0; s < c.T; ++s) {
        const int64_t t = d == 0 ? s : c.T - 1 - s;
        auto gx = chunk(linear(x.select(0, t), w_ih, b_ih), c.G(), 1);  // each [N, H]
        auto gh = chunk(linear(h, w_hh, b_hh), c.G(), 1);
        if (c.lstm) {
          Tensor i = sigmoid(add(gx[0], gh[0])), f = sigmoid(add(gx[1], gh[1]));
          Tensor g = tanh(add(gx[2], gh[2])), o = sigmoid(add(gx[3], gh[3]));
          cs = add(mul(f, cs), mul(i, g));
          h = mul(o, tanh(cs));
        } else {
          Tensor r = sigmoid(add(gx[0], gh[0])), z = sigmoid(add(gx[1], gh[1]));
          Tensor n = tanh(add(gx[2], mul(r, gh[2])));
          h = add(mul(add(neg(z), 1.0), n), mul(z, h));
        }
        hs[t] = h;
      }
      outs_dir.push_back(stack(hs, 0));
      hn.push_back(h);
      if (c.lstm) cn.push_back(cs);
    }
    x = c.D() == 1 ? outs_dir[0] : cat(outs_dir, 2);
  }
  return {c.batch_first ? x.transpose(0, 1) : x, stack(hn, 0), c.lstm ? stack(cn, 0) : Tensor()};
}

// All outputs as one flat tensor (gradcheck and comparisons take one).
Tensor flat(const RnnResult& r) {
  std::vector<Tensor> parts{r.output.reshape({-1}), r.h_n.reshape({-1})};
  if (r.c_n.defined()) parts.push_back(r.c_n.reshape({-1}));
  return cat(parts, 0);
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// max |a - b| <= tol * max(|b|, 1e-3); the message names the tensor and the worst element.
void expect_close(const Tensor& a, const Tensor& b, double tol, const std::string& what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what << ": undefined";
  ASSERT_EQ(a.shape(), b.shape()) << what;
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double scale = std::max(max_abs(vb), 1e-3), worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < va.size(); ++i)
    if (!(std::abs(va[i] - vb[i]) <= worst)) worst = std::abs(va[i] - vb[i]), at = i;
  EXPECT_LE(worst / scale, tol) << what << ": element " << at << " got " << va[at] << " vs expected " << vb[at];
}

std::string input_name(const Config& c, size_t i) { return test::rnn_input_name(c.lstm, c.D(), i); }

// Forward outputs and gradients of sum(out * w) for a fixed random w.
struct Outcome {
  RnnResult out;
  std::vector<Tensor> grads;
};
Outcome forward_backward(const Config& c, const std::vector<Tensor>& in, bool composed) {
  Outcome r;
  r.out = composed ? run_composed(c, in) : run_op(c, in);
  Tensor y = flat(r.out);
  Generator gen(77);
  Tensor w = Tensor::rand(y.shape(), gen, -1, 1, DType::f64).to(y.dtype());
  r.grads = grad({sum(mul(y, w))}, in);
  return r;
}

std::vector<Config> small_configs() {
  return {
      {"lstm_1layer", true, 3, 2, 3, 2, 1},
      {"lstm_T1_N1", true, 1, 1, 2, 3, 1},
      {"lstm_2layer_bidir", true, 3, 2, 3, 2, 2, true},
      {"lstm_batch_first", true, 4, 2, 2, 3, 1, false, true},
      {"gru_1layer", false, 3, 2, 3, 2, 1},
      {"gru_T1_N1", false, 1, 1, 2, 3, 1},
      {"gru_2layer_bidir", false, 3, 2, 3, 2, 2, true},
      {"gru_3layer_batch_first", false, 2, 3, 2, 2, 3, false, true},
  };
}

class RnnSmall : public ::testing::TestWithParam<Config> {};

TEST_P(RnnSmall, MatchesComposedEquationsForwardAndBackward) {
  const Config& c = GetParam();
  auto in = make_inputs(c, DType::f64, 11);
  Outcome op = forward_backward(c, in, false), ref = forward_backward(c, in, true);
  expect_close(op.out.output, ref.out.output, 1e-12, c.name + " output");
  expect_close(op.out.h_n, ref.out.h_n, 1e-12, c.name + " h_n");
  if (c.lstm) expect_close(op.out.c_n, ref.out.c_n, 1e-12, c.name + " c_n");
  ASSERT_EQ(op.grads.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i)
    expect_close(op.grads[i], ref.grads[i], 1e-11, c.name + " gradient of " + input_name(c, i));
}

TEST_P(RnnSmall, BackwardMatchesFiniteDifferences) {
  const Config& c = GetParam();
  auto in = make_inputs(c, DType::f64, 13);
  auto f = [&c](const std::vector<Tensor>& x) { return flat(run_op(c, x)); };
  GradcheckResult r = gradcheck(f, in, 1e-6, 1e-7, 1e-5);
  EXPECT_TRUE(r.ok) << c.name << ": " << r.message;
}

// Only h_n used: the output and c_n receive no gradient (the op must treat them as zeros).
TEST_P(RnnSmall, GradcheckThroughFinalStateOnly) {
  const Config& c = GetParam();
  auto in = make_inputs(c, DType::f64, 19);
  auto f = [&c](const std::vector<Tensor>& x) { return run_op(c, x).h_n; };
  GradcheckResult r = gradcheck(f, in, 1e-6, 1e-7, 1e-5);
  EXPECT_TRUE(r.ok) << c.name << ": " << r.message;
}

INSTANTIATE_TEST_SUITE_P(Rnn, RnnSmall, ::testing::ValuesIn(small_configs()),
                         [](const ::testing::TestParamInfo<Config>& info) { return info.param.name; });

// ---- fast CPU path (GEMMs through oneDNN) against the reference loops, float32 ----

std::vector<Config> fast_configs() {
  return {
      {"lstm_T1", true, 1, 4, 5, 8, 1},
      {"lstm_N1", true, 6, 1, 5, 8, 1},
      {"lstm_3layer", true, 7, 4, 5, 16, 3},
      {"lstm_bidir_2layer", true, 5, 3, 6, 12, 2, true},
      {"lstm_bidir_T1_N1", true, 1, 1, 3, 4, 1, true},
      {"lstm_wide", true, 10, 16, 32, 64, 1},
      {"gru_T1", false, 1, 4, 5, 8, 1},
      {"gru_N1", false, 6, 1, 5, 8, 1},
      {"gru_3layer", false, 7, 4, 5, 16, 3},
      {"gru_bidir_2layer", false, 5, 3, 6, 12, 2, true},
      {"gru_wide_batch_first", false, 10, 16, 32, 64, 1, false, true},
  };
}

class RnnFast : public ::testing::TestWithParam<Config> {};

TEST_P(RnnFast, FastBackendMatchesReference) {
  const Config& c = GetParam();
  auto run = [&](bool reference) {
    std::optional<ScopedCpuBackend> guard;
    if (reference) guard.emplace(reference_backend());
    return forward_backward(c, make_inputs(c, DType::f32, 29), false);
  };
  Outcome fast = run(false), ref = run(true);
  const double tol = 2e-5;
  expect_close(fast.out.output, ref.out.output, tol, c.name + " output");
  expect_close(fast.out.h_n, ref.out.h_n, tol, c.name + " h_n");
  if (c.lstm) expect_close(fast.out.c_n, ref.out.c_n, tol, c.name + " c_n");
  for (size_t i = 0; i < fast.grads.size(); ++i)
    expect_close(fast.grads[i], ref.grads[i], 1e-4, c.name + " gradient of " + input_name(c, i));
}

INSTANTIATE_TEST_SUITE_P(Rnn, RnnFast, ::testing::ValuesIn(fast_configs()),
                         [](const ::testing::TestParamInfo<Config>& info) { return info.param.name; });

// ---- behaviour ----

// One LSTM step with N = I = H = 1 worked by hand: the gate order is i, f, g, o.
TEST(Rnn, LstmSingleStepMatchesHandComputedGates) {
  // w_ih rows i, f, g, o = 0.5, -0.5, 1.0, 2.0; w_hh = 0.1 each; b_ih = 0.1 each, b_hh = 0.
  Tensor x = Tensor::from_vector<double>({0.3}, {1, 1, 1});
  Tensor h0 = Tensor::from_vector<double>({0.2}, {1, 1, 1}), c0 = Tensor::from_vector<double>({-0.4}, {1, 1, 1});
  std::vector<Tensor> w{Tensor::from_vector<double>({0.5, -0.5, 1.0, 2.0}, {4, 1}),
                        Tensor::from_vector<double>({0.1, 0.1, 0.1, 0.1}, {4, 1}),
                        Tensor::from_vector<double>({0.1, 0.1, 0.1, 0.1}, {4}), Tensor::zeros({4}, DType::f64)};
  auto pre = [](double wx) { return wx * 0.3 + 0.1 * 0.2 + 0.1; };
  auto sg = [](double v) { return 1 / (1 + std::exp(-v)); };
  const double i = sg(pre(0.5)), f = sg(pre(-0.5)), g = std::tanh(pre(1.0)), o = sg(pre(2.0));
  const double c1 = f * -0.4 + i * g, h1 = o * std::tanh(c1);
  RnnResult r = lstm(x, w, h0, c0);
  EXPECT_NEAR(r.output.item(), h1, 1e-14);
  EXPECT_NEAR(r.h_n.item(), h1, 1e-14);
  EXPECT_NEAR(r.c_n.item(), c1, 1e-14);
}

// One GRU step worked by hand: the gate order is r, z, n, and r multiplies (W_hn h + b_hn).
TEST(Rnn, GruSingleStepMatchesHandComputedGates) {
  Tensor x = Tensor::from_vector<double>({0.3}, {1, 1, 1});
  Tensor h0 = Tensor::from_vector<double>({0.2}, {1, 1, 1});
  std::vector<Tensor> w{Tensor::from_vector<double>({0.5, -0.5, 1.0}, {3, 1}),
                        Tensor::from_vector<double>({0.1, 0.2, 0.3}, {3, 1}),
                        Tensor::from_vector<double>({0.1, 0.1, 0.1}, {3}),
                        Tensor::from_vector<double>({0.0, 0.0, 0.7}, {3})};
  auto sg = [](double v) { return 1 / (1 + std::exp(-v)); };
  const double r = sg(0.5 * 0.3 + 0.1 + 0.1 * 0.2), z = sg(-0.5 * 0.3 + 0.1 + 0.2 * 0.2);
  const double n = std::tanh(1.0 * 0.3 + 0.1 + r * (0.3 * 0.2 + 0.7));
  const double h1 = (1 - z) * n + z * 0.2;
  RnnResult res = gru(x, w, h0);
  EXPECT_NEAR(res.h_n.item(), h1, 1e-14);
  EXPECT_FALSE(res.c_n.defined());
}

TEST(Rnn, ReverseDirectionOfOneStepSequenceEqualsForward) {
  // With T = 1 both directions see the same single step; equal weights give equal halves.
  Generator gen(3);
  Tensor x = Tensor::randn({1, 2, 3}, gen, 0, 1, DType::f64);
  std::vector<Tensor> wf{Tensor::randn({8, 3}, gen, 0, 0.5, DType::f64), Tensor::randn({8, 2}, gen, 0, 0.5, DType::f64),
                         Tensor::randn({8}, gen, 0, 0.5, DType::f64), Tensor::randn({8}, gen, 0, 0.5, DType::f64)};
  std::vector<Tensor> w = wf;
  w.insert(w.end(), wf.begin(), wf.end());
  RnnResult r = lstm(x, w, Tensor(), Tensor(), {1, true});
  ASSERT_EQ(r.output.shape(), (Shape{1, 2, 4}));
  EXPECT_EQ(r.output.slice(2, 0, 2).contiguous().to_vector<double>(),
            r.output.slice(2, 2, 4).contiguous().to_vector<double>());
}

TEST(Rnn, BackwardIsFirstOrderOnlyAndSaysSo) {
  Config c{"lstm", true, 2, 1, 2, 2, 1};
  auto in = make_inputs(c, DType::f64, 5);
  Tensor y = sum(run_op(c, in).output);
  try {
    grad({y}, {in[0]}, {}, false, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lstm"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("first-order"), std::string::npos) << e.what();
  }
}

// bfloat16 activations (what autocast produces) run in float32: the same as widening first,
// and the gradient reaches the bfloat16 input.
TEST(Rnn, BFloat16InputRunsInFloat32) {
  Config c{"gru", false, 4, 3, 5, 6, 2, true};
  auto in = make_inputs(c, DType::f32, 3);
  std::vector<Tensor> w(in.begin() + 2, in.end());
  Tensor xb = in[0].detach().to(DType::bf16).set_requires_grad();
  RnnResult r = gru(xb, w, Tensor(), {2, true});
  EXPECT_EQ(r.output.dtype(), DType::f32);
  RnnResult ref = gru(xb.detach().to(DType::f32), w, Tensor(), {2, true});
  EXPECT_EQ(r.output.to_vector<float>(), ref.output.to_vector<float>());
  sum(r.output).backward();
  ASSERT_TRUE(xb.grad().defined());
  EXPECT_EQ(xb.grad().dtype(), DType::bf16);
}

// ---- errors name what is wrong ----

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_mentions(const std::string& m, std::initializer_list<const char*> words) {
  EXPECT_FALSE(m.empty()) << "no error thrown";
  for (const char* w : words) EXPECT_NE(m.find(w), std::string::npos) << "'" << w << "' missing from: " << m;
}

TEST(RnnErrors, NameTheArgumentAndTheShapes) {
  Config c{"lstm", true, 3, 2, 3, 4, 1};
  auto in = make_inputs(c, DType::f32, 1);
  std::vector<Tensor> w(in.begin() + 3, in.end());
  expect_mentions(error_of([&] { lstm(Tensor::ones({3, 2}), w); }), {"lstm", "3 dims", "[3, 2]"});
  expect_mentions(error_of([&] { lstm(Tensor::ones({3, 2, 5}), w); }), {"lstm", "weight_ih_l0", "[16, 3]", "[16, 5]"});
  expect_mentions(error_of([&] { lstm(in[0], {w[0], w[1], w[2]}); }), {"lstm", "expected 4 weight tensors", "got 3"});
  expect_mentions(error_of([&] { lstm(in[0], w, Tensor(), Tensor(), {2}); }), {"lstm", "expected 8 weight tensors"});
  // hidden size 4 read from weight_hh_l0; a bias of another size is named
  expect_mentions(error_of([&] { lstm(in[0], {w[0], w[1], Tensor::ones({12}), w[3]}); }),
                  {"bias_ih_l0", "[12]", "[16]"});
  expect_mentions(error_of([&] { lstm(in[0], {w[0], Tensor::ones({16, 5}), w[2], w[3]}); }),
                  {"hidden_size 5", "weight_ih_l0"});
  expect_mentions(error_of([&] { lstm(in[0], w, Tensor::ones({1, 3, 4})); }), {"h0", "[1, 3, 4]", "[1, 2, 4]"});
  expect_mentions(error_of([&] { lstm(in[0], w, Tensor(), Tensor::ones({2, 2, 4})); }), {"c0", "[2, 2, 4]"});
  expect_mentions(error_of([&] { lstm(in[0], w, Tensor::ones({1, 2, 4}, DType::f64)); }), {"lstm", "dtype"});
  expect_mentions(error_of([&] { lstm(in[0].to(DType::i64), w); }), {"lstm", "int64"});
  expect_mentions(error_of([&] { gru(in[0], w); }), {"gru", "weight_ih_l0", "[16, 3]"});
  Tensor gh0 = Tensor::zeros({1, 2, 4});
  std::vector<Tensor> gw{Tensor::ones({12, 3}), Tensor::ones({12, 4}), Tensor::ones({12}), Tensor::ones({12})};
  EXPECT_NO_THROW(gru(in[0].detach(), gw, gh0));
  expect_mentions(error_of([&] { lstm(Tensor::ones({0, 2, 3}), w); }), {"lstm", "empty"});
}

}  // namespace
}  // namespace hpdl
