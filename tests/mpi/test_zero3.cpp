// Zero3 (ZeRO stage 3) across real ranks: a few steps of an MLP with dropout
// and of a small CNN with batch norm (nested Sequential) must equal ZeRO-2
// bit for bit at any rank count (the same owner buckets and reduces; the
// forward is the same kernels on the same gathered bytes) and plain data
// parallel at <= 2 ranks; at rest a rank holds only its owned parameters
// (the others' storage has no bytes); checkpoints round-trip between stage 3
// and unsharded runs; bad use is refused by name.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>

#include "hpdl/autograd/node.h"
#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/zero.h"
#include "hpdl/dist/zero3.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/nn/layers.h"
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

// "mlp": 7 parameters of uneven sizes, tanh, dropout (the recompute must replay its masks).
// "cnn": conv + batch norm + relu in a nested Sequential (opened into units), pooling, a classifier.
std::shared_ptr<nn::Sequential> make_net(const std::string& kind) {
  if (kind == "mlp")
    return std::dynamic_pointer_cast<nn::Sequential>(nn::models::mlp(8, {32, 16, 12}, 3, "tanh", 0.2, /*seed=*/7));
  Generator gen(11);
  auto block = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(2, 4, nn::Conv2dOptions::k(3).p(1), gen), std::make_shared<nn::BatchNorm2d>(4),
      std::make_shared<nn::ReLU>()});
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      block, std::make_shared<nn::Conv2d>(4, 6, nn::Conv2dOptions::k(3).p(1), gen),
      std::make_shared<nn::BatchNorm2d>(6), std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
      std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(6 * 4 * 4, 3, true, gen)});
}

optim::OptimizerConfig opt_config(const std::string& name) {
  optim::OptimizerConfig c;
  c.name = name;
  c.momentum = 0.9;
  c.lr = name == "sgd" ? 0.1 : 1e-2;
  c.weight_decay = 1e-2;
  return c;
}

// One data-parallel run: stage 0 (plain), 2 (sharded optimizer and gradients) or 3 (also parameters).
struct ZRun {
  std::string kind;
  int stage = 0;
  Communicator* comm = nullptr;
  std::shared_ptr<nn::Sequential> model;
  std::unique_ptr<optim::Optimizer> opt;
  std::unique_ptr<DataParallel> dp;
  std::unique_ptr<Zero3> z3;  // last: destroyed first
  nn::Module& net() { return z3 ? static_cast<nn::Module&>(*z3) : *model; }
  ShardedOptimizer& sharded() { return dynamic_cast<ShardedOptimizer&>(*opt); }
  // The full model state on rank 0 (stage 3 gathers it; the others hold it whole).
  std::map<std::string, Tensor> state() { return z3 ? z3->full_state_dict(0) : model->state_dict(); }
  void load(const std::map<std::string, Tensor>& s) {
    if (z3) z3->load_full_state_dict(s);
    else model->load_state_dict(s);
  }
};

ZRun make_run(const std::string& kind, const std::string& opt_name, int stage, Communicator& comm,
             Zero3Options z3o = {}) {
  ZRun r;
  r.kind = kind, r.stage = stage, r.comm = &comm;
  r.model = make_net(kind);
  const auto cfg = opt_config(opt_name);
  auto make = [cfg](std::vector<optim::ParamSpec> specs) { return optim::make_optimizer(std::move(specs), cfg); };
  if (stage >= 2) r.opt = std::make_unique<ShardedOptimizer>(optim::param_specs(*r.model), make, comm);
  else r.opt = make(optim::param_specs(*r.model));
  DataParallelOptions o;
  o.bucket_bytes = 1024;
  if (stage >= 2) o.grad_owners = r.sharded().owners_of(r.model->parameters());
  r.dp = std::make_unique<DataParallel>(*r.model, comm, o);
  if (stage == 3) r.z3 = std::make_unique<Zero3>(r.model, r.sharded(), *r.dp, z3o);
  return r;
}

