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
#include <cxxabi.h>
#include <execinfo.h>
#include <sys/time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <map>
#include <set>
#include <vector>
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

// Host sampling profiler (HPDL_E2E_SAMPLE=1): SIGPROF every millisecond of
// process CPU time records the call stack; at exit the frames are symbolized
// (dynamic symbols: libhpdl's exported functions) and counted, self and
// inclusive. Shows where the launching thread spends its time.
namespace sampler {
constexpr int kDepth = 24, kMax = 200000;
void* g_frames[kMax][kDepth];
int g_depth[kMax];
std::atomic<int> g_n{0};
void on_prof(int) {
  int i = g_n.fetch_add(1);
  if (i < kMax) g_depth[i] = backtrace(g_frames[i], kDepth);
}
void start() {
  void* warm[2];
  backtrace(warm, 2);  // loads the unwinder now: backtrace in the handler then does not allocate
  std::signal(SIGPROF, on_prof);
  itimerval t{{0, 1000}, {0, 1000}};
  setitimer(ITIMER_PROF, &t, nullptr);
}
std::string clean(const char* sym) {
  std::string s = sym;  // "lib.so(mangled+0x12) [0x...]"
  auto a = s.find('('), b = s.find('+', a == std::string::npos ? 0 : a);
  if (a == std::string::npos || b == std::string::npos || b == a + 1) return s.substr(0, s.find(' '));
  std::string m = s.substr(a + 1, b - a - 1);
  int st = 0;
  char* d = abi::__cxa_demangle(m.c_str(), nullptr, nullptr, &st);
  std::string out = st == 0 && d ? d : m;
  std::free(d);
  return out.substr(0, 110);
}
void report(const char* label) {
  itimerval off{};
  setitimer(ITIMER_PROF, &off, nullptr);
  const int n = std::min(g_n.load(), kMax);
  std::map<std::string, int> self, incl;
  for (int i = 0; i < n; ++i) {
    char** syms = backtrace_symbols(g_frames[i], g_depth[i]);
    std::set<std::string> seen;
    for (int k = 2; k < g_depth[i]; ++k) {  // 0-1: the handler and the signal trampoline
      std::string f = clean(syms[k]);
      if (k == 2) ++self[f];
      if (seen.insert(f).second) ++incl[f];
    }
    std::free(syms);
  }
  auto top = [&](const std::map<std::string, int>& m, const char* what) {
    std::vector<std::pair<int, std::string>> v;
    for (auto& [k, c] : m) v.push_back({c, k});
    std::sort(v.rbegin(), v.rend());
    std::fprintf(stderr, "# host samples (%s), %s, %d samples of 1 ms CPU time\n", label, what, n);
    for (size_t i = 0; i < v.size() && i < 40; ++i)
      std::fprintf(stderr, "%6.1f%%  %s\n", 100.0 * v[i].first / std::max(1, n), v[i].second.c_str());
  };
  top(self, "self");
  top(incl, "inclusive");
  g_n = 0;
}
}  // namespace sampler

static double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

