// End-to-end GPU training throughput: whole SGD-momentum steps (zero_grad,
// forward, cross-entropy, backward, update) of resnet20 on 1x28x28 and
// resnet50 on 3x224x224, random data resident on the GPU, timed between two
// cuda::synchronize() calls after warm-up, as bench/gpu/torch_gpu_peer.py
// times PyTorch. Also reports how much of the wall time the host spent
// launching (host-bound when close to 1). Prints one JSON line per case.
// Run: gpu_e2e [cases] [maths]   cases "resnet20:128,resnet50:64", maths from
// fp32 (strict), tf32 (cuda::set_allow_tf32), bf16 (AutocastScope: conv and
// matmul on bfloat16 tensor cores, activations and their gradients bfloat16,
// batch norm statistics, loss and master weights float32; as the peer's
// torch.autocast; activations channels-last, as the peer's channels_last),
// bf16nchw (the same with row-major NCHW activations), e.g. "fp32,bf16".
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/core/random.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/resnet50.h"
#include "hpdl/ops/autocast.h"
#include "hpdl/ops/loss.h"
#include "hpdl/optim/optimizers.h"

using namespace hpdl;
using Clock = std::chrono::steady_clock;

static double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

static void bench(const std::string& name, int64_t batch, const std::string& math) {
  const Device gpu{DeviceType::cuda, 0};
  const bool big = name == "resnet50";
  const int64_t c = big ? 3 : 1, hw = big ? 224 : 28, classes = big ? 1000 : 10;
  nn::ModulePtr model = big ? nn::models::resnet50(c, classes, hw, hw) : nn::models::resnet20(c, classes);
  model->to(gpu);
  Generator gen(0);
  Tensor x = Tensor::randn({batch, c, hw, hw}, gen).to(gpu);
  std::vector<int64_t> labels(static_cast<size_t>(batch));
  for (auto& l : labels) l = static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(classes));
  Tensor y = Tensor::from_vector(labels, {batch}).to(gpu);
  optim::SGDOptions o;
  o.lr = 0.01;
  o.momentum = 0.9;
  optim::SGD opt(optim::param_specs(*model), o);
  model->train();
  const int warmup = 5, steps = big ? 20 : 50;
  auto step = [&] {
    opt.zero_grad();
    Tensor loss;
    {
      AutocastScope ac(DType::bf16, math == "bf16" || math == "bf16nchw");
      loss = cross_entropy(model->forward(x), y);
    }
    loss.backward();
    opt.step();
    return loss;
  };
  Tensor loss;
  for (int i = 0; i < warmup; ++i) loss = step();
  cuda::synchronize();
  const double first_loss = loss.item();
  auto t0 = Clock::now();
  for (int i = 0; i < steps; ++i) loss = step();
  auto t_launched = Clock::now();
  cuda::synchronize();
  auto t1 = Clock::now();
  const double wall = secs(t0, t1);
  auto st = cuda::allocator_stats();
  std::printf(
      "{\"framework\": \"hpdl\", \"model\": \"%s\", \"batch\": %lld, "
      "\"math\": \"%s\", "
      "\"train_images_per_s\": %.1f, \"step_ms\": %.3f, "
      "\"host_fraction\": %.3f, \"loss\": %.4f, "
      "\"first_loss\": %.4f, \"gpu_mem_allocated_mb\": %.0f, "
      "\"gpu_mem_cached_mb\": %.0f}\n",
      name.c_str(), static_cast<long long>(batch), math.c_str(), batch * steps / wall, 1e3 * wall / steps,
      secs(t0, t_launched) / wall, loss.item(), first_loss, st.allocated_bytes / 1048576.0,
      st.cached_bytes / 1048576.0);
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  if (!cuda::available()) {
    std::puts("{\"error\": \"no CUDA device\"}");
    return 1;
  }
  std::string cases = argc > 1 ? argv[1] : "resnet20:128,resnet20:512,resnet50:64";
  std::string maths = argc > 2 ? argv[2] : "fp32";
  std::stringstream ms(maths);
  std::string math;
  while (std::getline(ms, math, ',')) {
    cuda::set_allow_tf32(math == "tf32");
    set_autocast_channels_last(math != "bf16nchw");
    std::stringstream ss(cases);
    std::string item;
    while (std::getline(ss, item, ',')) {
      auto colon = item.find(':');
      std::string name = item.substr(0, colon);
      int64_t batch = colon == std::string::npos ? 128 : std::atoll(item.c_str() + colon + 1);
      try {
        bench(name, batch, math);
      } catch (const std::exception& e) {
        std::string what = e.what();
        for (char& ch : what)
          if (ch == '"' || ch == '\\' || ch == '\n') ch = '\'';
        std::printf(
            "{\"framework\": \"hpdl\", \"model\": \"%s\", \"batch\": "
            "%lld, \"math\": \"%s\", \"error\": \"%s\"}\n",
            name.c_str(), static_cast<long long>(batch), math.c_str(), what.c_str());
        std::fflush(stdout);
        cuda::empty_cache();
      }
    }
  }
  return 0;
}
