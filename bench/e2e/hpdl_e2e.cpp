// End-to-end training and inference throughput of the model zoo at batch 128,
// timed exactly as bench/e2e/torch_peer.py times PyTorch: the same models, SGD
// with momentum, cross-entropy, random Fashion-MNIST-shaped batches, warm-up
// steps first, then whole steps (zero_grad, forward, loss, backward, update).
// resnet50 takes ImageNet-shaped batches instead: 3x224x224, 1000 classes,
// batch 8. precision bf16: forward and loss (and inference) inside
// AutocastScope(bf16), on the CPU bfloat16 operands for convolutions, linear
// layers and matmuls with float32 accumulation (design decision 69), as the
// peer's torch.autocast("cpu", dtype=torch.bfloat16). Prints one JSON line per model.
// Run: build/bench/hpdl_e2e [threads] [models] [precision fp32|bf16]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "hpdl/autograd/node.h"
#include "hpdl/core/random.h"
#include "hpdl/core/storage.h"
#include "hpdl/core/threading.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/autocast.h"
#include "hpdl/ops/loss.h"
#include "hpdl/optim/optimizers.h"

using namespace hpdl;
using Clock = std::chrono::steady_clock;

// The process's peak resident set so far (Linux reports kilobytes).
static double max_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

static std::string bench_model(const std::string& name, int64_t batch, int steps, int warmup, bool bf16) {
  nn::models::ModelConfig cfg;
  cfg.hidden = {512, 256};  // the mlp of examples/fashion_mnist/mlp.toml and torch_peer.py
  if (name == "resnet50") cfg.in_channels = 3, cfg.height = cfg.width = 224, cfg.num_classes = 1000;
  auto model = nn::models::make_model(name, cfg);
  Generator gen(0);
  Tensor x = Tensor::randn({batch, cfg.in_channels, cfg.height, cfg.width}, gen);
  std::vector<int64_t> labels(batch);
  for (int64_t i = 0; i < batch; ++i) labels[i] = static_cast<int64_t>(gen.next_u64() % cfg.num_classes);
  Tensor y = Tensor::from_vector(labels, {batch});
  optim::SGDOptions o;
  o.lr = 0.01;
  o.momentum = 0.9;
  optim::SGD opt(optim::param_specs(*model), o);
  model->train();
  Clock::time_point t0;
  for (int i = 0; i < warmup + steps; ++i) {
    if (i == warmup) t0 = Clock::now(), reset_cpu_memory_peak();
    opt.zero_grad();
    Tensor loss;
    {
      AutocastScope ac(DType::bf16, bf16);
      loss = cross_entropy(model->forward(x), y);
    }
    loss.backward();
    opt.step();
  }
  double train = batch * steps / std::chrono::duration<double>(Clock::now() - t0).count();
  const double peak_mb = static_cast<double>(cpu_memory_stats().peak_live_bytes) / (1 << 20);
  model->eval();
  {
    NoGradGuard ng;
    AutocastScope ac(DType::bf16, bf16);
    for (int i = 0; i < warmup + steps; ++i) {
      if (i == warmup) t0 = Clock::now();
      model->forward(x);
    }
  }
  double infer = batch * steps / std::chrono::duration<double>(Clock::now() - t0).count();
  char line[512];
  std::snprintf(line, sizeof line,
                "{\"framework\": \"hpdl\", \"model\": \"%s\", \"precision\": \"%s\", \"batch\": %lld, \"threads\": %d, "
                "\"train_samples_per_s\": %.2f, \"infer_samples_per_s\": %.2f, \"train_peak_tensor_mb\": %.0f, "
                "\"max_rss_mb\": %.0f}",
                name.c_str(), bf16 ? "bf16" : "fp32", static_cast<long long>(batch), num_threads(), train, infer, peak_mb, max_rss_mb());
  return line;
}

int main(int argc, char** argv) {
  if (argc > 1) set_num_threads(std::atoi(argv[1]));
  // Channels-last activations on the CPU as the trainer's default (train.channels_last = true,
  // design decision 75); HPDL_CHANNELS_LAST=0 for row-major activations.
  const char* cl = std::getenv("HPDL_CHANNELS_LAST");
  set_cpu_channels_last(!(cl && std::string(cl) == "0"));
  std::string models = argc > 2 ? argv[2] : "mlp,lenet5,resnet20";
  const std::string precision = argc > 3 ? argv[3] : "fp32";
  if (precision != "fp32" && precision != "bf16") {
    std::fprintf(stderr, "hpdl_e2e: precision must be fp32 or bf16, got %s\n", precision.c_str());
    return 2;
  }
  std::stringstream ss(models);
  std::string name;
  while (std::getline(ss, name, ',')) {
    const bool big = name == "resnet50";
    int steps = big ? 2 : name == "resnet20" ? 10 : (name == "lenet5" ? 100 : 200);
    int warmup = big ? 1 : name == "resnet20" ? 3 : 10;
    std::puts(bench_model(name, big ? 8 : 128, steps, warmup, precision == "bf16").c_str());
    std::fflush(stdout);
  }
  return 0;
}
