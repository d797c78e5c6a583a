// Kernel lab for the fused attention (hpdl/backend/cpu/flash_attention.h):
// at ViT-like shapes (q, k, v [N, heads, T, E] float32, T = S = 50), checks the
// fused path against the composed reference (output and the three input
// gradients), then times forward + backward of each, alternating the two,
// and prints min / median milliseconds, GFLOP/s and the ratio of medians.
// GFLOP/s counts the four [T, S] x E products of forward + backward plus the
// recomputed one: 2 * 5 * B * T * S * E with B = N * heads.
// Run: build/bench/hpdl_attention_bench [threads=2] [repeats=15] [causal=0]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "hpdl/autograd/engine.h"
#include "hpdl/core/random.h"
#include "hpdl/core/threading.h"
#include "hpdl/ops/ops.h"

using namespace hpdl;
using Clock = std::chrono::steady_clock;

namespace {

struct Grads {
  Tensor out, dq, dk, dv;
};

Grads step(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& w, AttentionImpl impl, bool causal) {
  AttentionOptions o;
  o.impl = impl;
  o.causal = causal;
  Grads g;
  g.out = scaled_dot_product_attention(q, k, v, o);
  auto d = grad({sum(mul(g.out, w))}, {q, k, v});
  g.dq = d[0];
  g.dk = d[1];
  g.dv = d[2];
  return g;
}

double max_rel(const Tensor& a, const Tensor& b) {
  auto av = a.contiguous().to_vector<double>(), bv = b.contiguous().to_vector<double>();
  double d = 0, m = 1e-30;
  for (size_t i = 0; i < av.size(); ++i) {
    d = std::max(d, std::abs(av[i] - bv[i]));
    m = std::max(m, std::abs(bv[i]));
  }
  return d / m;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 15;
  const bool causal = argc > 3 && std::atoi(argv[3]) != 0;
  set_num_threads(threads);
  std::printf("threads %d, repeats %d%s\n", threads, repeats, causal ? ", causal" : "");
  std::printf("| N | heads | T | E | max rel err (out, dq, dk, dv) | composed ms (min / med) | fused ms (min / med) | "
              "composed GFLOP/s | fused GFLOP/s | speedup (median) |\n|---|---|---|---|---|---|---|---|---|---|\n");
  const int64_t H = 4, T = 50;
  for (int64_t N : {64, 128, 256}) {
    for (int64_t E : {16, 32}) {
      Generator gen(static_cast<uint64_t>(N * 100 + E));
      Tensor q = Tensor::randn({N, H, T, E}, gen).set_requires_grad();
      Tensor k = Tensor::randn({N, H, T, E}, gen).set_requires_grad();
      Tensor v = Tensor::randn({N, H, T, E}, gen).set_requires_grad();
      Tensor w = Tensor::randn({N, H, T, E}, gen);
      Grads f = step(q, k, v, w, AttentionImpl::fused, causal);
      Grads c = step(q, k, v, w, AttentionImpl::composed, causal);
      const double err = std::max({max_rel(f.out, c.out), max_rel(f.dq, c.dq), max_rel(f.dk, c.dk), max_rel(f.dv, c.dv)});
      std::vector<double> tc, tf;
      for (int r = 0; r < repeats; ++r) {  // alternate, so both see the same machine load
        for (AttentionImpl impl : {AttentionImpl::composed, AttentionImpl::fused}) {
          auto t0 = Clock::now();
          Grads g = step(q, k, v, w, impl, causal);
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
          (impl == AttentionImpl::fused ? tf : tc).push_back(ms);
        }
      }
      const double flops = 2.0 * 5 * static_cast<double>(N * H) * T * T * E * (causal ? 0.5 : 1.0);
      const double mc = median(tc), mf = median(tf);
      std::printf("| %ld | %ld | %ld | %ld | %.1e | %.2f / %.2f | %.2f / %.2f | %.1f | %.1f | %.2fx |\n",
                  static_cast<long>(N), static_cast<long>(H), static_cast<long>(T), static_cast<long>(E), err,
                  *std::min_element(tc.begin(), tc.end()), mc, *std::min_element(tf.begin(), tf.end()), mf,
                  flops / mc * 1e-6, flops / mf * 1e-6, mc / mf);
      std::fflush(stdout);
    }
  }
  return 0;
}
