// Pipeline parallelism: memory per rank and time per step of a wide MLP cut
// into S = (ranks) stages, for M micro-batches and both schedules. Memory is
// measured, not estimated: the stage's parameter bytes, the boundary
// activations it held at the peak (Pipeline::boundary_activation_bytes) and
// the CPU allocator's peak of live tensor bytes over a step (parameters,
// gradients, optimizer state, every activation). Time per step is the
// slowest rank's, min and median over the repeats; the busy fraction is each
// rank's compute time (Pipeline::compute_seconds) over its train_step's, averaged
// over ranks and repeats: on S dedicated cores and balanced stages it is
// 1 - bubble = M/(M+S-1) for GPipe. Prints Markdown table rows.
// Run: for S in 1 2 4; do mpirun -np $S build/bench/pipeline_bench [width] [hidden] [batch] [repeats]; done
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench/dist/mlp_bench_data.h"
#include "hpdl/core/random.h"
#include "hpdl/core/storage.h"
#include "hpdl/dist/pipeline.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

using namespace hpdl;

namespace {

double mib(double bytes) { return bytes / (1 << 20); }

// Max over ranks of one value.
double rank_max(dist::Communicator& w, double v) {
  w.allreduce(&v, 1, DType::f64, dist::ReduceKind::max);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  dist::init(&argc, &argv);
  auto& w = dist::Communicator::world();
  const int64_t width = argc > 1 ? std::atoll(argv[1]) : 1024;
  const int hidden = argc > 2 ? std::atoi(argv[2]) : 8;
  const int64_t batch = argc > 3 ? std::atoll(argv[3]) : 64;
  const int repeats = argc > 4 ? std::atoi(argv[4]) : 5;
  const int S = w.size();
  if (w.rank() == 0)
    std::printf("| S | schedule | M | step ms min / median | busy fraction | 1 - (S-1)/(M+S-1) | params MiB/rank | "
                "boundary act. MiB/rank | peak live MiB/rank |\n|---|---|---|---|---|---|---|---|---|\n");

  const auto [x, y] = bench::random_batch(batch, width, 1);
  auto loss = [](const Tensor& out, const Tensor& t) { return cross_entropy(out, t); };

  for (auto schedule : {dist::PipelineSchedule::gpipe, dist::PipelineSchedule::one_f_one_b}) {
    if (S == 1 && schedule == dist::PipelineSchedule::one_f_one_b) continue;  // the same on one stage
    for (int M : {1, 4, 8}) {
      dist::PipelineOptions po;
      po.micro_batches = M;
      po.schedule = schedule;
      std::unique_ptr<dist::Pipeline> pipe;
      {
        // Every rank builds the whole model and keeps its stage; the rest is freed here.
        auto model = bench::wide_mlp(width, hidden);
        pipe = std::make_unique<dist::Pipeline>(model, w, po);
      }
      std::unique_ptr<optim::SGD> opt;
      optim::SGDOptions so;
      so.lr = 0.01;
      so.momentum = 0.9;
      if (pipe->stage().num_parameters() > 0) opt = std::make_unique<optim::SGD>(optim::param_specs(pipe->stage()), so);
      double train_step_s = 0;  // the pipeline part of a step, without zero_grad and the optimizer
      auto step = [&] {
        pipe->stage().zero_grad();
        const double t0 = MPI_Wtime();
        pipe->train_step(x, y, loss);
        train_step_s = MPI_Wtime() - t0;
        if (opt) opt->step();
      };
      step();  // warm-up: allocator cache, optimizer state
      reset_cpu_memory_peak();
      std::vector<double> times;
      double busy = 0;
      for (int r = 0; r < repeats; ++r) {
        w.barrier();
        const double t0 = MPI_Wtime();
        step();
        const double t = MPI_Wtime() - t0;
        double f = pipe->compute_seconds() / train_step_s;
        w.allreduce(&f, 1, DType::f64, dist::ReduceKind::sum);
        busy += f / S / repeats;
        times.push_back(rank_max(w, t));
      }
      std::sort(times.begin(), times.end());
      double params = 0;
      for (auto& p : pipe->stage().parameters()) params += static_cast<double>(p.nbytes());
      params = rank_max(w, params);
      const double act = rank_max(w, static_cast<double>(pipe->boundary_activation_bytes()));
      const double peak = rank_max(w, static_cast<double>(cpu_memory_stats().peak_live_bytes));
      if (w.rank() == 0)
        std::printf("| %d | %s | %d | %.1f / %.1f | %.2f | %.2f | %.1f | %.2f | %.1f |\n", S,
                    schedule == dist::PipelineSchedule::gpipe ? "gpipe" : "1f1b", M, 1e3 * times.front(),
                    1e3 * times[times.size() / 2], busy, 1.0 - double(S - 1) / (M + S - 1), mib(params), mib(act),
                    mib(peak));
    }
  }
  return 0;
}