// This rank's part of step k's global batch of 12 (the same global batch at every rank count).
std::pair<Tensor, Tensor> batch_of(const ZRun& r, int k) {
  const int n = r.comm->size(), rank = r.comm->rank();
  const int64_t per = 12 / n;
  Generator g(500 + k);
  Tensor x = r.kind == "mlp" ? Tensor::randn({12, 8}, g) : Tensor::randn({12, 2, 8, 8}, g);
  std::vector<int64_t> y(12);
  for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
  return {x.slice(0, rank * per, (rank + 1) * per), Tensor::from_vector(y, {12}).slice(0, rank * per, (rank + 1) * per)};
}

// Steps [first, first + steps), clipped to a global norm that binds.
void train(ZRun& r, int first, int steps) {
  for (int k = first; k < first + steps; ++k) {
    auto [x, y] = batch_of(r, k);
    r.dp->zero_grad();
    cross_entropy(r.net().forward(x), y).backward();
    r.dp->finish();
    if (r.stage >= 2) r.sharded().clip_grad_norm(0.5);
    else optim::clip_grad_norm(r.model->parameters(), 0.5);
    r.opt->step();
  }
}

// On rank 0: every key of `want` is in `got` with the same bytes.
void expect_same(const std::map<std::string, Tensor>& want, const std::map<std::string, Tensor>& got,
                 const std::string& what) {
  if (W().rank() != 0) return;
  ASSERT_EQ(want.size(), got.size()) << what;
  for (auto& [k, t] : want) {
    auto it = got.find(k);
    ASSERT_NE(it, got.end()) << what << ": missing key " << k;
    EXPECT_TRUE(same_bytes(t, it->second)) << what << ": '" << k << "' differs";
  }
}

class Zero3Runs : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

// The same buckets reduced to the same owners by the same MPI_Reduce calls, and the same forward
// kernels on the same bytes (activation checkpointing is bitwise, design decision 66): stage 3
// equals stage 2 bit for bit at any rank count; at <= 2 ranks both equal plain data parallel
// (a + b is commutative, so the reduce and the allreduce agree there).
TEST_P(Zero3Runs, StepsEqualStage2Bitwise) {
  const auto& [kind, opt_name] = GetParam();
  ZRun plain = make_run(kind, opt_name, 0, W()), z2 = make_run(kind, opt_name, 2, W()),
      z3 = make_run(kind, opt_name, 3, W());
  for (ZRun* r : {&plain, &z2, &z3}) train(*r, 0, 3);
  const auto s3 = z3.state();
  expect_same(z2.state(), s3, "stage 3 vs stage 2 weights and buffers");
  if (W().size() <= 2) expect_same(plain.state(), s3, "stage 3 vs plain weights and buffers");
  expect_same(z2.opt->state_dict(), z3.opt->state_dict(), "stage 3 vs stage 2 optimizer state");
  // Eval (no grad) gathers per unit too: the outputs equal stage 2's, and nothing stays gathered.
  auto [x, y] = batch_of(z3, 9);
  z2.model->eval(), z3.z3->eval();
  NoGradGuard ng;
  EXPECT_TRUE(same_bytes(z2.model->forward(x), z3.z3->forward(x))) << "eval outputs differ on rank " << W().rank();
  EXPECT_FALSE(z3.model->is_training());
  EXPECT_EQ(z3.z3->parameter_bytes(), z3.z3->owned_parameter_bytes());
}

INSTANTIATE_TEST_SUITE_P(Models, Zero3Runs,
                         ::testing::Combine(::testing::Values("mlp", "cnn"), ::testing::Values("sgd", "adamw")));

