// The cuDNN LSTM and GRU (backend/cuda/rnn.cpp) against the CPU reference
// kernels: the same inputs on the host and on the GPU, the ops lstm/gru run
// forward and backward (sum of the outputs weighted by a fixed random tensor)
// on each, and the output, h_n, c_n and the gradients of x, h0, c0 and every
// weight and bias are compared elementwise. A failure names the config, the
// tensor (e.g. "weight_hh_l1_reverse"), how many elements differ and the worst
// one. Without a GPU every test is skipped with "no CUDA device".
// To add a shape: add a line to configs().
#ifdef HPDL_HAVE_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>

#include "hpdl/autograd/engine.h"
#include "hpdl/backend/backend.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/core/random.h"
#include "hpdl/nn/rnn.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

const Device kGPU{DeviceType::cuda, 0};

struct Config {
  std::string name;
  bool lstm = true;
  int64_t T = 3, N = 2, I = 3, H = 2, L = 1;
  bool bidir = false;
  DType dtype = DType::f32;
  int64_t G() const { return lstm ? 4 : 3; }
  int64_t D() const { return bidir ? 2 : 1; }
};
void PrintTo(const Config& c, std::ostream* os) { *os << c.name; }

std::string input_name(const Config& c, size_t i) { return test::rnn_input_name(c.lstm, c.D(), i); }

// Host inputs in the op's order: x [T, N, I], h0, (c0), then 4 weights per (layer, direction).
std::vector<Tensor> host_inputs(const Config& c, uint64_t seed) {
  Generator gen(seed);
  auto r = [&](const Shape& s) { return Tensor::rand(s, gen, -0.8, 0.8, DType::f64).to(c.dtype); };
  std::vector<Tensor> in{r({c.T, c.N, c.I}), r({c.L * c.D(), c.N, c.H})};
  if (c.lstm) in.push_back(r({c.L * c.D(), c.N, c.H}));
  for (int64_t l = 0; l < c.L; ++l)
    for (int64_t d = 0; d < c.D(); ++d) {
      in.push_back(r({c.G() * c.H, l == 0 ? c.I : c.H * c.D()}));
      in.push_back(r({c.G() * c.H, c.H}));
      in.push_back(r({c.G() * c.H}));
      in.push_back(r({c.G() * c.H}));
    }
  return in;
}

struct Outcome {
  std::vector<Tensor> outputs;  // output, h_n, (c_n) on the host
  std::vector<Tensor> grads;    // one per input, on the host
};

// Forward and backward on `device` from copies of the host inputs.
Outcome run_on(const Config& c, const std::vector<Tensor>& host, Device device) {
  std::vector<Tensor> in;
  for (const Tensor& h : host) in.push_back(h.to(device).detach().set_requires_grad());
  const size_t w0 = c.lstm ? 3 : 2;
  std::vector<Tensor> w(in.begin() + static_cast<std::ptrdiff_t>(w0), in.end());
  RnnOptions o{c.L, c.bidir, false};
  RnnResult r = c.lstm ? lstm(in[0], w, in[1], in[2], o) : gru(in[0], w, in[1], o);
  std::vector<Tensor> outs{r.output, r.h_n};
  if (c.lstm) outs.push_back(r.c_n);
  Tensor loss;
  for (size_t k = 0; k < outs.size(); ++k) {
    Generator gen(100 + k);
    Tensor wk = Tensor::rand(outs[k].shape(), gen, -1, 1, DType::f64).to(c.dtype).to(device);
    Tensor term = sum(mul(outs[k], wk));
    loss = loss.defined() ? add(loss, term) : term;
  }
  Outcome run;
  for (const Tensor& t : outs) run.outputs.push_back(t.to(kCPU));
  for (const Tensor& g : grad({loss}, in)) run.grads.push_back(g.to(kCPU));
  return run;
}

