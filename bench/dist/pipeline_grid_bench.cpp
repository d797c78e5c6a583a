// Pipeline x data parallelism: time per step of a wide MLP on a grid of S
// stages x R replicas (R = ranks / S), each replica on its own batch, and
// what the replicas' gradient average costs. Per configuration: the slowest
// rank's step (zero_grad, train_step, SGD step), min and median over the
// repeats; the seconds a step's train_step waited for the average after the
// stage's last backward (Pipeline::replica_wait_seconds, median of the
// slowest rank); the stage's compute seconds (forward, loss, backward:
// Pipeline::compute_seconds, median of the slowest rank); and, as the yardstick, one MPI allreduce of the stage's
// gradient bytes on the same data communicator with nothing else running
// (what a blocking average after backward would add). Prints Markdown rows.
// Run: mpirun -np N build/bench/pipeline_grid_bench [stages] [width] [hidden] [batch] [repeats]
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/dist/mlp_bench_data.h"
#include "hpdl/core/random.h"
#include "hpdl/dist/pipeline.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

using namespace hpdl;

namespace {

double max_over(dist::Communicator& c, double v) {
  c.allreduce(&v, 1, DType::f64, dist::ReduceKind::max);
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  dist::init(&argc, &argv);
  auto& w = dist::Communicator::world();
  const int S = argc > 1 ? std::atoi(argv[1]) : 1;
  const int64_t width = argc > 2 ? std::atoll(argv[2]) : 1024;
  const int hidden = argc > 3 ? std::atoi(argv[3]) : 8;
  const int64_t batch = argc > 4 ? std::atoll(argv[4]) : 64;
  const int repeats = argc > 5 ? std::atoi(argv[5]) : 9;
  auto grid = dist::make_pipeline_grid(w, S);
  if (w.rank() == 0)
    std::printf("| S x R | schedule | M | grad MiB/stage | step ms min / median | compute ms | replica wait ms | one "
                "allreduce ms min / median |\n|---|---|---|---|---|---|---|---|\n");
  const auto [x, y] = bench::random_batch(batch, width, 1 + grid.replica);  // each replica its own batch
  auto loss = [](const Tensor& out, const Tensor& t) { return cross_entropy(out, t); };

  for (auto schedule : {dist::PipelineSchedule::gpipe, dist::PipelineSchedule::one_f_one_b}) {
    if (S == 1 && schedule == dist::PipelineSchedule::one_f_one_b) continue;  // the same on one stage
    for (int M : {1, 4}) {
      dist::PipelineOptions po;
      po.micro_batches = M;
      po.schedule = schedule;
      std::unique_ptr<dist::Pipeline> pipe;
      {
        auto model = bench::wide_mlp(width, hidden);
        pipe = std::make_unique<dist::Pipeline>(model, grid, po);
      }
      optim::SGDOptions so;
      so.lr = 0.01;
      so.momentum = 0.9;
      optim::SGD opt(optim::param_specs(pipe->stage()), so);
      auto step = [&] {
        opt.zero_grad();
        pipe->train_step(x, y, loss);
        opt.step();
      };
      step();  // warm-up
      std::vector<double> times, waits, computes;
      for (int r = 0; r < repeats; ++r) {
        w.barrier();
        const double t0 = MPI_Wtime();
        step();
        times.push_back(max_over(w, MPI_Wtime() - t0));
        waits.push_back(max_over(w, pipe->replica_wait_seconds()));
        computes.push_back(max_over(w, pipe->compute_seconds()));
      }
      // The yardstick: the stage's gradients in one message, nothing else running.
      int64_t numel = 0;
      for (auto& p : pipe->stage().parameters()) numel += p.numel();
      Tensor flat = Tensor::zeros({numel}, DType::f32);
      std::vector<double> alone;
      for (int r = 0; r < repeats; ++r) {
        w.barrier();
        const double t0 = MPI_Wtime();
        grid.data->allreduce(flat);
        alone.push_back(max_over(w, MPI_Wtime() - t0));
      }
      const double mib = max_over(w, static_cast<double>(numel) * 4) / (1 << 20);
      if (w.rank() == 0)
        std::printf("| %d x %d | %s | %d | %.1f | %.1f / %.1f | %.1f | %.2f | %.2f / %.2f |\n", S, grid.replicas,
                    schedule == dist::PipelineSchedule::gpipe ? "gpipe" : "1f1b", M, mib,
                    1e3 * *std::min_element(times.begin(), times.end()), 1e3 * median(times), 1e3 * median(computes), 1e3 * median(waits),
                    1e3 * *std::min_element(alone.begin(), alone.end()), 1e3 * median(alone));
    }
  }
  return 0;
}
