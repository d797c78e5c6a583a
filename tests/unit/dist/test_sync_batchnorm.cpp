// Synchronized batch norm in one process (a world of one rank): the
// cross-replica path must reproduce plain batch norm exactly in forward,
// backward and running statistics, and convert/revert must find every BN
// layer. The multi-rank equivalence is tested in tests/mpi/test_sync_batchnorm.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/core/random.h"
#include "hpdl/dist/sync_batchnorm.h"
#include "hpdl/nn/layers.h"
#include "hpdl/ops/ops.h"

namespace hpdl::dist {
namespace {

double max_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

TEST(SyncBatchNorm, OneReplicaEqualsPlainBatchNorm) {
  Generator g(3);
  Tensor x0 = add(mul(Tensor::randn({5, 3, 4, 4}, g), 2.0), 1.5);
  Tensor w = Tensor::randn({5, 3, 4, 4}, g);  // a fixed upstream gradient via sum(y * w)
  auto plain = std::make_shared<nn::BatchNorm2d>(3), synced = std::make_shared<nn::BatchNorm2d>(3);
  plain->weight.copy_(Tensor::from_vector<float>({0.5f, 1.5f, -1.f}, {3}));
  synced->weight.copy_(plain->weight);
  EXPECT_EQ(convert_sync_batchnorm(*synced, Communicator::world()), 1);
  int calls = 0;
  auto inner = synced->cross_replica_sum;
  synced->cross_replica_sum = [&](Tensor& t) { ++calls, inner(t); };
  Tensor xa = x0.detach(), xb = x0.detach();
  xa.set_requires_grad(true);
  xb.set_requires_grad(true);
  Tensor ya = plain->forward(xa), yb = synced->forward(xb);
  EXPECT_LT(max_diff(ya, yb), 1e-5);
  sum(mul(ya, w)).backward();
  sum(mul(yb, w)).backward();
  EXPECT_EQ(calls, 2) << "one reduction in forward, one in backward";
  EXPECT_LT(max_diff(xa.grad(), xb.grad()), 1e-5);
  EXPECT_LT(max_diff(plain->weight.grad(), synced->weight.grad()), 1e-4);
  EXPECT_LT(max_diff(plain->bias.grad(), synced->bias.grad()), 1e-4);
  EXPECT_LT(max_diff(plain->running_mean, synced->running_mean), 1e-6);
  EXPECT_LT(max_diff(plain->running_var, synced->running_var), 1e-6);
  // Eval mode ignores the reducer.
  synced->eval();
  calls = 0;
  synced->forward(x0);
  EXPECT_EQ(calls, 0);
}

TEST(SyncBatchNorm, TwoIdenticalReplicasEqualOneWithTheMultiReplicaPath) {
  // A reducer that doubles every sum acts as a second replica holding the same
  // batch and upstream gradient: global mean, biased variance, dx, dgamma and
  // dbeta equal plain BN's, but the op takes its multi-replica path
  // (re-normalization and the affine dx correction); the unbiased running
  // variance uses 2M - 1 instead of M - 1.
  Generator g(5);
  Tensor x0 = add(Tensor::randn({3, 4, 5}, g), -0.7);
  Tensor w = Tensor::randn({3, 4, 5}, g);
  nn::BatchNorm1d plain(4), synced(4);
  plain.weight.copy_(Tensor::from_vector<float>({1.f, -2.f, 0.3f, 1.1f}, {4}));
  synced.weight.copy_(plain.weight);
  synced.cross_replica_sum = [](Tensor& t) { t.copy_(mul(t, 2.0)); };
  Tensor xa = x0.detach(), xb = x0.detach();
  xa.set_requires_grad(true);
  xb.set_requires_grad(true);
  Tensor ya = plain.forward(xa), yb = synced.forward(xb);
  EXPECT_LT(max_diff(ya, yb), 1e-5);
  sum(mul(ya, w)).backward();
  sum(mul(yb, w)).backward();
  EXPECT_LT(max_diff(xa.grad(), xb.grad()), 1e-5);
  EXPECT_LT(max_diff(plain.weight.grad(), synced.weight.grad()), 1e-4);
  EXPECT_LT(max_diff(plain.bias.grad(), synced.bias.grad()), 1e-4);
  EXPECT_LT(max_diff(plain.running_mean, synced.running_mean), 1e-6);
  // running_var = 0.9 + 0.1 * var_b * K/(K-1): M = 15 here, 2M = 30 there.
  auto vp = plain.running_var.to_vector<double>(), vs = synced.running_var.to_vector<double>();
  for (size_t c = 0; c < vp.size(); ++c) {
    const double var_b = (vp[c] - 0.9) / 0.1 * 14.0 / 15.0;
    EXPECT_NEAR(vs[c], 0.9 + 0.1 * var_b * 30.0 / 29.0, 1e-6) << "channel " << c;
  }
}

TEST(SyncBatchNorm, ConvertFindsNestedLayersAndRevertRemovesThem) {
  auto inner = std::make_shared<nn::Sequential>();
  inner->push_back(std::make_shared<nn::Flatten>());
  inner->push_back(std::make_shared<nn::BatchNorm1d>(8));
  auto holder = std::make_shared<nn::Sequential>();
  holder->push_back(std::make_shared<nn::Conv2d>(1, 2));
  holder->push_back(std::make_shared<nn::BatchNorm2d>(2));
  holder->push_back(inner);
  EXPECT_EQ(convert_sync_batchnorm(*holder, Communicator::world()), 2);
  EXPECT_EQ(revert_sync_batchnorm(*holder), 2);
}

TEST(SyncBatchNorm, ReducerThatBreaksTheMessageIsAnError) {
  nn::BatchNorm1d bn(2);
  bn.cross_replica_sum = [](Tensor& t) { t = Tensor::zeros({1}, DType::f64); };
  bn.train();
  Tensor x = Tensor::ones({4, 2});
  try {
    bn.forward(x);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reducer changed the statistics"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hpdl::dist
