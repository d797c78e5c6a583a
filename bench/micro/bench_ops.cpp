// Convolution, linear and sgemm throughput of hpdl's ops on the fast CPU
// backend, forward and forward+backward, as GFLOP/s (counter "GFLOPS").
// Shapes in shapes.h; torch_peer.py times the same shapes in PyTorch and
// run.sh prints both side by side. Each timed iteration goes through the
// public op API (allocation and autograd included), as a training step does.
#include <benchmark/benchmark.h>

#include "bench/micro/shapes.h"
#include "hpdl/autograd/engine.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"

namespace hpdl::bench {
namespace {

void set_gflops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOPS"] =
      benchmark::Counter(flops_per_iter * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

void BM_conv2d(benchmark::State& state, ConvShape s, bool backward) {
  Generator gen(1);
  Tensor x = Tensor::randn({s.N, s.C, s.H, s.W}, gen);
  Tensor w = Tensor::randn({s.K, s.C, s.R, s.S}, gen, 0, 0.1);
  Tensor b = Tensor::zeros({s.K});
  Conv2dParams p;
  p.pad_h = p.pad_w = s.pad;
  p.stride_h = p.stride_w = s.stride;
  if (backward) x.set_requires_grad(), w.set_requires_grad(), b.set_requires_grad();
  const int64_t P = Conv2dParams::out_size(s.H, s.R, s.stride, s.pad, 1);
  const int64_t Q = Conv2dParams::out_size(s.W, s.S, s.stride, s.pad, 1);
  const double fwd = 2.0 * s.N * s.K * P * Q * s.C * s.R * s.S;
  Tensor dy = Tensor::ones({s.N, s.K, P, Q});
  for (auto _ : state) {
    Tensor y = conv2d(x, w, b, p);
    if (backward) {
      auto g = grad({y}, {x, w, b}, {dy});
      benchmark::DoNotOptimize(g[1].raw_data());
    }
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_gflops(state, backward ? 3 * fwd : fwd);  // backward = data + weights, each as costly as forward
}

void BM_linear(benchmark::State& state, LinearShape s, bool backward) {
  Generator gen(2);
  Tensor x = Tensor::randn({s.B, s.in}, gen);
  Tensor w = Tensor::randn({s.out, s.in}, gen, 0, 0.05);
  Tensor b = Tensor::zeros({s.out});
  if (backward) x.set_requires_grad(), w.set_requires_grad(), b.set_requires_grad();
  Tensor dy = Tensor::ones({s.B, s.out});
  const double fwd = 2.0 * s.B * s.in * s.out;
  for (auto _ : state) {
    Tensor y = linear(x, w, b);
    if (backward) {
      auto g = grad({y}, {x, w, b}, {dy});
      benchmark::DoNotOptimize(g[1].raw_data());
    }
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_gflops(state, backward ? 3 * fwd : fwd);
}

void BM_sgemm(benchmark::State& state) {
  Generator gen(3);
  const int64_t n = kSgemmN;
  Tensor a = Tensor::randn({n, n}, gen), b = Tensor::randn({n, n}, gen);
  for (auto _ : state) benchmark::DoNotOptimize(matmul(a, b).raw_data());
  set_gflops(state, 2.0 * n * n * n);
}

int register_all() {
  for (const ConvShape& s : kConvShapes) {
    benchmark::RegisterBenchmark((std::string("conv2d_fwd/") + s.name).c_str(), BM_conv2d, s, false)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((std::string("conv2d_fwdbwd/") + s.name).c_str(), BM_conv2d, s, true)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  for (const LinearShape& s : kLinearShapes) {
    benchmark::RegisterBenchmark((std::string("linear_fwd/") + s.name).c_str(), BM_linear, s, false)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((std::string("linear_fwdbwd/") + s.name).c_str(), BM_linear, s, true)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  benchmark::RegisterBenchmark("sgemm/2048", BM_sgemm)->Unit(benchmark::kMillisecond)->UseRealTime();
  return 0;
}
const int registered = register_all();

}  // namespace
}  // namespace hpdl::bench

BENCHMARK_MAIN();
