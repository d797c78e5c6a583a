// LSTM/GRU training-step throughput (forward + backward of one recurrent layer,
// every gradient computed), the hpdl side of bench/e2e/rnn_run.sh; the PyTorch
// peer is rnn_torch_peer.py with the same configs. Prints one JSON line per
// config: samples/s (sequences per second) of each timed repetition.
// Usage: hpdl_rnn_bench [configs=lstm_small,lstm_big] [reps=3] [min_seconds=1.0] [precision=fp32|bf16]
// bf16: the forward under AutocastScope(bf16), so on the CPU the gate GEMMs read bfloat16
// operands (design decision 71); the JSON then also has "precision" and sequences per CPU second.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "hpdl/nn/rnn.h"
#include "hpdl/ops/autocast.h"
#include "hpdl/ops/ops.h"

using namespace hpdl;

struct Cfg {
  bool lstm;
  int64_t T, N, I, H, L;
};

// Kept in step with rnn_torch_peer.py.
const std::map<std::string, Cfg> kConfigs = {
    {"lstm_small", {true, 28, 128, 28, 128, 1}},  // the Fashion-MNIST row classifier's layer
    {"lstm_big", {true, 50, 64, 256, 512, 1}},
    {"gru_small", {false, 28, 128, 28, 128, 1}},
    {"lstm_2layer", {true, 28, 128, 28, 128, 2}},
};

int main(int argc, char** argv) {
  std::string names = argc > 1 ? argv[1] : "lstm_small,lstm_big";
  const int reps = argc > 2 ? std::stoi(argv[2]) : 3;
  const double min_s = argc > 3 ? std::stod(argv[3]) : 1.0;
  const bool bf16 = argc > 4 && std::string(argv[4]) == "bf16";
  auto cpu_s = [] {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  std::stringstream ss(names);
  std::string name;
  while (std::getline(ss, name, ',')) {
    auto it = kConfigs.find(name);
    if (it == kConfigs.end()) {
      std::fprintf(stderr, "unknown config %s\n", name.c_str());
      return 2;
    }
    const Cfg& c = it->second;
    Generator gen(1);
    RnnOptions o;
    o.num_layers = c.L;
    std::shared_ptr<nn::RNNBase> layer;
    if (c.lstm)
      layer = std::make_shared<nn::LSTM>(c.I, c.H, o, gen);
    else
      layer = std::make_shared<nn::GRU>(c.I, c.H, o, gen);
    Tensor x = Tensor::randn({c.T, c.N, c.I}, gen);
    Tensor g = Tensor::randn({c.T, c.N, c.H}, gen);
    auto step = [&] {
      layer->zero_grad();
      Tensor y;
      {
        AutocastScope ac(DType::bf16, bf16);
        y = layer->forward(x);
      }
      sum(mul(y, g)).backward();
    };
    for (int i = 0; i < 2; ++i) step();
    std::vector<double> rates, cpu_rates;
    for (int r = 0; r < reps; ++r) {
      int n = 0;
      auto t0 = std::chrono::steady_clock::now();
      const double c0 = cpu_s();
      double el = 0;
      do {
        step();
        ++n;
        el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } while (el < min_s);
      rates.push_back(static_cast<double>(c.N) * n / el);
      cpu_rates.push_back(static_cast<double>(c.N) * n / (cpu_s() - c0));
    }
    std::printf("{\"framework\": \"hpdl\", \"config\": \"%s\", \"samples_per_s\": [", name.c_str());
    for (size_t i = 0; i < rates.size(); ++i) std::printf("%s%.2f", i ? ", " : "", rates[i]);
    std::printf("], \"precision\": \"%s\", \"samples_per_cpu_s\": [", bf16 ? "bf16" : "fp32");
    for (size_t i = 0; i < cpu_rates.size(); ++i) std::printf("%s%.2f", i ? ", " : "", cpu_rates[i]);
    std::printf("]}\n");
    std::fflush(stdout);
  }
  return 0;
}
