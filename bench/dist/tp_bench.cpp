// Tensor parallelism: time of forward + backward of one wide ParallelMLP block
// (E -> F -> E, Megatron's column- then row-parallel pair) split over
// P = (ranks), with the parameters each rank holds and the bytes it
// all-reduces per step (one [B, E] activation forward, one gradient backward).
// Time per step is the slowest rank's, min and median over the repeats, after
// two warm-up steps. GFLOP/s per rank counts 3 x 2 x 2 B E F / P (two GEMMs,
// forward and two backward products each). Prints Markdown table rows.
// Run: for P in 1 2; do mpirun -np $P build/bench/tp_bench [E] [F] [batch] [repeats]; done
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/dist/tensor_parallel.h"
#include "hpdl/ops/ops.h"

using namespace hpdl;

int main(int argc, char** argv) {
  dist::init(&argc, &argv);
  auto& w = dist::Communicator::world();
  const int64_t E = argc > 1 ? std::atoll(argv[1]) : 1024;
  const int64_t F = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int64_t B = argc > 3 ? std::atoll(argv[3]) : 64;
  const int repeats = argc > 4 ? std::atoi(argv[4]) : 10;
  const int P = w.size();

  // The full layers, identical on every rank (same seed), then this rank's shards.
  Generator g(1);
  auto l1 = std::make_shared<nn::Linear>(E, F, true, g);
  auto l2 = std::make_shared<nn::Linear>(F, E, true, g);
  dist::ParallelMLP mlp(*l1, *l2, w, "gelu");
  l1.reset();
  l2.reset();
  Tensor x = Tensor::randn({B, E}, g).set_requires_grad();
  Tensor proj = Tensor::randn({B, E}, g);

  std::vector<double> times;
  for (int k = 0; k < repeats + 2; ++k) {
    mlp.zero_grad();
    x.zero_grad();
    w.barrier();
    auto t0 = std::chrono::steady_clock::now();
    sum(mul(mlp(x), proj)).backward();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    w.allreduce(&s, 1, DType::f64, dist::ReduceKind::max);
    if (k >= 2) times.push_back(s);
  }
  // The communication alone: the step's two [B, E] float32 allreduces, timed the same way.
  std::vector<double> comm_times;
  Tensor buf = Tensor::zeros({B, E});
  for (int k = 0; k < repeats + 2; ++k) {
    w.barrier();
    auto t0 = std::chrono::steady_clock::now();
    if (P > 1) w.allreduce_async(buf)->wait(), w.allreduce_async(buf)->wait();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    w.allreduce(&s, 1, DType::f64, dist::ReduceKind::max);
    if (k >= 2) comm_times.push_back(s);
  }
  std::sort(comm_times.begin(), comm_times.end());
  std::sort(times.begin(), times.end());
  const double tmin = times.front(), tmed = times[times.size() / 2];
  const double flops = 12.0 * B * E * F / P;
  if (w.rank() == 0) {
    std::printf("| P | E | F | batch | fwd+bwd ms min / median | GFLOP/s per rank (min time) | params per rank | "
                "allreduce bytes per step | 2 allreduces alone ms (median) |\n|---|---|---|---|---|---|---|---|---|\n");
    std::printf("| %d | %lld | %lld | %lld | %.2f / %.2f | %.1f | %lld | %lld | %.2f |\n", P, (long long)E, (long long)F,
                (long long)B, tmin * 1e3, tmed * 1e3, flops / tmin * 1e-9, (long long)mlp.num_parameters(),
                P > 1 ? (long long)(2 * B * E * 4) : 0LL, comm_times[comm_times.size() / 2] * 1e3);
  }
  return 0;
}
