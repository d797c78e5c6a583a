// hpdl bench scaling: measures this machine's compute per training step and
// (under mpirun) its allreduce of the gradient volume, then predicts time per
// step, time per epoch and parallel efficiency for 1..max ranks with the
// alpha-beta model of hpdl/dist/scaling.h (Hockney 1994; ring allreduce,
// Patarasuk & Yuan 2009). The model and its limits: docs/scaling.md.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "apps/hpdl/commands.h"
#include "hpdl/core/error.h"
#include "hpdl/core/random.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/dist/scaling.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/train/config.h"

namespace hpdl::cli {
namespace {

constexpr int64_t kFashionMnistTrain = 60000;

struct ScalingArgs {
  std::string model = "lenet5";
  int64_t batch = 128;
  std::string net = "ib-hdr";
  int max_ranks = 4096;
  double overlap = 0.7;
  int steps = 10;
  int warmup = 3;
  bool bf16_wire = false;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Forward (model + loss), backward and optimizer seconds per step, medians over
// `steps` steps after `warmup` steps, on synthetic Fashion-MNIST-shaped data
// (1x28x28, 10 classes): the time does not depend on pixel values.
dist::StepProfile measure_step(const ScalingArgs& a) {
  nn::models::ModelConfig mc;
  // The activation layout training runs with by default (train.channels_last, design decision 75).
  set_cpu_channels_last(train::TrainConfig{}.channels_last);
  nn::ModulePtr model = nn::models::make_model(a.model, mc);
  model->train();
  optim::SGDOptions so;
  so.lr = 0.01;
  so.momentum = 0.9;
  optim::SGD opt(optim::param_specs(*model), so);
  Generator gen(1);
  Tensor x = Tensor::randn({a.batch, 1, 28, 28}, gen);
  std::vector<int64_t> labels(a.batch);
  for (auto& v : labels) v = static_cast<int64_t>(gen.next_u64() % 10);
  Tensor y = Tensor::from_vector(labels, {a.batch});
  std::vector<double> fwd, bwd, upd;
  for (int s = 0; s < a.warmup + a.steps; ++s) {
    model->zero_grad();
    auto t0 = std::chrono::steady_clock::now();
    Tensor loss = cross_entropy(model->forward(x), y);
    double tf = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    loss.backward();
    double tb = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    opt.step();
    double to = seconds_since(t0);
    if (s >= a.warmup) fwd.push_back(tf), bwd.push_back(tb), upd.push_back(to);
  }
  dist::StepProfile prof;
  prof.forward_s = median(fwd);
  prof.backward_s = median(bwd);
  prof.optimizer_s = median(upd);
  double elems = 0;
  for (auto& p : model->parameters())
    if (p.requires_grad()) elems += static_cast<double>(p.numel());
  prof.gradient_bytes = elems * (a.bf16_wire ? 2 : 4);
  prof.batch_per_rank = a.batch;
  prof.overlap = a.overlap;
  return prof;
}

// Median seconds of one Communicator allreduce of `bytes` bytes of float32
// (the slowest rank's time each repeat, as the step waits for it).
double measure_allreduce(dist::Communicator& comm, double bytes, int repeats) {
  const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(bytes / 4));
  Tensor t = Tensor::zeros({count});
  std::vector<double> times;
  for (int r = 0; r < repeats + 2; ++r) {
    comm.barrier();
    double t0 = MPI_Wtime();
    comm.allreduce(t);
    double dt = MPI_Wtime() - t0;
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, comm.handle());
    if (r >= 2) times.push_back(dt);
  }
  return median(times);
}

void run_scaling(const ScalingArgs& a) {
  HPDL_CHECK(a.batch > 0, "bench scaling: --batch must be positive, got {}", a.batch);
  HPDL_CHECK(a.max_ranks >= 1, "bench scaling: --max-ranks must be >= 1, got {}", a.max_ranks);
  HPDL_CHECK(a.overlap >= 0 && a.overlap <= 1, "bench scaling: --overlap must be in [0, 1], got {}", a.overlap);
  HPDL_CHECK(a.steps >= 1 && a.warmup >= 0, "bench scaling: need --steps >= 1 and --warmup >= 0");
  const dist::Interconnect& net = dist::interconnect_preset(a.net);  // throws listing the presets
  auto& comm = dist::Communicator::world();
  const bool root = comm.rank() == 0;
  const int p = comm.size();

  dist::StepProfile prof = measure_step(a);
  // Every rank measured; the job's step is set by the slowest, so take the max.
  double t[3] = {prof.forward_s, prof.backward_s, prof.optimizer_s};
  MPI_Allreduce(MPI_IN_PLACE, t, 3, MPI_DOUBLE, MPI_MAX, comm.handle());
  prof.forward_s = t[0], prof.backward_s = t[1], prof.optimizer_s = t[2];

  if (root) {
    std::printf("# hpdl bench scaling: %s, batch %lld per rank, %s (%s), overlap h = %.2f\n", a.model.c_str(),
                static_cast<long long>(a.batch), net.name.c_str(), net.description.c_str(), a.overlap);
    std::printf("measured on this machine (median of %d steps after %d warm-up): forward %.3f ms, backward %.3f ms, "
                "optimizer %.3f ms; gradients %.0f bytes (%s)\n",
                a.steps, a.warmup, 1e3 * prof.forward_s, 1e3 * prof.backward_s, 1e3 * prof.optimizer_s,
                prof.gradient_bytes, a.bf16_wire ? "bfloat16 on the wire" : "float32");
    std::printf("\n| ranks | allreduce ms | exposed comm ms | step ms | epoch s (60,000 samples) | samples/s | "
                "efficiency |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const auto& pt : dist::predict_range(prof, net, kFashionMnistTrain, a.max_ranks))
      std::printf("| %d | %.3f | %.3f | %.3f | %.3f | %.0f | %.4f |\n", pt.ranks, 1e3 * pt.allreduce_s,
                  1e3 * pt.exposed_comm_s, 1e3 * pt.step_s, pt.epoch_s, pt.samples_per_s, pt.efficiency);
    const int64_t one_step_ranks = (kFashionMnistTrain + a.batch - 1) / a.batch;
    if (one_step_ranks <= a.max_ranks)
      std::printf("(from %lld ranks on, the global batch covers the 60,000 samples: one step per epoch, and the "
                  "large-batch regime needs LARS/LAMB to keep accuracy; see docs/distributed.md)\n",
                  static_cast<long long>(one_step_ranks));
  }

  if (p < 2) {
    if (root)
      std::printf("\nallreduce: one rank, nothing measured (run under mpirun -np 2 or more to compare the model "
                  "with this machine)\n");
    return;
  }
  // Measured allreduce of the gradient volume, and a "this machine" alpha/beta
  // from two sizes: a tiny message gives the latency term 2 (p-1) alpha, the
  // gradient-sized one adds the bandwidth term 2 (p-1)/p n beta.
  const int repeats = 9;
  const double small_bytes = 8;
  const double t_small = measure_allreduce(comm, small_bytes, repeats);
  const double t_grad = measure_allreduce(comm, prof.gradient_bytes, repeats);
  if (!root) return;
  const double predicted = dist::ring_allreduce_seconds(p, prof.gradient_bytes, net);
  std::printf("\nallreduce of %.0f bytes over %d ranks: measured %.3f ms (Communicator, this machine), "
              "%s model %.3f ms (ratio measured/model %.2f)\n",
              prof.gradient_bytes, p, 1e3 * t_grad, net.name.c_str(), 1e3 * predicted,
              predicted > 0 ? t_grad / predicted : 0.0);
  dist::Interconnect here{"this-machine", t_small / (2.0 * (p - 1)), 0, "calibrated from two message sizes"};
  const double dbytes = prof.gradient_bytes - small_bytes;
  const double dt = t_grad - t_small;
  if (dt > 0 && dbytes > 0) {
    here.bandwidth_Bps = 2.0 * (p - 1) / p * dbytes / dt;
    std::printf("this machine: alpha %.2f us, bandwidth %.2f GB/s (ring model fitted to 8 B and %.0f B)\n",
                1e6 * here.alpha_s, here.bandwidth_Bps / 1e9, prof.gradient_bytes);
    dist::ScalingPoint pt = dist::predict(prof, here, p, kFashionMnistTrain);
    std::printf("this machine at %d ranks: step %.3f ms, exposed comm %.3f ms, efficiency %.4f\n", p,
                1e3 * pt.step_s, 1e3 * pt.exposed_comm_s, pt.efficiency);
  } else {
    std::printf("this machine: the gradient allreduce was not slower than an 8-byte one; no bandwidth fit\n");
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks of this machine");
  bench->require_subcommand(1);
  auto a = std::make_shared<ScalingArgs>();
  auto* sc = bench->add_subcommand(
      "scaling", "Measure step time and allreduce here, then predict data-parallel scaling to many ranks");
  sc->add_option("--model", a->model, "Model: lenet5, resnet20, mlp (or any model name hpdl knows)")
      ->capture_default_str();
  sc->add_option("--batch", a->batch, "Per-rank batch size")->capture_default_str();
  sc->add_option("--net", a->net, "Interconnect preset: ib-edr, ib-hdr, ib-ndr, slingshot, omnipath, eth-25g, eth-100g")
      ->capture_default_str();
  sc->add_option("--max-ranks", a->max_ranks, "Largest rank count in the table (powers of two up to it)")
      ->capture_default_str();
  sc->add_option("--overlap", a->overlap, "Fraction h of backward that can hide communication, in [0, 1]")
      ->capture_default_str();
  sc->add_option("--steps", a->steps, "Timed steps (the median is used)")->capture_default_str();
  sc->add_option("--warmup", a->warmup, "Untimed warm-up steps")->capture_default_str();
  sc->add_flag("--bf16-wire", a->bf16_wire, "Count gradients as bfloat16 on the wire (DataParallel's bf16_wire)");
  sc->callback([a] { run_scaling(*a); });
}

}  // namespace hpdl::cli
