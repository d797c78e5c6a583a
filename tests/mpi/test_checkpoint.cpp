// Activation checkpointing under DataParallel: the parameters' gradients
// arrive during the recompute's backward, so the bucket hooks must still fire
// during backward, and checkpointed training must end bit for bit where plain
// data-parallel training does (a BatchNorm model, so the buffers count too).
#include <gtest/gtest.h>

#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

nn::ModulePtr make_net() {
  nn::models::ModelConfig mc;
  mc.in_channels = 1, mc.height = mc.width = 8, mc.seed = 42;
  return nn::models::make_model("resnet20", mc);
}

struct TrainResult {
  std::vector<float> state;
  int launched = 0, buckets = 0;
};

TrainResult train(bool ckpt) {
  auto model = make_net();
  if (ckpt) nn::models::enable_activation_checkpointing(*model);
  DataParallelOptions opts;
  opts.bucket_bytes = 64 * 1024;  // several buckets
  TrainResult out;
  {
    DataParallel dp(*model, W(), opts);
    optim::SGDOptions o;
    o.lr = 0.05, o.momentum = 0.9;
    optim::SGD opt(optim::param_specs(*model), o);
    const int64_t B = 3;
    for (int k = 0; k < 3; ++k) {
      Generator g(1000 + 10 * k + W().rank());  // each rank its own shard
      Tensor x = Tensor::randn({B, 1, 8, 8}, g);
      std::vector<int64_t> y(B);
      for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 10);
      dp.zero_grad();
      cross_entropy(model->forward(x), Tensor::from_vector(y, {B})).backward();
      dp.finish();
      opt.step();
    }
    out.launched = dp.launched_during_backward();
    out.buckets = dp.num_buckets();
  }
  for (auto& [_, t] : model->state_dict())
    if (t.dtype() == DType::f32) {
      auto v = t.to_vector<float>();
      out.state.insert(out.state.end(), v.begin(), v.end());
    }
  return out;
}

TEST(CheckpointDataParallel, SameAsPlainAndBucketsLaunchDuringBackward) {
  ASSERT_GE(W().size(), 2);
  TrainResult plain = train(false), ckpt = train(true);
  EXPECT_GT(ckpt.buckets, 1);
  EXPECT_EQ(ckpt.launched, ckpt.buckets) << "every bucket filled during the recompute's backward";
  EXPECT_EQ(plain.launched, plain.buckets);
  ASSERT_EQ(plain.state.size(), ckpt.state.size());
  for (size_t i = 0; i < plain.state.size(); ++i)
    ASSERT_EQ(plain.state[i], ckpt.state[i]) << "rank " << W().rank() << " differs at " << i;
}

}  // namespace
}  // namespace hpdl::dist