static void bench(const std::string& name, int64_t batch, const std::string& math) {
  const Device gpu{DeviceType::cuda, 0};
  cuda::reset_peak_memory();  // the peer resets torch's peak per case too
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
  // HPDL_E2E_WARMUP / HPDL_E2E_STEPS override the counts (a profiler run times one step); the
  // timed steps are bracketed by cuda::profiler_start/stop for ncu --profile-from-start off.
  auto env_int = [](const char* name, int fallback) {
    const char* v = std::getenv(name);
    return v ? std::atoi(v) : fallback;
  };
  const int warmup = env_int("HPDL_E2E_WARMUP", 5), steps = env_int("HPDL_E2E_STEPS", big ? 20 : 50);
  auto forward_loss = [&] {  // zero_grad, then forward and loss under the case's autocast
    opt.zero_grad();
    AutocastScope ac(DType::bf16, math == "bf16" || math == "bf16nchw");
    return cross_entropy(model->forward(x), y);
  };
  auto step = [&] {
    Tensor loss = forward_loss();
    loss.backward();
    opt.step();
    return loss;
  };
  Tensor loss;
  // Warm-up: at least `warmup` steps and `warmup_s` seconds, so that the GPU's clocks have ramped up
  // from idle whatever ran before in this process (a fresh process used to time the first second of
  // a cold GPU: resnet50 b128 bf16 measured 2,655-2,818 img/s fresh, 3,725 after other cases).
  const double warmup_s = std::getenv("HPDL_E2E_WARMUP_S") ? std::atof(std::getenv("HPDL_E2E_WARMUP_S")) : 2.0;
  int warmed = 0;
  for (auto w0 = Clock::now(); warmed < warmup || secs(w0, Clock::now()) < warmup_s; ++warmed) {
    loss = step();
    if (warmed + 1 >= warmup) cuda::synchronize();  // the clock then measures executed work
  }
  if (std::getenv("HPDL_E2E_PHASES")) {  // forward, backward, update timed apart (a synchronize after each)
    double tf = 0, tb = 0, tu = 0;
    for (int i = 0; i < steps; ++i) {
      auto a = Clock::now();
      Tensor l = forward_loss();
      cuda::synchronize();
      auto b = Clock::now();
      l.backward();
      cuda::synchronize();
      auto c2 = Clock::now();
      opt.step();
      cuda::synchronize();
      auto d = Clock::now();
      tf += secs(a, b), tb += secs(b, c2), tu += secs(c2, d);
    }
    std::printf("{\"model\": \"%s\", \"batch\": %lld, \"math\": \"%s\", \"phase_ms\": {\"forward\": %.2f, "
                "\"backward\": %.2f, \"update\": %.2f}}\n",
                name.c_str(), static_cast<long long>(batch), math.c_str(), 1e3 * tf / steps, 1e3 * tb / steps,
                1e3 * tu / steps);
    return;
  }
  cuda::synchronize();
  const double first_loss = loss.item();
  const bool sample = std::getenv("HPDL_E2E_SAMPLE") != nullptr;
  // HPDL_E2E_REPEATS timed windows of `steps` steps each; the reported rate is their median, with
  // the min and max beside it (the peer does the same).
  const int repeats = std::max(1, env_int("HPDL_E2E_REPEATS", 3));
  const int64_t mallocs_before = cuda::allocator_stats().device_mallocs;
  std::vector<double> walls, host_fracs;
  if (sample) sampler::start();
  cuda::profiler_start();
  for (int r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < steps; ++i) loss = step();
    auto t_launched = Clock::now();
    cuda::synchronize();
    auto t1 = Clock::now();
    walls.push_back(secs(t0, t1));
    host_fracs.push_back(secs(t0, t_launched) / walls.back());
  }
  cuda::profiler_stop();
  if (sample) sampler::report((name + " " + math).c_str());
  std::vector<double> sorted = walls;
  std::sort(sorted.begin(), sorted.end());
  const double wall = sorted[sorted.size() / 2], wall_min = sorted.front(), wall_max = sorted.back();
  const double host_fraction =
      host_fracs[static_cast<size_t>(std::find(walls.begin(), walls.end(), wall) - walls.begin())];
  const int64_t timed_mallocs = cuda::allocator_stats().device_mallocs - mallocs_before;
  auto st = cuda::allocator_stats();
  const cuda::GraphConvStats gs = cuda::graph_conv_stats();
  std::printf(
      "{\"framework\": \"hpdl\", \"model\": \"%s\", \"batch\": %lld, "
      "\"math\": \"%s\", \"conv_search\": %s, \"conv_graph\": %s, \"fused_residual\": %s, "
      "\"graph_plans\": %lld, \"graph_unsupported\": %lld, "
      "\"train_images_per_s\": %.1f, \"train_images_per_s_min\": %.1f, \"train_images_per_s_max\": %.1f, "
      "\"repeats\": %d, \"warmup_steps\": %d, \"timed_cuda_mallocs\": %lld, \"step_ms\": %.3f, "
      "\"host_fraction\": %.3f, \"loss\": %.4f, "
      "\"first_loss\": %.4f, \"gpu_mem_allocated_mb\": %.0f, "
      "\"gpu_mem_cached_mb\": %.0f, \"gpu_mem_max_allocated_mb\": %.0f}\n",
      name.c_str(), static_cast<long long>(batch), math.c_str(), cuda::conv_search() ? "true" : "false",
      cuda::conv_graph() ? "true" : "false", cuda::fused_residual() ? "true" : "false",
      static_cast<long long>(gs.plans_built),
      static_cast<long long>(gs.unsupported),
      batch * steps / wall, batch * steps / wall_max, batch * steps / wall_min, repeats, warmed,
      static_cast<long long>(timed_mallocs), 1e3 * wall / steps, host_fraction, loss.item(), first_loss, st.allocated_bytes / 1048576.0,
      st.cached_bytes / 1048576.0, st.peak_allocated_bytes / 1048576.0);
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
