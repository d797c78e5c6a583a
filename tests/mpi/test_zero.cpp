// ShardedOptimizer (ZeRO-1) across real ranks: N steps sharded must equal N
// steps unsharded bit for bit (parameters and the gathered state) with
// SGD-momentum, AdamW, LARS and LAMB and global-norm clipping; each rank must
// hold state for its own parameters only; and checkpoints must load across
// sharded <-> unsharded and onto half the ranks (elastic restart).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/zero.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/factory.h"
#include "tests/mpi/mpi_test_util.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }
using test::same_bytes;
using test::through_file;
using test::expect_error;

// Seven parameters of different sizes (biases, a 3x... last layer), so the partition is uneven.
nn::ModulePtr make_net() { return nn::models::mlp(8, {32, 16, 12}, 3, "tanh", 0.0, /*seed=*/7); }

optim::OptimizerConfig opt_config(const std::string& name) {
  optim::OptimizerConfig c;
  c.name = name;
  c.momentum = 0.9;
  c.lr = name == "sgd" ? 0.1 : name == "lars" ? 2.0 : 1e-2;
  c.weight_decay = name == "sgd" ? 1e-3 : 1e-2;
  return c;
}

// One data-parallel training run: a model, DataParallel over `comm`, and a plain or sharded optimizer.
struct TrainRun {
  nn::ModulePtr model;
  std::unique_ptr<DataParallel> dp;
  std::unique_ptr<optim::Optimizer> opt;
  Communicator* comm = nullptr;
};

// stage 2: a sharded optimizer and sharded gradients (DataParallelOptions::grad_owners).
TrainRun make_run(const std::string& opt_name, bool sharded, Communicator& comm, int stage = 1) {
  TrainRun r;
  r.comm = &comm;
  r.model = make_net();
  const auto cfg = opt_config(opt_name);
  auto make = [cfg](std::vector<optim::ParamSpec> specs) { return optim::make_optimizer(std::move(specs), cfg); };
  if (sharded) r.opt = std::make_unique<ShardedOptimizer>(optim::param_specs(*r.model), make, comm);
  else r.opt = make(optim::param_specs(*r.model));
  DataParallelOptions o;
  o.bucket_bytes = 1024;
  if (sharded && stage == 2) o.grad_owners = dynamic_cast<ShardedOptimizer&>(*r.opt).owners_of(r.model->parameters());
  r.dp = std::make_unique<DataParallel>(*r.model, comm, o);
  return r;
}

// Steps [first, first + steps): the global batch of step k is the same on every rank count, split
// over the ranks of the run's communicator; gradients clipped to a global norm that binds.
void train(TrainRun& r, int first, int steps) {
  const int n = r.comm->size(), rank = r.comm->rank();
  const int64_t per_rank = 12 / n;
  for (int k = first; k < first + steps; ++k) {
    Generator g(500 + k);
    Tensor x = Tensor::randn({12, 8}, g);
    std::vector<int64_t> y(12);
    for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
    Tensor ys = Tensor::from_vector(y, {12}).slice(0, rank * per_rank, (rank + 1) * per_rank);
    r.dp->zero_grad();
    cross_entropy(r.model->forward(x.slice(0, rank * per_rank, (rank + 1) * per_rank)), ys).backward();
    r.dp->finish();
    if (r.dp->shards_gradients())
      dynamic_cast<ShardedOptimizer&>(*r.opt).clip_grad_norm(0.5);
    else
      optim::clip_grad_norm(r.model->parameters(), 0.5);
    r.opt->step();
  }
}

std::vector<float> flat_weights(nn::Module& m) {
  std::vector<float> out;
  for (auto& p : m.parameters()) {
    auto v = p.to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

void expect_same_state(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (auto& [k, t] : a) {
    auto it = b.find(k);
    ASSERT_NE(it, b.end()) << "missing key " << k;
    EXPECT_TRUE(same_bytes(t, it->second)) << "state '" << k << "' differs";
  }
}

void expect_same_weights(nn::Module& a, nn::Module& b) {
  auto wa = flat_weights(a), wb = flat_weights(b);
  ASSERT_EQ(wa.size(), wb.size());
  EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)), 0) << "weights differ on rank " << W().rank();
}

TEST(ZeroPartition, GreedyBalancedWholeAndDeterministic) {
  // Largest first to the least loaded rank, ties to the lowest rank: worked by hand.
  EXPECT_EQ(partition_params({4, 3, 3, 2, 2, 2}, 2), (std::vector<int>{0, 1, 1, 0, 0, 1}));
  EXPECT_EQ(partition_params({5, 1}, 4), (std::vector<int>{0, 1}));  // ranks 2 and 3 own nothing
  EXPECT_EQ(partition_params({1, 2, 3}, 1), (std::vector<int>{0, 0, 0}));
  EXPECT_THROW(partition_params({1}, 0), Error);
  EXPECT_THROW(partition_params({1, -1}, 2), Error);
}