// At rest (after construction and after each step) a non-owned parameter has no bytes and no
// gradient; the owned ones keep both; the owned shares add up to the model, each byte on one rank.
TEST(Zero3Memory, NonOwnedParametersAreReleased) {
  ZRun z3 = make_run("cnn", "adamw", 3, W());
  auto check = [&](const char* when) {
    int64_t owned = 0, total = 0, largest = 0;
    auto& so = z3.sharded();
    for (size_t i = 0; i < so.params().size(); ++i) {
      const Tensor& p = so.params()[i].param;
      total += static_cast<int64_t>(p.nbytes());
      largest = std::max(largest, static_cast<int64_t>(p.nbytes()));
      if (so.owner(i) == W().rank()) {
        owned += static_cast<int64_t>(p.nbytes());
        EXPECT_FALSE(Zero3::released(p)) << so.params()[i].name << " is owned but released " << when;
        EXPECT_GE(p.storage()->nbytes(), p.nbytes());
      } else {
        EXPECT_TRUE(Zero3::released(p)) << so.params()[i].name << " is not owned but held " << when;
        EXPECT_EQ(p.storage()->nbytes(), 0u) << so.params()[i].name << " " << when;
        EXPECT_FALSE(p.grad().defined()) << so.params()[i].name << " kept a gradient " << when;
      }
    }
    EXPECT_EQ(z3.z3->parameter_bytes(), owned) << when;
    EXPECT_EQ(z3.z3->owned_parameter_bytes(), owned) << when;
    Tensor sum = Tensor::from_vector(std::vector<int64_t>{owned}, {1});
    W().allreduce(sum);
    EXPECT_EQ(static_cast<int64_t>(sum.item()), total) << when;
    // About 1/N: the greedy partition is within one parameter of an even share.
    EXPECT_LE(owned, total / W().size() + largest) << when;
    return std::pair<int64_t, int64_t>{owned, total};
  };
  check("after construction");
  train(z3, 0, 2);
  auto [owned, total] = check("after two steps");
  // The peak adds one unit's non-owned parameters at a time, never the whole model at once (at
  // > 1 rank; the largest unit here is under half of the model).
  EXPECT_GT(z3.z3->peak_parameter_bytes(), owned);
  if (W().size() > 1) EXPECT_LT(z3.z3->peak_parameter_bytes(), total);
  // Units are gathered one at a time into one kept buffer, sized for the largest: the peak is the
  // owned share plus that buffer.
  EXPECT_GT(z3.z3->buffer_bytes(), 0);
  EXPECT_EQ(z3.z3->peak_parameter_bytes(), owned + z3.z3->buffer_bytes());
  std::printf("[ zero3 ] rank %d: parameter bytes at rest %lld of %lld, gather buffer %lld (peak in a step %lld), "
              "%d units\n", W().rank(), static_cast<long long>(owned), static_cast<long long>(total),
              static_cast<long long>(z3.z3->buffer_bytes()), static_cast<long long>(z3.z3->peak_parameter_bytes()),
              z3.z3->num_units());
  // Units: a module with parameters starts one; the nested Sequential is opened up.
  EXPECT_EQ(z3.z3->num_units(), 5);
  EXPECT_EQ(z3.z3->unit_modules(0), (std::vector<std::string>{"0.0"}));
  EXPECT_EQ(z3.z3->unit_modules(3), (std::vector<std::string>{"2", "3", "4", "5"}));
  // unshard() makes the model whole on every rank (its forward is then the plain one); reshard() releases again.
  z3.z3->unshard();
  for (auto& p : z3.model->parameters()) EXPECT_FALSE(Zero3::released(p));
  z3.z3->reshard();
  EXPECT_EQ(z3.z3->parameter_bytes(), owned);
}

