// Kernel timings of the CUDA backend on a few training-sized problems: a
// float32 matmul (FMA and TF32), a ResNet-50 3x3 convolution forward and
// backward, and bandwidth-bound elementwise, reduction and optimizer kernels.
// Each is warmed up, then timed over repeats with the stream synchronized
// before and after; reported as median ms with GFLOP/s or GB/s beside it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "hpdl/backend/backend.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/core/random.h"

using namespace hpdl;

namespace {

const Device kGPU{DeviceType::cuda, 0};

double median_ms(const std::function<void()>& f, int warmup = 3, int repeats = 20) {
  for (int i = 0; i < warmup; ++i) f();
  cuda::synchronize();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    cuda::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

Tensor rnd(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s, DType::f32, kGPU);
  backend_for(kGPU).random_uniform(t, seed, 0, -1, 1);
  return t;
}

void report(const char* name, double ms, double flops, double bytes) {
  std::printf("%-44s %9.3f ms", name, ms);
  if (flops > 0) std::printf("  %9.1f GFLOP/s", flops / ms / 1e6);
  if (bytes > 0) std::printf("  %9.1f GB/s", bytes / ms / 1e6);
  std::printf("\n");
}

}  // namespace

int main() {
  if (!cuda::available()) {
    std::printf("no CUDA device: nothing to time\n");
    return 0;
  }
  Backend& g = backend_for(kGPU);
  {
    const int64_t n = 4096;
    Tensor a = rnd({n, n}, 1), b = rnd({n, n}, 2), c = Tensor::empty({n, n}, DType::f32, kGPU);
    for (bool tf32 : {false, true}) {
      cuda::set_allow_tf32(tf32);
      double ms = median_ms([&] { g.matmul(a, b, c, false, false, 1, 0); });
      report(tf32 ? "matmul 4096^3 f32 (TF32)" : "matmul 4096^3 f32 (FMA)", ms, 2.0 * n * n * n, 0);
    }
    cuda::set_allow_tf32(false);
  }
  {
    // ResNet-50 stage-2 3x3 convolution, batch 64: x [64, 128, 28, 28], w [128, 128, 3, 3].
    Conv2dParams p;
    p.pad_h = p.pad_w = 1;
    Tensor x = rnd({64, 128, 28, 28}, 3), w = rnd({128, 128, 3, 3}, 4), y = rnd({64, 128, 28, 28}, 5);
    Tensor dx = Tensor::empty(x.shape(), DType::f32, kGPU), dw = Tensor::empty(w.shape(), DType::f32, kGPU);
    const double flops = 2.0 * 64 * 128 * 28 * 28 * 128 * 9;
    for (bool tf32 : {false, true}) {
      cuda::set_allow_tf32(tf32);
      report(tf32 ? "conv3x3 fwd 64x128x28x28 (TF32)" : "conv3x3 fwd 64x128x28x28 (FMA)",
             median_ms([&] { g.conv2d_forward(x, w, Tensor(), y, p); }), flops, 0);
      report(tf32 ? "conv3x3 bwd data (TF32)" : "conv3x3 bwd data (FMA)",
             median_ms([&] { g.conv2d_backward_data(y, w, dx, p); }), flops, 0);
      report(tf32 ? "conv3x3 bwd weights (TF32)" : "conv3x3 bwd weights (FMA)",
             median_ms([&] { g.conv2d_backward_weights(x, y, dw, Tensor(), p); }), flops, 0);
    }
    cuda::set_allow_tf32(false);
  }
  {
    const int64_t n = int64_t{1} << 26;  // 64 Mi floats, 256 MiB per tensor
    Tensor a = rnd({n}, 6), b = rnd({n}, 7), c = Tensor::empty({n}, DType::f32, kGPU);
    report("binary add 64M f32", median_ms([&] { g.binary(BinaryOp::add, a, b, c, 0); }), 0, 12.0 * n);
    Tensor b_row = rnd({8192}, 8);
    Tensor a2 = make_view(a, {n / 8192, 8192}, {8192, 1}, 0), c2 = make_view(c, {n / 8192, 8192}, {8192, 1}, 0);
    report("binary add 64M f32, broadcast row", median_ms([&] { g.binary(BinaryOp::add, a2, b_row, c2, 0); }), 0,
           8.0 * n);
    report("unary gelu 64M f32", median_ms([&] { g.unary(UnaryOp::gelu, a, c, 0); }), 0, 8.0 * n);
    report("copy 64M f32 -> transposed view", median_ms([&] {
             g.copy(make_view(a, {8192, n / 8192}, {1, 8192}, 0), c2);
           }), 0, 8.0 * n);
    Tensor s = Tensor::empty({1}, DType::f32, kGPU);
    report("reduce sum 64M f32 (all axes)", median_ms([&] { g.reduce(ReduceOp::sum, a, {0}, s); }), 0, 4.0 * n);
    Tensor rows = Tensor::empty({n / 8192, 1}, DType::f32, kGPU);
    report("reduce sum rows [8192, 8192]", median_ms([&] { g.reduce(ReduceOp::sum, a2, {1}, rows); }), 0, 4.0 * n);
    Tensor m = rnd({n}, 9), v = Tensor::zeros({n}, DType::f32, kGPU);
    OptimizerUpdate u;
    u.kind = OptimizerUpdate::Kind::adamw, u.lr = 1e-3, u.weight_decay = 0.01;
    report("adamw update 64M f32", median_ms([&] { g.optimizer_update(u, a, b, m, v); }), 0, 28.0 * n);
    Tensor h = Tensor::empty({n}, DType::f32);
    report("copy 64M f32 device -> host (pageable)", median_ms([&] { g.copy(a, h); }, 1, 5), 0, 4.0 * n);
  }
  cuda::AllocatorStats st = cuda::allocator_stats();
  std::printf("allocator: %lld cudaMalloc calls, %lld cache hits, %.1f MiB cached\n",
              static_cast<long long>(st.device_mallocs), static_cast<long long>(st.cache_hits),
              st.cached_bytes / 1048576.0);
  return 0;
}