class ZeroOptimizers : public ::testing::TestWithParam<std::string> {};

TEST_P(ZeroOptimizers, ShardedStepsEqualUnshardedBitwise) {
  TrainRun plain = make_run(GetParam(), false, W());
  TrainRun sharded = make_run(GetParam(), true, W());
  train(plain, 0, 4);
  train(sharded, 0, 4);
  expect_same_weights(*plain.model, *sharded.model);
  auto full = plain.opt->state_dict();
  auto gathered = sharded.opt->state_dict();  // collective: the full state on rank 0 only
  if (W().rank() == 0) {
    EXPECT_GT(full.size(), 8u);
    expect_same_state(full, gathered);
  } else {
    EXPECT_TRUE(gathered.empty());
  }
}

TEST_P(ZeroOptimizers, EachRankHoldsStateForItsOwnParametersOnly) {
  TrainRun plain = make_run(GetParam(), false, W());
  TrainRun sharded = make_run(GetParam(), true, W());
  train(plain, 0, 2);
  train(sharded, 0, 2);
  auto& so = dynamic_cast<ShardedOptimizer&>(*sharded.opt);
  const int64_t buffers = GetParam() == "adamw" || GetParam() == "lamb" ? 2 : 1;
  int64_t owned_elems = 0;
  for (size_t i : so.owned()) owned_elems += so.params()[i].param.numel();
  EXPECT_EQ(so.state_bytes(), owned_elems * buffers * 4) << "rank " << W().rank();
  // The local optimizer's keys name owned parameters only.
  std::set<std::string> owned_names;
  for (size_t i : so.owned()) owned_names.insert(so.params()[i].name);
  if (so.local()) {
    for (auto& [k, t] : so.local()->state_dict())
      if (k != "step") EXPECT_TRUE(owned_names.count(k.substr(0, k.rfind('.')))) << k << " is not owned here";
  }
  // Every element's state lives on exactly one rank.
  Tensor b = Tensor::from_vector(std::vector<int64_t>{so.state_bytes()}, {1});
  W().allreduce(b);
  EXPECT_EQ(static_cast<int64_t>(b.item()), plain.opt->state_bytes());
  EXPECT_LT(so.state_bytes(), plain.opt->state_bytes());
}

// Unsharded checkpoint -> sharded resume, and sharded checkpoint -> unsharded resume: both end
// bitwise where 4 straight unsharded steps do.
TEST_P(ZeroOptimizers, CheckpointsLoadAcrossShardedAndUnsharded) {
  TrainRun straight = make_run(GetParam(), false, W());
  train(straight, 0, 4);
  for (bool first_sharded : {false, true}) {
    SCOPED_TRACE(first_sharded ? "sharded -> unsharded" : "unsharded -> sharded");
    TrainRun a = make_run(GetParam(), first_sharded, W());
    train(a, 0, 2);
    auto opt_state = through_file(a.opt->state_dict(), "x");
    TrainRun b = make_run(GetParam(), !first_sharded, W());
    b.model->load_state_dict(a.model->state_dict());
    b.opt->load_state_dict(opt_state);
    EXPECT_EQ(b.opt->step_count(), 2);
    train(b, 2, 2);
    expect_same_weights(*straight.model, *b.model);
    auto want = straight.opt->state_dict(), got = b.opt->state_dict();
    if (W().rank() == 0) expect_same_state(want, got);
  }
}

// Elastic restart: a sharded checkpoint of all ranks resumed on half of them (np 4 -> 2, np 2 -> 1),
// sharded and unsharded, which must then agree bitwise; and it is the same state a plain run of
// the full world would have saved.
TEST_P(ZeroOptimizers, ShardedCheckpointResumesOnHalfTheRanks) {
  TrainRun plain = make_run(GetParam(), false, W());
  TrainRun sharded = make_run(GetParam(), true, W());
  train(plain, 0, 2);
  train(sharded, 0, 2);
  auto full = plain.opt->state_dict();
  auto opt_state = through_file(sharded.opt->state_dict(), "half");
  expect_same_state(full, opt_state);
  auto weights = sharded.model->state_dict();
  const int half = W().size() / 2;
  auto sub = W().split(W().rank() < half ? 0 : 1, W().rank());
  if (W().rank() < half) {
    TrainRun a = make_run(GetParam(), true, *sub), b = make_run(GetParam(), false, *sub);
    for (TrainRun* r : {&a, &b}) {
      r->model->load_state_dict(weights);
      r->opt->load_state_dict(opt_state);
      train(*r, 2, 3);
    }
    expect_same_weights(*a.model, *b.model);
    auto sa = a.opt->state_dict(), sb = b.opt->state_dict();
    if (sub->rank() == 0) expect_same_state(sb, sa);
  }
  W().barrier();
}