// Checkpoints: a stage-3 run's gathered state resumes an unsharded run and a stage-2 run, and an
// unsharded run's state resumes stage 3; each pair then trains on bitwise alike (stage 3 vs
// stage 2 at any rank count, vs plain at <= 2).
TEST(Zero3Checkpoint, RoundTripWithUnshardedAndStage2) {
  ZRun a = make_run("cnn", "adamw", 3, W());
  train(a, 0, 2);
  auto weights = through_file(a.state(), "w");
  auto optim = through_file(a.opt->state_dict(), "o");
  ZRun b = make_run("cnn", "adamw", 3, W()), c = make_run("cnn", "adamw", 2, W()),
      d = make_run("cnn", "adamw", 0, W());
  for (ZRun* r : {&b, &c, &d}) {
    r->load(weights);
    r->opt->load_state_dict(optim);
    train(*r, 2, 2);
  }
  expect_same(c.state(), b.state(), "resumed stage 3 vs resumed stage 2");
  expect_same(c.opt->state_dict(), b.opt->state_dict(), "resumed optimizer state, stage 3 vs stage 2");
  if (W().size() <= 2) expect_same(d.state(), b.state(), "resumed stage 3 vs resumed plain");
  // Unsharded -> stage 3: the plain run's state loads into a fresh stage-3 run, which keeps its
  // share only and gathers it back unchanged.
  auto plain_state = through_file(d.state(), "p");
  ZRun e = make_run("cnn", "adamw", 3, W());
  e.load(plain_state);
  EXPECT_EQ(e.z3->parameter_bytes(), e.z3->owned_parameter_bytes());
  expect_same(plain_state, e.state(), "plain state through stage 3");
}

TEST(Zero3Options, BadUseIsRefusedByName) {
  // Gradients all-reduced (no grad_owners): stage 3 needs the owner buckets.
  ZRun z2 = make_run("mlp", "sgd", 2, W());
  ZRun plain_dp = make_run("mlp", "sgd", 0, W());
  expect_error([&] { Zero3 z(z2.model, z2.sharded(), *plain_dp.dp); }, "grad_owners");
  // A layer used twice (tied parameters): two units would gather the same tensor.
  Generator gen(3);
  auto shared = std::make_shared<nn::Linear>(4, 4, true, gen);
  auto tied = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      shared, std::make_shared<nn::ReLU>(), shared});
  auto cfg = opt_config("sgd");
  auto make = [cfg](std::vector<optim::ParamSpec> specs) { return optim::make_optimizer(std::move(specs), cfg); };
  ShardedOptimizer so(optim::param_specs(*tied), make, W());
  DataParallelOptions o;
  o.grad_owners = so.owners_of(tied->parameters());
  DataParallel dp(*tied, W(), o);
  expect_error([&] { Zero3 z(tied, so, dp); }, "parameter '2.weight' is registered twice in the model (also as '0.weight')");
  // A state dict without one of the parameters, or with a wrong shape, names it.
  ZRun z3 = make_run("mlp", "sgd", 3, W());
  auto full = through_file(z3.state(), "bad");
  auto missing = full;
  missing.erase("1.weight");
  expect_error([&] { z3.z3->load_full_state_dict(missing); }, "missing key '1.weight'");
  auto wrong = full;
  wrong["1.bias"] = Tensor::zeros({5});
  expect_error([&] { z3.z3->load_full_state_dict(wrong); }, "'1.bias' is [5]");
  auto extra = full;
  extra["9.weight"] = Tensor::zeros({1});
  expect_error([&] { z3.z3->load_full_state_dict(extra); }, "unexpected key '9.weight'");
  // The optimizer's broadcast after the step is off while a Zero3 lives, back on after.
  EXPECT_FALSE(z3.sharded().broadcast_after_step());
  z3.z3.reset();
  EXPECT_TRUE(z3.sharded().broadcast_after_step());
}

