// ViT-tiny on Fashion-MNIST, one epoch, timed exactly as bench/e2e/vit_torch_peer.py
// times PyTorch: the same architecture (patch 4, dim 64, depth 4, heads 4, mlp
// ratio 2, pre-norm, GELU), pixels scaled to [-1, 1], the 60,000 training
// images in file order in batches of 128 (the last partial batch dropped),
// AdamW (lr 1e-3, no weight decay), then test accuracy on the 10,000 test
// images in eval mode. Prints one JSON line: training samples/s (whole steps:
// zero_grad, forward, loss, backward, update) and test accuracy.
// Run: build/bench/hpdl_vit_bench [threads=2] [max_steps=0 (the epoch)]
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "hpdl/autograd/node.h"
#include "hpdl/core/threading.h"
#include "hpdl/data/readers.h"
#include "hpdl/gan/dcgan.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

using namespace hpdl;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc > 1) set_num_threads(std::atoi(argv[1]));
  const int64_t max_steps = argc > 2 ? std::atoll(argv[2]) : 0;
  Tensor ytr, yte;
  Tensor xtr = gan::load_fashion_mnist_images(data::kFashionMnistDir, true, 0, &ytr);
  Tensor xte = gan::load_fashion_mnist_images(data::kFashionMnistDir, false, 0, &yte);
  nn::models::VitOptions o;  // patch 4, dim 64, depth 4, heads 4, mlp ratio 2
  o.seed = 0;
  nn::models::VisionTransformer vit(o);
  optim::AdamWOptions ao;
  ao.lr = 1e-3;
  ao.weight_decay = 0.0;
  optim::AdamW opt(optim::param_specs(vit), ao);
  const int64_t B = 128;
  int64_t steps = xtr.dim(0) / B;
  if (max_steps > 0) steps = std::min(steps, max_steps);
  vit.train();
  double loss_sum = 0;
  auto t0 = Clock::now();
  for (int64_t s = 0; s < steps; ++s) {
    opt.zero_grad();
    Tensor loss = cross_entropy(vit.forward(xtr.slice(0, s * B, (s + 1) * B)), ytr.slice(0, s * B, (s + 1) * B));
    loss.backward();
    opt.step();
    if (s + 20 >= steps) loss_sum += loss.item();  // the mean over the last 20 steps
  }
  const double train_s = std::chrono::duration<double>(Clock::now() - t0).count();
  vit.eval();
  int64_t right = 0;
  {
    NoGradGuard ng;
    for (int64_t i = 0; i < xte.dim(0); i += 500) {
      auto pred = argmax(vit.forward(xte.slice(0, i, i + 500)), 1).to_vector<int64_t>();
      auto want = yte.slice(0, i, i + 500).to_vector<int64_t>();
      for (size_t j = 0; j < pred.size(); ++j) right += pred[j] == want[j];
    }
  }
  std::printf("{\"framework\": \"hpdl\", \"model\": \"vit_tiny\", \"threads\": %d, \"steps\": %lld, "
              "\"train_samples_per_s\": %.2f, \"train_s\": %.2f, \"final_loss\": %.4f, \"test_accuracy\": %.4f, "
              "\"params\": %lld}\n",
              num_threads(), static_cast<long long>(steps), steps * B / train_s, train_s,
              loss_sum / std::min<int64_t>(20, steps), static_cast<double>(right) / xte.dim(0),
              static_cast<long long>(vit.num_parameters()));
  return 0;
}