TEST(ZeroStateDict, BadStateDictsAreRefusedByKey) {
  TrainRun sharded = make_run("adamw", true, W());
  train(sharded, 0, 1);
  std::map<std::string, Tensor> bad{{"step", Tensor::scalar(1, DType::i64)},
                                    {"nonexistent.weight.exp_avg", Tensor::zeros({3})}};
  try {
    sharded.opt->load_state_dict(bad);
    ADD_FAILURE() << "an unknown parameter was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nonexistent.weight.exp_avg'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(sharded.opt->load_state_dict({}), Error);  // no "step"
}

// ---- ZeRO stage 2: sharded gradients ----

// Largest relative difference |a - b| / max(|a|, |b|, 1e-3) over all weights.
double max_rel_diff(nn::Module& a, nn::Module& b) {
  auto wa = flat_weights(a), wb = flat_weights(b);
  EXPECT_EQ(wa.size(), wb.size());
  double m = 0;
  for (size_t i = 0; i < wa.size(); ++i)
    m = std::max(m, std::abs(double(wa[i]) - wb[i]) / std::max({std::abs(double(wa[i])), std::abs(double(wb[i])), 1e-3}));
  Tensor t = Tensor::from_vector(std::vector<double>{m}, {1});
  W().allreduce(t, ReduceKind::max);
  return t.item();
}

// At 2 ranks the owner's MPI_Reduce adds the same two numbers as MPI_Allreduce (a + b is
// commutative in IEEE arithmetic), so stage 2 is bitwise stage 1. At 4 ranks Open MPI's reduce
// (binomial tree rooted at the owner) and allreduce (recursive doubling) group the four terms
// differently, and the results agree to rounding: kZero2Tolerance (relative, after 4 steps).
constexpr double kZero2Tolerance = 1e-5;

void expect_zero2_matches(nn::Module& stage1, nn::Module& stage2, int ranks) {
  const double d = max_rel_diff(stage1, stage2);
  if (W().rank() == 0) std::printf("[ zero2 ] np %d: max relative weight difference to stage 1: %.3g\n", ranks, d);
  if (ranks <= 2) expect_same_weights(stage1, stage2);
  else EXPECT_LE(d, kZero2Tolerance);
}

class Zero2Optimizers : public ::testing::TestWithParam<std::string> {};

TEST_P(Zero2Optimizers, ShardedGradientsMatchStage1AndUnsharded) {
  TrainRun plain = make_run(GetParam(), false, W());
  TrainRun zero1 = make_run(GetParam(), true, W(), 1);
  TrainRun zero2 = make_run(GetParam(), true, W(), 2);
  ASSERT_TRUE(zero2.dp->shards_gradients());
  ASSERT_FALSE(zero1.dp->shards_gradients());
  for (TrainRun* r : {&plain, &zero1, &zero2}) train(*r, 0, 4);  // clipped to a binding global norm
  expect_same_weights(*plain.model, *zero1.model);
  expect_zero2_matches(*zero1.model, *zero2.model, W().size());
  // Every replica ends identical (the owners' broadcast), whatever the reduction order.
  auto w = flat_weights(*zero2.model);
  Tensor mine = Tensor::from_vector(w, {static_cast<int64_t>(w.size())});
  Tensor all = W().allgather(mine);
  for (int r = 1; r < W().size(); ++r) EXPECT_TRUE(same_bytes(all.select(0, 0), all.select(0, r))) << "rank " << r;
  auto want = zero1.opt->state_dict(), got = zero2.opt->state_dict();
  if (W().rank() == 0) {
    ASSERT_EQ(want.size(), got.size());
    if (W().size() <= 2) expect_same_state(want, got);
  }
}

// The gradient storage a rank holds after finish(): the distinct storages of the parameters'
// .grad, counted from the model (not from DataParallel's own bookkeeping).
int64_t held_grad_bytes(nn::Module& m) {
  std::set<const void*> seen;
  int64_t bytes = 0;
  for (auto& p : m.parameters())
    if (p.grad().defined() && seen.insert(p.grad().storage().get()).second)
      bytes += static_cast<int64_t>(p.grad().storage()->nbytes());
  return bytes;
}

TEST_P(Zero2Optimizers, NonOwnedGradientsAreReleased) {
  TrainRun zero1 = make_run(GetParam(), true, W(), 1);
  TrainRun zero2 = make_run(GetParam(), true, W(), 2);
  train(zero1, 0, 2);
  train(zero2, 0, 2);
  auto& so = dynamic_cast<ShardedOptimizer&>(*zero2.opt);
  int64_t owned_bytes = 0, total_bytes = 0;
  for (size_t i = 0; i < so.params().size(); ++i) {
    const Tensor& p = so.params()[i].param;
    total_bytes += static_cast<int64_t>(p.nbytes());
    if (so.owner(i) == W().rank()) {
      owned_bytes += static_cast<int64_t>(p.nbytes());
      EXPECT_TRUE(p.grad().defined()) << so.params()[i].name << " is owned here but has no gradient";
    } else {
      EXPECT_FALSE(p.grad().defined()) << so.params()[i].name << " is not owned here but kept its gradient";
    }
  }
  const int64_t held = held_grad_bytes(*zero2.model);
  std::printf("[ zero2 ] rank %d: gradient bytes held %lld (stage 1: %lld), peak during the step %lld, owned %lld\n",
              W().rank(), static_cast<long long>(held), static_cast<long long>(held_grad_bytes(*zero1.model)),
              static_cast<long long>(zero2.dp->peak_grad_bytes()), static_cast<long long>(owned_bytes));
  EXPECT_EQ(held, owned_bytes);
  EXPECT_EQ(zero2.dp->grad_bytes(), owned_bytes);
  EXPECT_EQ(held_grad_bytes(*zero1.model), total_bytes);
  EXPECT_GE(zero2.dp->peak_grad_bytes(), owned_bytes);
  EXPECT_LE(zero2.dp->peak_grad_bytes(), total_bytes);
  // Each gradient byte lives on exactly one rank.
  Tensor sum = Tensor::from_vector(std::vector<int64_t>{held}, {1});
  W().allreduce(sum);
  EXPECT_EQ(static_cast<int64_t>(sum.item()), total_bytes);
  // zero_grad() releases what finish() left only for the owner... and keeps owned buckets.
  zero2.dp->zero_grad();
  EXPECT_EQ(held_grad_bytes(*zero2.model), owned_bytes);
}

// A stage-2 checkpoint holds the full state under unsharded keys: it resumes on half the ranks
// (np 4 -> 2, np 2 -> 1) unsharded and with stage 2, which then agree bitwise (at <= 2 ranks the
// reduce order equals the allreduce's).
TEST_P(Zero2Optimizers, CheckpointResumesUnshardedOnHalfTheRanks) {
  TrainRun zero2 = make_run(GetParam(), true, W(), 2);
  train(zero2, 0, 2);
  auto opt_state = through_file(zero2.opt->state_dict(), "z2");
  EXPECT_EQ(opt_state.count("step"), 1u);
  auto weights = zero2.model->state_dict();
  const int half = W().size() / 2;
  auto sub = W().split(W().rank() < half ? 0 : 1, W().rank());
  if (W().rank() < half) {
    TrainRun a = make_run(GetParam(), true, *sub, 2), b = make_run(GetParam(), false, *sub);
    for (TrainRun* r : {&a, &b}) {
      r->model->load_state_dict(weights);
      r->opt->load_state_dict(opt_state);
      EXPECT_EQ(r->opt->step_count(), 2);
      train(*r, 2, 3);
    }
    expect_same_weights(*a.model, *b.model);
    auto sa = a.opt->state_dict(), sb = b.opt->state_dict();
    if (sub->rank() == 0) expect_same_state(sb, sa);
  }
  W().barrier();
}

INSTANTIATE_TEST_SUITE_P(Optimizers, Zero2Optimizers, ::testing::Values("sgd", "adamw", "lamb"));

TEST(Zero2Options, WhatDoesNotCombineIsRefusedByName) {
  TrainRun z = make_run("sgd", true, W(), 2);
  expect_error([&] { z.dp->set_accumulating(true); }, "train.accumulate_steps");
  auto model = make_net();
  DataParallelOptions o;
  o.grad_owners = {0, 0};
  expect_error([&] { DataParallel dp(*model, W(), o); }, "grad_owners names 2 owners for a model of");
  o.grad_owners.assign(model->parameters().size(), 0);
  o.bf16_wire = true;
  expect_error([&] { DataParallel dp(*model, W(), o); }, "bf16_wire");
  auto& so = dynamic_cast<ShardedOptimizer&>(*z.opt);
  expect_error([&] { so.owners_of({Tensor::zeros({2})}); }, "tensor 0");
}

INSTANTIATE_TEST_SUITE_P(Optimizers, ZeroOptimizers, ::testing::Values("sgd", "adamw", "lars", "lamb"));

}  // namespace
}  // namespace hpdl::dist