// Prefetch (a unit's gather queued one unit ahead, waited for when the unit runs) changes when the
// broadcasts travel, not what they carry nor which kernels run: with it on, training, an abandoned
// forward (the last unit stays gathered for a backward that does not come) and evaluation give the
// same bytes as with it off and as stage 2. Every gather but the first of a forward is found already
// queued; the buffer holds two neighbouring units, and nothing stays gathered after a backward.
class Zero3Prefetch : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(Zero3Prefetch, OnEqualsOffAndStage2Bitwise) {
  const auto& [kind, opt_name] = GetParam();
  Zero3Options pf;
  pf.prefetch = true;
  ZRun z2 = make_run(kind, opt_name, 2, W()), off = make_run(kind, opt_name, 3, W()),
      on = make_run(kind, opt_name, 3, W(), pf);
  ASSERT_FALSE(off.z3->prefetch());
  ASSERT_TRUE(on.z3->prefetch());
  const int64_t n = on.z3->num_units();
  ASSERT_GE(n, 3);
  for (ZRun* r : {&z2, &off, &on}) train(*r, 0, 3);
  // Per step: forward waits for unit 0 and finds units 1..n-1 queued; backward finds the last unit
  // kept and each earlier one queued by the unit after it. Without prefetch every gather waits.
  EXPECT_EQ(on.z3->waited_gathers(), 3);
  EXPECT_EQ(on.z3->prefetched_gathers(), 3 * (2 * n - 1));
  EXPECT_EQ(off.z3->waited_gathers(), 3 * 2 * n);
  EXPECT_EQ(off.z3->prefetched_gathers(), 0);
  const int64_t owned = on.z3->owned_parameter_bytes();
  EXPECT_EQ(on.z3->parameter_bytes(), owned) << "a unit stayed gathered after the backward";
  EXPECT_EQ(off.z3->owned_parameter_bytes(), owned);
  // The buffer takes two neighbouring units side by side (at least the one unit of the buffer
  // without prefetch), and the peak is exactly the owned share plus a full buffer.
  if (W().size() > 1) {
    EXPECT_GE(on.z3->buffer_bytes(), off.z3->buffer_bytes());
    EXPECT_EQ(on.z3->peak_parameter_bytes(), owned + on.z3->buffer_bytes());
  }
  expect_same(off.state(), on.state(), "prefetch on vs off weights and buffers");
  expect_same(z2.state(), on.state(), "prefetch on vs stage 2 weights and buffers");
  expect_same(off.opt->state_dict(), on.opt->state_dict(), "prefetch on vs off optimizer state");

  // A forward with grad mode on and no backward keeps the last unit; the next step's forward
  // releases it first and the step stays bitwise.
  {
    auto [x, y] = batch_of(on, 7);
    for (ZRun* r : {&z2, &off, &on}) (void)r->net().forward(x);
    // Some rank holds a non-owned parameter of the last unit (each owns only a share of it).
    Tensor kept = Tensor::from_vector(std::vector<int64_t>{on.z3->parameter_bytes() - owned}, {1});
    W().allreduce(kept);
    if (W().size() > 1) EXPECT_GT(static_cast<int64_t>(kept.item()), 0) << "the last unit was not kept for a backward";
    EXPECT_EQ(off.z3->parameter_bytes(), owned);
  }
  for (ZRun* r : {&z2, &off, &on}) train(*r, 3, 1);
  EXPECT_EQ(on.z3->parameter_bytes(), owned);
  expect_same(off.state(), on.state(), "prefetch on vs off after an abandoned forward");
  expect_same(z2.state(), on.state(), "prefetch on vs stage 2 after an abandoned forward");

  // Eval (no grad) prefetches too and releases everything.
  auto [x, y] = batch_of(on, 9);
  z2.model->eval(), off.z3->eval(), on.z3->eval();
  NoGradGuard ng;
  const Tensor want = z2.model->forward(x);
  const int64_t waited = on.z3->waited_gathers(), ahead = on.z3->prefetched_gathers();
  EXPECT_TRUE(same_bytes(want, on.z3->forward(x))) << "eval outputs differ on rank " << W().rank();
  EXPECT_TRUE(same_bytes(want, off.z3->forward(x))) << "eval outputs differ on rank " << W().rank();
  EXPECT_EQ(on.z3->waited_gathers() - waited, 1);
  EXPECT_EQ(on.z3->prefetched_gathers() - ahead, n - 1);
  EXPECT_EQ(on.z3->parameter_bytes(), owned);
}

INSTANTIATE_TEST_SUITE_P(Models, Zero3Prefetch,
                         ::testing::Values(std::make_tuple(std::string("mlp"), std::string("adamw")),
                                           std::make_tuple(std::string("cnn"), std::string("sgd"))));

}  // namespace
}  // namespace hpdl::dist