// |gpu - ref| <= atol + rtol * |ref| elementwise; reports the count and the worst element.
void expect_close(const Tensor& gpu, const Tensor& ref, const std::string& what, double rtol, double atol) {
  ASSERT_EQ(gpu.shape(), ref.shape()) << what;
  auto a = gpu.to_vector<double>(), b = ref.to_vector<double>();
  int64_t bad = 0, worst = -1;
  double worst_excess = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double tol = atol + rtol * std::abs(b[i]), err = std::abs(a[i] - b[i]);
    if (!(err <= tol)) {
      ++bad;
      const double excess = std::isnan(err) ? INFINITY : err / tol;
      if (worst < 0 || excess > worst_excess) worst = static_cast<int64_t>(i), worst_excess = excess;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.size() << " elements differ; worst at flat index "
                    << worst << ": gpu " << (worst >= 0 ? a[worst] : 0) << " vs reference "
                    << (worst >= 0 ? b[worst] : 0) << " (rtol " << rtol << ", atol " << atol << ")";
}

class CudaRnnTest : public ::testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaRnnTest, ForwardAndEveryGradientMatchReference) {
  const Config& c = GetParam();
  auto host = host_inputs(c, 41);
  Outcome ref;
  {
    ScopedCpuBackend guard(reference_backend());
    ref = run_on(c, host, kCPU);
  }
  Outcome gpu = run_on(c, host, kGPU);
  const bool f64 = c.dtype == DType::f64;
  const double rtol = f64 ? 1e-10 : 1e-4, atol = f64 ? 1e-12 : 1e-5;
  static const char* out_names[] = {"output", "h_n", "c_n"};
  for (size_t k = 0; k < ref.outputs.size(); ++k)
    expect_close(gpu.outputs[k], ref.outputs[k], c.name + " " + out_names[k], rtol, atol);
  ASSERT_EQ(gpu.grads.size(), host.size());
  // Gradients sum over T steps and N rows: allow a little more float32 rounding.
  for (size_t i = 0; i < host.size(); ++i)
    expect_close(gpu.grads[i], ref.grads[i], c.name + " gradient of " + input_name(c, i), f64 ? rtol : 5e-4,
                 f64 ? atol : 5e-5);
}

std::vector<Config> configs() {
  return {
      {"lstm_1layer", true, 5, 3, 4, 6, 1},
      {"lstm_T1_N1", true, 1, 1, 3, 4, 1},
      {"lstm_2layer", true, 6, 4, 5, 8, 2},
      {"lstm_bidir", true, 5, 3, 4, 6, 1, true},
      {"lstm_bidir_3layer", true, 4, 2, 3, 5, 3, true},
      {"lstm_fashion_mnist_rows", true, 28, 16, 28, 128, 1},
      {"lstm_bidir_T1_N1", true, 1, 1, 2, 3, 1, true},
      {"lstm_f64_2layer_bidir", true, 4, 3, 3, 5, 2, true, DType::f64},
      {"gru_1layer", false, 5, 3, 4, 6, 1},
      {"gru_T1_N1", false, 1, 1, 3, 4, 1},
      {"gru_2layer_bidir", false, 5, 3, 4, 6, 2, true},
      {"gru_wide", false, 12, 8, 32, 64, 1},
      {"gru_f64", false, 4, 2, 3, 5, 2, false, DType::f64},
  };
}

INSTANTIATE_TEST_SUITE_P(CudaRnn, CudaRnnTest, ::testing::ValuesIn(configs()),
                         [](const ::testing::TestParamInfo<Config>& info) { return info.param.name; });

class CudaRnnLayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  }
};

// cuDNN's backward may write into its reserve space; a second backward through the same
// graph (retain_graph) must still give the same gradients.
TEST_F(CudaRnnLayerTest, BackwardTwiceGivesTheSameGradients) {
  Config c{"lstm_twice", true, 6, 3, 4, 5, 2, true};
  auto host = host_inputs(c, 7);
  std::vector<Tensor> in;
  for (const Tensor& h : host) in.push_back(h.to(kGPU).detach().set_requires_grad());
  std::vector<Tensor> w(in.begin() + 3, in.end());
  RnnResult r = lstm(in[0], w, in[1], in[2], {2, true});
  Tensor loss = add(sum(square(r.output)), sum(r.c_n));
  auto g1 = grad({loss}, in, {}, /*retain_graph=*/true);
  auto g2 = grad({loss}, in);
  for (size_t i = 0; i < in.size(); ++i)
    expect_close(g2[i].to(kCPU), g1[i].to(kCPU), "second backward, " + input_name(c, i), 1e-6, 1e-7);
}

// The layer moved to the GPU computes what it computes on the CPU (parameter handles follow).
TEST_F(CudaRnnLayerTest, LayerOnGpuMatchesCpu) {
  Generator g1(9), gx(10);
  nn::GRU gru(7, 9, {2, true, true}, g1);
  Tensor x = Tensor::randn({4, 6, 7}, gx);  // batch_first [N, T, I]
  Tensor cpu_out = gru.forward(x);
  gru.to(kGPU);
  Tensor gpu_out = gru.forward(x.to(kGPU));
  expect_close(gpu_out.to(kCPU), cpu_out, "GRU layer output", 1e-4, 1e-5);
}

}  // namespace
}  // namespace hpdl

#endif  // HPDL_HAVE_CUDA
