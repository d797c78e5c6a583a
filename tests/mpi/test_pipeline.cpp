// Pipeline parallelism across real ranks (np 2 and 4: one stage per rank):
// the pipelined gradients and the weights after several SGD steps must equal
// one process training the whole model on the same batch, for an MLP and a
// small CNN with M = 1, 2, 4 micro-batches; batch norm must normalize per
// micro-batch; bad input must raise the same named error on every rank.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "hpdl/core/random.h"
#include "hpdl/dist/pipeline.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/resnet50.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizer.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

using Factory = std::shared_ptr<nn::Sequential> (*)();

std::shared_ptr<nn::Sequential> make_mlp() {
  return std::dynamic_pointer_cast<nn::Sequential>(nn::models::mlp(8, {32, 16, 16}, 3, "tanh", 0.0, /*seed=*/7));
}

// Conv stages, then flatten + linear: 1x8x8 -> 4x8x8 -> 8x4x4 -> pool 8x2x2 -> 32 -> 16 -> 3.
std::shared_ptr<nn::Sequential> make_cnn() {
  Generator g(11);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(1, 4, nn::Conv2dOptions::k(3).p(1), g));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Conv2d>(4, 8, nn::Conv2dOptions::k(3).s(2).p(1), g));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<nn::MaxPool2d>(2));
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(32, 16, true, g));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<nn::Linear>(16, 3, true, g));
  return net;
}

// The CNN with batch norm in the conv stages and in the head.
std::shared_ptr<nn::Sequential> make_bn_cnn() {
  Generator g(13);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(1, 4, nn::Conv2dOptions::k(3).p(1), g));
  net->push_back(std::make_shared<nn::BatchNorm2d>(4));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Conv2d>(4, 8, nn::Conv2dOptions::k(3).s(2).p(1), g));
  net->push_back(std::make_shared<nn::BatchNorm2d>(8));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(128, 16, true, g));
  net->push_back(std::make_shared<nn::BatchNorm1d>(16));
  net->push_back(std::make_shared<nn::Linear>(16, 3, true, g));
  return net;
}

// Batch k: identical on every rank (same seed).
std::pair<Tensor, Tensor> batch(const Shape& sample, int64_t n, int k) {
  Generator g(500 + k);
  Shape s{n};
  s.insert(s.end(), sample.begin(), sample.end());
  Tensor x = Tensor::randn(s, g);
  std::vector<int64_t> y(n);
  for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
  return {x, Tensor::from_vector(y, {n})};
}

Tensor ce(const Tensor& out, const Tensor& y) { return cross_entropy(out, y); }

optim::SGDOptions sgd() {
  optim::SGDOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  return o;
}

// The largest |a - b| over the tensor, relative to the largest |b| (at least 1e-3).
double rel_diff(const Tensor& a, const Tensor& b) {
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  EXPECT_EQ(va.size(), vb.size());
  double d = 0, scale = 1e-3;
  for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i])), scale = std::max(scale, std::abs(vb[i]));
  return d / scale;
}

// float32 tolerance for "equal": the micro-batch sums add in another order than one full-batch product.
constexpr double kTol = 1e-6;

struct Reference {
  std::map<std::string, Tensor> first_grads;  // gradients of step 0
  std::map<std::string, Tensor> state;        // parameters and buffers after all steps
  std::vector<double> losses;
};

// One process, the whole model. micro = 1: the whole batch at once; micro = M: M micro-batches
// accumulated one after another (each loss weighted 1/M), which is what batch norm sees in the pipeline.
Reference train_reference(Factory make, const Shape& sample, int64_t n, int steps, int micro) {
  auto model = make();
  optim::SGD opt(optim::param_specs(*model), sgd());
  Reference r;
  for (int k = 0; k < steps; ++k) {
    auto [x, y] = batch(sample, n, k);
    model->zero_grad();
    double loss = 0;
    const int64_t mb = n / micro;
    for (int m = 0; m < micro; ++m) {
      Tensor l = cross_entropy(model->forward(x.slice(0, m * mb, (m + 1) * mb)), y.slice(0, m * mb, (m + 1) * mb));
      loss += l.item() / micro;
      mul(l, 1.0 / micro).backward();
    }
    r.losses.push_back(loss);
    if (k == 0)
      for (auto& [name, p] : model->named_parameters()) r.first_grads[name] = p.grad().clone();
    opt.step();
  }
  for (auto& [name, t] : model->state_dict()) r.state[name] = t.clone();
  return r;
}

// Trains the pipeline the same way and compares this rank's stage with the reference.
void expect_pipeline_matches(Factory make, const Shape& sample, int micro, const Reference& ref, double tol,
                             const std::vector<int64_t>& splits = {},
                             PipelineSchedule schedule = PipelineSchedule::gpipe) {
  const int64_t n = 8;
  PipelineOptions po;
  po.micro_batches = micro;
  po.schedule = schedule;
  po.split_points = splits;
  Pipeline pipe(make(), W(), po);
  // A stage of parameter-free layers only (a lone Tanh) has nothing to step.
  std::unique_ptr<optim::SGD> opt;
  if (pipe.stage().num_parameters() > 0) opt = std::make_unique<optim::SGD>(optim::param_specs(pipe.stage()), sgd());
  const int steps = static_cast<int>(ref.losses.size());
  double max_grad = 0, max_state = 0;
  for (int k = 0; k < steps; ++k) {
    auto [x, y] = batch(sample, n, k);
    pipe.stage().zero_grad();
    // Each stage gets only what it reads: the input on the first, the targets on the last.
    const double loss = pipe.train_step(pipe.is_first() ? x : Tensor(), pipe.is_last() ? y : Tensor(), ce);
    EXPECT_NEAR(loss, ref.losses[k], 1e-5 * std::max(1.0, std::abs(ref.losses[k]))) << "step " << k;
    if (k == 0)
      for (auto& [name, p] : pipe.stage().named_parameters()) {
        ASSERT_TRUE(ref.first_grads.count(name)) << name;
        ASSERT_TRUE(p.grad().impl_ptr() != nullptr) << name << " has no gradient on stage " << pipe.stage_index();
        max_grad = std::max(max_grad, rel_diff(p.grad(), ref.first_grads.at(name)));
        EXPECT_LE(rel_diff(p.grad(), ref.first_grads.at(name)), tol)
            << "gradient of " << name << ", M = " << micro << ", stage " << pipe.stage_index();
      }
    if (opt) opt->step();
  }
  int64_t tensors = 0;
  for (auto& [name, t] : pipe.stage().state_dict()) {
    ASSERT_TRUE(ref.state.count(name)) << name;
    max_state = std::max(max_state, rel_diff(t, ref.state.at(name)));
    EXPECT_LE(rel_diff(t, ref.state.at(name)), tol)
        << name << " after " << steps << " steps, M = " << micro << ", stage " << pipe.stage_index();
    ++tensors;
  }
  if (!opt) tensors = 1;  // nothing to compare on a parameter-free stage
  std::printf("  %s stage %d, M = %d: largest relative difference %.2e (gradients), %.2e (state after %d steps)\n",
              schedule == PipelineSchedule::gpipe ? "gpipe" : "1f1b", pipe.stage_index(), micro, max_grad, max_state, steps);
  EXPECT_GT(tensors, 0) << "stage " << pipe.stage_index() << " holds no state";
}

TEST(Pipeline, BalanceStagesByParameters) {
  EXPECT_EQ(balance_stages({10, 10, 10, 10}, 2), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(balance_stages({100, 0, 1, 0, 1}, 2), (std::vector<int64_t>{0, 2, 5}));
  EXPECT_EQ(balance_stages({5, 5, 5}, 3), (std::vector<int64_t>{0, 1, 2, 3}));
  // Parameter-free layers spread out rather than piling onto one stage.
  EXPECT_EQ(balance_stages({0, 0, 0, 0}, 2), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_THROW(balance_stages({1, 2}, 3), Error);
}

TEST(Pipeline, BalanceStagesByCost) {
  EXPECT_EQ(balance_stages_by_cost({1.0, 1.0, 1.0, 1.0}, 2), (std::vector<int64_t>{0, 2, 4}));
  // One costly layer gets a stage of its own, whatever the parameters say.
  EXPECT_EQ(balance_stages_by_cost({3.0, 1.0, 1.0, 1.0}, 2), (std::vector<int64_t>{0, 1, 4}));
  EXPECT_EQ(balance_stages_by_cost({0.5, 0.5, 0.5, 2.0, 0.1}, 3), (std::vector<int64_t>{0, 3, 4, 5}));
  EXPECT_EQ(stage_sums(std::vector<double>{0.5, 0.5, 0.5, 2.0, 0.1}, {0, 2, 3, 5}),
            (std::vector<double>{1.0, 0.5, 2.1}));
  auto err = [](std::vector<double> c) {
    try {
      balance_stages_by_cost(c, 2);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err({1.0, -1.0}).find("layer 1 costs -1"), std::string::npos) << err({1.0, -1.0});
  EXPECT_NE(err({NAN, 1.0}).find("layer 0 costs nan"), std::string::npos) << err({NAN, 1.0});
  EXPECT_THROW(balance_stages_by_cost({1.0}, 2), Error);
}

// A CNN with batch norm and dropout: profiling runs every layer forward and
// backward (updating running statistics, drawing dropout masks, accumulating
// gradients), and must leave no trace of it; every rank gets the same times.
TEST(Pipeline, ProfilingLeavesTheModelAsItWasAndEveryRankAgrees) {
  Generator g(21);
  auto net = make_bn_cnn();
  net->push_back(std::make_shared<nn::Dropout>(0.3, /*seed=*/5));
  net->push_back(std::make_shared<nn::Linear>(3, 3, true, g));
  net->train();
  const Tensor x = Tensor::randn({6, 1, 8, 8}, g);
  const auto before = net->state_dict();
  std::vector<uint64_t> offsets_before;
  for (auto& [name, gen] : net->named_generators()) offsets_before.push_back(gen->offset());
  ASSERT_FALSE(offsets_before.empty());

  const auto seconds = profile_layer_seconds(*net, x, W(), /*repeats=*/2);
  ASSERT_EQ(static_cast<int64_t>(seconds.size()), net->num_layers());
  for (size_t i = 0; i < seconds.size(); ++i) EXPECT_TRUE(std::isfinite(seconds[i]) && seconds[i] > 0) << "layer " << i;
  // The same on every rank, to the bit (rank 0's are everyone's).
  Tensor mine = Tensor::empty({static_cast<int64_t>(seconds.size())}, DType::f64);
  std::copy(seconds.begin(), seconds.end(), mine.data<double>());
  Tensor all = W().allgather(mine);
  for (int r = 0; r < W().size(); ++r)
    for (size_t i = 0; i < seconds.size(); ++i)
      EXPECT_EQ(all.data<double>()[r * static_cast<int64_t>(seconds.size()) + static_cast<int64_t>(i)], seconds[i]);

  const auto after = net->state_dict();
  ASSERT_EQ(after.size(), before.size());
  for (auto& [name, t] : before) {
    const Tensor& u = after.at(name);
    ASSERT_EQ(u.nbytes(), t.nbytes()) << name;
    EXPECT_EQ(std::memcmp(u.contiguous().raw_data(), t.contiguous().raw_data(), t.nbytes()), 0)
        << name << " changed by profiling";
  }
  size_t k = 0;
  for (auto& [name, gen] : net->named_generators()) EXPECT_EQ(gen->offset(), offsets_before[k++]) << name;
  for (auto& [name, p] : net->named_parameters()) EXPECT_FALSE(p.grad().defined()) << name << " kept a gradient";

  // The pipeline cuts by the costs it is given (one layer costing as much as all the others).
  PipelineOptions o;
  o.layer_costs.assign(static_cast<size_t>(net->num_layers()), 1.0);
  o.layer_costs[0] = static_cast<double>(net->num_layers());
  if (W().size() == 2) {
    Pipeline pipe(net, W(), o);
    EXPECT_EQ(pipe.bounds(), (std::vector<int64_t>{0, 1, net->num_layers()}));
  }
  o.layer_costs.pop_back();
  try {
    Pipeline pipe(net, W(), o);
    ADD_FAILURE() << "a cost vector one short was taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer_costs for a model of"), std::string::npos) << e.what();
  }
  nn::Linear plain(4, 4, true, g);
  EXPECT_THROW(profile_layer_seconds(plain, x, W()), Error);
}

// ResNet-50's layers are its leaves (its 16 bottlenecks, not its 4 stages of them), so 4 stages
// balance: the largest holds under 30% of the parameters. Cut at its stages of blocks, the last
// stage alone (layer4: 15.0 M of 25.6 M) would hold 58%.
TEST(Pipeline, ResNet50BalancesOverFourStages) {
  auto m = std::dynamic_pointer_cast<nn::Sequential>(nn::models::resnet50(3, 1000));
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(m->num_layers(), 23);
  std::vector<int64_t> params;
  for (int64_t i = 0; i < m->num_layers(); ++i) params.push_back(m->layer_parameters(i));
  const auto b = balance_stages(params, 4);
  int64_t largest = 0;
  for (size_t s = 0; s + 1 < b.size(); ++s) {
    int64_t n = 0;
    for (int64_t i = b[s]; i < b[s + 1]; ++i) n += params[static_cast<size_t>(i)];
    largest = std::max(largest, n);
  }
  std::printf("  resnet50 over 4 stages: bounds %lld %lld %lld %lld, largest stage %.1f%% of %lld parameters\n",
              static_cast<long long>(b[0]), static_cast<long long>(b[1]), static_cast<long long>(b[2]),
              static_cast<long long>(b[3]), 100.0 * double(largest) / double(m->num_parameters()),
              static_cast<long long>(m->num_parameters()));
  EXPECT_LT(double(largest), 0.30 * double(m->num_parameters()));
  int64_t last_stage_of_blocks = 0;
  for (auto& [name, p] : m->named_parameters())
    if (name.rfind("7.", 0) == 0) last_stage_of_blocks += p.numel();
  EXPECT_GT(double(last_stage_of_blocks), 0.55 * double(m->num_parameters()));
}

TEST(Pipeline, StagesPartitionTheModel) {
  Pipeline pipe(make_mlp(), W());  // 8 layers: Flatten, (Linear, Tanh) x 3, Linear
  ASSERT_EQ(pipe.num_stages(), W().size());
  EXPECT_EQ(pipe.stage_index(), W().rank());
  EXPECT_EQ(pipe.bounds().front(), 0);
  EXPECT_EQ(pipe.bounds().back(), 8);
  // Every parameter of the model is on exactly one stage.
  Tensor count = Tensor::full({1}, double(pipe.stage().num_parameters()), DType::f64);
  W().allreduce(count);
  EXPECT_EQ(int64_t(count.item()), make_mlp()->num_parameters());
}

TEST(Pipeline, MlpMatchesOneProcess) {
  const auto ref = train_reference(make_mlp, {8}, 8, 3, 1);
  for (int micro : {1, 2, 4}) expect_pipeline_matches(make_mlp, {8}, micro, ref, kTol);
}

TEST(Pipeline, CnnMatchesOneProcess) {
  const auto ref = train_reference(make_cnn, {1, 8, 8}, 8, 3, 1);
  for (int micro : {1, 2, 4}) expect_pipeline_matches(make_cnn, {1, 8, 8}, micro, ref, kTol);
  // Given split points: with 2 ranks the convolutions on one stage and the head on the other.
  if (W().size() == 2) expect_pipeline_matches(make_cnn, {1, 8, 8}, 2, ref, kTol, {5});
}

TEST(Pipeline, OneFOneBMatchesOneProcess) {
  const auto mlp_ref = train_reference(make_mlp, {8}, 8, 3, 1);
  const auto cnn_ref = train_reference(make_cnn, {1, 8, 8}, 8, 3, 1);
  for (int micro : {1, 2, 4, 8}) {
    expect_pipeline_matches(make_mlp, {8}, micro, mlp_ref, kTol, {}, PipelineSchedule::one_f_one_b);
    expect_pipeline_matches(make_cnn, {1, 8, 8}, micro, cnn_ref, kTol, {}, PipelineSchedule::one_f_one_b);
  }
}

// Activations of 2 x 40000 floats (320 kB) go out in MPI's rendezvous protocol, where a send
// waits for its receive: both schedules must still not deadlock and must still match.
std::shared_ptr<nn::Sequential> make_wide() {
  return std::dynamic_pointer_cast<nn::Sequential>(nn::models::mlp(8, {40000, 8}, 3, "tanh", 0.0, /*seed=*/5));
}

TEST(Pipeline, LargeActivationsDoNotDeadlock) {
  const auto ref = train_reference(make_wide, {8}, 8, 2, 1);
  for (auto schedule : {PipelineSchedule::gpipe, PipelineSchedule::one_f_one_b})
    expect_pipeline_matches(make_wide, {8}, 4, ref, kTol, {}, schedule);
}

// GPipe holds all M micro-batches' boundary activations; 1F1B at most S - s of them.
TEST(Pipeline, OneFOneBHoldsFewerActivations) {
  const int S = W().size(), s = W().rank(), M = 8;
  int64_t bytes[2];
  for (int i = 0; i < 2; ++i) {
    PipelineOptions po;
    po.micro_batches = M;
    po.schedule = i == 0 ? PipelineSchedule::gpipe : PipelineSchedule::one_f_one_b;
    Pipeline pipe(make_mlp(), W(), po);
    auto [x, y] = batch({8}, 16, 0);
    pipe.train_step(x, y, ce);
    bytes[i] = pipe.boundary_activation_bytes();
  }
  EXPECT_GT(bytes[1], 0);
  EXPECT_EQ(bytes[0] * std::min(S - s, M), bytes[1] * M) << "stage " << s;
}

TEST(Pipeline, OneMicroBatchIsBitwiseTheSingleProcessRun) {
  const auto ref = train_reference(make_cnn, {1, 8, 8}, 8, 3, 1);
  expect_pipeline_matches(make_cnn, {1, 8, 8}, 1, ref, 0.0);
}

// optimizer.clip_grad_norm over the stages: with M = 1 the stages' gradients are the one
// process's bit for bit, so the norm over every stage (added in the model's parameter order) and
// the clipped gradients must be bitwise optim::clip_grad_norm's on the whole model. A max_norm
// of a tenth of the norm binds; a max_norm above it leaves the gradients alone. With S x D grids
// (np 4: 2 x 2, 4 x 1) each replica takes its shard and the norm is that of the global mean.
TEST(Pipeline, ClipGradNormSpansEveryStageBitwise) {
  const Shape sample{1, 8, 8};
  const int64_t n = 8;
  auto [x, y] = batch(sample, n, 0);
  auto whole = make_cnn();
  cross_entropy(whole->forward(x), y).backward();
  std::map<std::string, Tensor> unclipped;
  for (auto& [name, p] : whole->named_parameters()) unclipped[name] = p.grad().clone();
  const double norm = optim::clip_grad_norm(whole->parameters(), 1e30);  // measures only
  ASSERT_GT(norm, 0);
  for (const double max_norm : {0.1 * norm, 10 * norm}) {
    // The reference: the whole model's gradients clipped by optim::clip_grad_norm.
    for (auto& [name, p] : whole->named_parameters()) p.set_grad(unclipped.at(name).clone());
    EXPECT_EQ(optim::clip_grad_norm(whole->parameters(), max_norm), norm);
    std::map<std::string, Tensor> want;
    for (auto& [name, p] : whole->named_parameters()) want[name] = p.grad();
    for (int stages = 2; stages <= W().size(); stages *= 2) {
      auto grid = make_pipeline_grid(W(), stages);
      Pipeline pipe(make_cnn(), grid);
      const int64_t shard = n / grid.replicas, lo = grid.replica * shard;
      pipe.train_step(x.slice(0, lo, lo + shard), y.slice(0, lo, lo + shard), ce);
      const double got = pipe.clip_grad_norm(max_norm);
      // Replicas average their shards' gradients, which rounds differently from one batch.
      const double tol = grid.replicas == 1 ? 0.0 : 1e-6;
      EXPECT_NEAR(got, norm, tol * norm) << stages << " stages x " << grid.replicas << " replicas";
      for (auto& [name, p] : pipe.stage().named_parameters())
        EXPECT_LE(rel_diff(p.grad(), want.at(name)), tol) << name << " on stage " << pipe.stage_index() << " of "
                                                          << stages << ", max_norm " << max_norm;
      if (max_norm < norm) {  // the clipped norm over every stage is max_norm (up to the 1e-6 epsilon)
        const double after = pipe.clip_grad_norm(1e30);
        EXPECT_NEAR(after, max_norm, 1e-5 * max_norm) << stages << " stages";
      }
    }
  }
  Pipeline pipe(make_cnn(), W());
  EXPECT_THROW(pipe.clip_grad_norm(0.0), Error);
}

// Batch norm in a stage sees one micro-batch at a time: the pipeline equals one
// process accumulating the same micro-batches (statistics per micro-batch,
// running statistics updated M times per step), not one process with the whole batch.
TEST(Pipeline, BatchNormNormalizesEachMicroBatch) {
  for (int micro : {1, 2, 4}) {
    const auto per_micro = train_reference(make_bn_cnn, {1, 8, 8}, 8, 3, micro);
    expect_pipeline_matches(make_bn_cnn, {1, 8, 8}, micro, per_micro, 1e-5);
  }
  // And the difference is real: with M = 2 the whole-batch run ends elsewhere.
  const auto whole = train_reference(make_bn_cnn, {1, 8, 8}, 8, 3, 1);
  const auto per_micro = train_reference(make_bn_cnn, {1, 8, 8}, 8, 3, 2);
  double d = 0;
  for (auto& [name, t] : whole.state) d = std::max(d, rel_diff(per_micro.state.at(name), t));
  EXPECT_GT(d, 1e-3);
}

TEST(Pipeline, MoreStagesThanLayersIsRefused) {
  auto tiny = std::make_shared<nn::Sequential>();
  tiny->push_back(std::make_shared<nn::Linear>(4, 2));
  try {
    Pipeline pipe(tiny, W());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stages (ranks) but the model has only 1 layers"), std::string::npos)
        << e.what();
  }
  PipelineOptions po;
  po.split_points.assign(W().size() - 1, 1);  // not increasing (np 4) or fine (np 2: one point)
  po.split_points.back() = 99;
  EXPECT_THROW(Pipeline(make_mlp(), W(), po), Error);
}

TEST(Pipeline, BatchNotDivisibleByMicroBatchesIsRefusedOnEveryRankAndRecovers) {
  PipelineOptions po;
  po.micro_batches = 4;
  Pipeline pipe(make_mlp(), W(), po);
  auto [x, y] = batch({8}, 6, 0);
  try {
    pipe.train_step(x, y, ce);
    FAIL() << "expected an error on rank " << W().rank();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stage 0 of"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("batch size 6 is not divisible by micro_batches = 4"), std::string::npos)
        << e.what();
  }
  for (auto& p : pipe.stage().parameters()) EXPECT_TRUE(p.grad().impl_ptr() == nullptr) << "a gradient leaked";
  // No message is left behind: the next, valid step gives the reference loss.
  const auto ref = train_reference(make_mlp, {8}, 8, 1, 1);
  auto [x8, y8] = batch({8}, 8, 0);
  EXPECT_NEAR(pipe.train_step(x8, y8, ce), ref.losses[0], 1e-5);
}

TEST(Pipeline, MismatchedShapesBetweenStagesAreNamed) {
  // Stage 1 (np 2) or stage 2 (np 4) starts with a Linear that wants 12 features but gets 16.
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Linear>(8, 16));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<nn::Linear>(12, 5));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<nn::Linear>(5, 3));
  PipelineOptions po;
  po.micro_batches = 2;
  po.split_points = W().size() == 2 ? std::vector<int64_t>{2} : std::vector<int64_t>{1, 2, 3};
  Pipeline pipe(net, W(), po);
  const int bad = W().size() == 2 ? 1 : 2;
  auto [x, y] = batch({8}, 4, 0);
  try {
    pipe.train_step(x, y, ce);
    FAIL() << "expected an error on rank " << W().rank();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(fmt::format("stage {} of {} (layers 2..", bad, W().size())), std::string::npos) << what;
    EXPECT_NE(what.find("on the input Tensor(float32, [2, 16]"), std::string::npos) << what;
  }
  // Forward-only inference reports it the same way.
  EXPECT_THROW(pipe.forward(x), Error);
}

// In 1F1B a failure is found only at the end of the batch, after some backwards ran:
// every rank raises it and the stage's gradients are dropped; the next batch works.
TEST(Pipeline, OneFOneBErrorsAreRaisedEverywhereAndDropTheGradients) {
  PipelineOptions po;
  po.micro_batches = 4;
  po.schedule = PipelineSchedule::one_f_one_b;
  Pipeline pipe(make_mlp(), W(), po);
  auto [x, y] = batch({8}, 8, 0);
  // Targets out of range in the last micro-batch only: the loss fails there.
  Tensor bad_y = y.clone();
  bad_y.data<int64_t>()[7] = 99;
  try {
    pipe.train_step(x, bad_y, ce);
    FAIL() << "expected an error on rank " << W().rank();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("stage {} of", W().size() - 1)), std::string::npos) << e.what();
  }
  for (auto& p : pipe.stage().parameters()) EXPECT_TRUE(p.grad().impl_ptr() == nullptr) << "a partial gradient stayed";
  const auto ref = train_reference(make_mlp, {8}, 8, 1, 1);
  EXPECT_NEAR(pipe.train_step(x, y, ce), ref.losses[0], 1e-5);
}

TEST(Pipeline, ForwardMatchesTheModel) {
  auto ref = make_cnn();
  auto [x, y] = batch({1, 8, 8}, 5, 3);
  Tensor expected = ref->forward(x);
  Pipeline pipe(make_cnn(), W());
  Tensor out = pipe.forward(pipe.is_first() ? x : Tensor());
  if (pipe.is_last()) EXPECT_EQ(rel_diff(out, expected), 0.0);
  else EXPECT_TRUE(out.impl_ptr() == nullptr);
}

// Pipeline x data: S stages x D replicas, each replica given its shard of the global
// batch, must train like one process on the whole batch.
void expect_grid_matches(int stages, int micro, PipelineSchedule schedule, const Reference& ref) {
  const Shape sample{1, 8, 8};
  const int64_t n = 8;
  auto grid = make_pipeline_grid(W(), stages);
  ASSERT_EQ(grid.replicas * stages, W().size());
  PipelineOptions po;
  po.micro_batches = micro;
  po.schedule = schedule;
  Pipeline pipe(make_cnn(), grid, po);
  ASSERT_EQ(pipe.num_stages(), stages);
  std::unique_ptr<optim::SGD> opt;
  if (pipe.stage().num_parameters() > 0) opt = std::make_unique<optim::SGD>(optim::param_specs(pipe.stage()), sgd());
  const int64_t shard = n / grid.replicas;
  const int steps = static_cast<int>(ref.losses.size());
  for (int k = 0; k < steps; ++k) {
    auto [x, y] = batch(sample, n, k);
    pipe.stage().zero_grad();
    const int64_t lo = grid.replica * shard;
    const double loss = pipe.train_step(x.slice(0, lo, lo + shard), y.slice(0, lo, lo + shard), ce);
    EXPECT_NEAR(loss, ref.losses[k], 1e-5 * std::max(1.0, std::abs(ref.losses[k]))) << "step " << k;
    if (k == 0)
      for (auto& [name, p] : pipe.stage().named_parameters())
        EXPECT_LE(rel_diff(p.grad(), ref.first_grads.at(name)), kTol)
            << "gradient of " << name << ": " << stages << " stages x " << grid.replicas << " replicas, M = " << micro;
    if (opt) opt->step();
  }
  for (auto& [name, t] : pipe.stage().state_dict())
    EXPECT_LE(rel_diff(t, ref.state.at(name)), kTol)
        << name << ": " << stages << " stages x " << grid.replicas << " replicas, M = " << micro;
}

TEST(Pipeline, PipelineTimesDataGridMatchesOneProcess) {
  const auto ref = train_reference(make_cnn, {1, 8, 8}, 8, 3, 1);
  for (int stages = 1; stages <= W().size(); stages *= 2)
    for (int micro : {1, 2})
      for (auto schedule : {PipelineSchedule::gpipe, PipelineSchedule::one_f_one_b})
        expect_grid_matches(stages, micro, schedule, ref);
}

// The 3-D layout (replicas x stages x tensor-parallel ranks): a stage's group is consecutive world
// ranks, a pipeline joins rank t of each stage's group in one replica, the data communicator the same
// slice of the same stage in every replica.
TEST(Pipeline, GridWithTensorParallelGroupsLaysRanksOut) {
  const int n = W().size(), r = W().rank();
  auto world_ranks = [](Communicator& c) {
    return c.allgather(Tensor::from_vector<int64_t>({static_cast<int64_t>(W().rank())}, {1})).to_vector<int64_t>();
  };
  for (int S : {1, 2})
    for (int P : {1, 2}) {
      if (n % (S * P) != 0) continue;
      auto g = make_pipeline_grid(W(), S, P);
      const int d = r / (S * P), s = (r / P) % S, t = r % P;
      EXPECT_EQ(g.replicas, n / (S * P));
      EXPECT_EQ(g.replica, d);
      std::vector<int64_t> want;
      for (int k = 0; k < S; ++k) want.push_back((d * S + k) * P + t);
      EXPECT_EQ(world_ranks(*g.pipeline), want) << "S " << S << " P " << P;
      want.clear();
      for (int k = 0; k < g.replicas; ++k) want.push_back((k * S + s) * P + t);
      EXPECT_EQ(world_ranks(*g.data), want) << "S " << S << " P " << P;
      if (P == 1) {
        EXPECT_EQ(g.tensor, nullptr);
        continue;
      }
      want.clear();
      for (int k = 0; k < P; ++k) want.push_back((d * S + s) * P + k);
      EXPECT_EQ(world_ranks(*g.tensor), want) << "S " << S << " P " << P;
    }
  if (n % 3 != 0) {
    try {
      make_pipeline_grid(W(), 1, 3);
      FAIL() << "3 tensor-parallel ranks accepted on " << n;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("pipelines of 1 stages of 3 tensor-parallel ranks each"), std::string::npos)
          << e.what();
    }
  }
}

TEST(Pipeline, GridErrorsAreRaisedOnEveryRankOfEveryReplica) {
  EXPECT_THROW(make_pipeline_grid(W(), 3), Error);  // 2 or 4 ranks are no multiple of 3
  const int stages = W().size() / 2;                 // 2 replicas
  auto grid = make_pipeline_grid(W(), stages);
  PipelineOptions po;
  po.micro_batches = 2;
  Pipeline pipe(make_cnn(), grid, po);
  // Replica 1 gets 3 samples, which 2 micro-batches cannot split; replica 0 is fine.
  auto [x, y] = batch({1, 8, 8}, grid.replica == 0 ? 4 : 3, 0);
  try {
    pipe.train_step(x, y, ce);
    FAIL() << "expected an error on rank " << W().rank();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(fmt::format("stage 0 of {} (layers 0..", stages)), std::string::npos) << what;
    EXPECT_NE(what.find(fmt::format("rank {}) of replica 1: batch size 3 is not divisible", stages)),
              std::string::npos)
        << what;
  }
}

// The replicas' average is bucketed and overlapped: with small buckets, every bucket of a stage
// but at most the last is launched from inside the last micro-batch's backward, the earlier
// micro-batches launch nothing, and the averaged gradients are still the one-process ones.
TEST(Pipeline, GridAveragesTheReplicasDuringTheLastBackward) {
  const int stages = W().size() / 2;  // 2 replicas
  const auto ref = train_reference(make_cnn, {1, 8, 8}, 8, 1, 1);
  for (auto schedule : {PipelineSchedule::gpipe, PipelineSchedule::one_f_one_b}) {
    auto grid = make_pipeline_grid(W(), stages);
    PipelineOptions po;
    po.micro_batches = 2;
    po.schedule = schedule;
    po.bucket_bytes = 256;  // the CNN's 3 KB in several buckets
    Pipeline pipe(make_cnn(), grid, po);
    DataParallel* dp = pipe.data_parallel();
    ASSERT_NE(dp, nullptr);
    const int buckets = dp->num_buckets();
    EXPECT_GE(buckets, 2) << "stage " << pipe.stage_index();
    // The caller's own zeroing (set_to_none here) and accumulation across steps both hold.
    auto [x, y] = batch({1, 8, 8}, 8, 0);
    const int64_t lo = grid.replica * 4;
    for (int rep = 1; rep <= 2; ++rep) {
      if (rep == 1) pipe.stage().zero_grad();
      const double loss = pipe.train_step(x.slice(0, lo, lo + 4), y.slice(0, lo, lo + 4), ce);
      EXPECT_NEAR(loss, ref.losses[0], 1e-5);
      EXPECT_GE(dp->launched_during_backward(), buckets - 1) << "stage " << pipe.stage_index() << " of " << stages;
      for (auto& [name, p] : pipe.stage().named_parameters()) {
        Tensor want = mul(ref.first_grads.at(name), static_cast<double>(rep));  // two steps add up
        EXPECT_LE(rel_diff(p.grad(), want), kTol) << name << " after " << rep << " step(s)";
      }
    }
  }
  // One replica: nothing to average.
  auto single = make_pipeline_grid(W(), W().size());
  Pipeline alone(make_cnn(), single);
  EXPECT_EQ(alone.data_parallel(), nullptr);
}

// A replica that fails inside a 1F1B step (its loss throws on the second micro-batch, after the
// other replica's last backward has launched its buckets) launches its own buckets on the way out,
// so the replicas' collectives stay paired: every rank raises, and the next step is exact.
TEST(Pipeline, GridFailureInTheLastMicroBatchKeepsTheReplicasPaired) {
  const int stages = W().size() / 2;
  const auto ref = train_reference(make_cnn, {1, 8, 8}, 8, 1, 1);
  auto grid = make_pipeline_grid(W(), stages);
  PipelineOptions po;
  po.micro_batches = 2;
  po.schedule = PipelineSchedule::one_f_one_b;
  po.bucket_bytes = 256;
  Pipeline pipe(make_cnn(), grid, po);
  auto [x, y] = batch({1, 8, 8}, 8, 0);
  const int64_t lo = grid.replica * 4;
  int calls = 0;
  auto flaky = [&](const Tensor& out, const Tensor& t) {
    HPDL_CHECK(!(grid.replica == 1 && ++calls == 2), "the loss of replica 1 fails on purpose");
    return ce(out, t);
  };
  pipe.stage().zero_grad();
  try {
    pipe.train_step(x.slice(0, lo, lo + 4), y.slice(0, lo, lo + 4), flaky);
    FAIL() << "expected an error on rank " << W().rank();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("of replica 1: "), std::string::npos) << what;
    EXPECT_NE(what.find("the loss of replica 1 fails on purpose"), std::string::npos) << what;
  }
  // The scenario is the one meant: replica 0's last stage launched from its hooks, replica 1's did not.
  if (pipe.is_last()) EXPECT_EQ(pipe.data_parallel()->launched_during_backward() > 0, grid.replica == 0);
  pipe.stage().zero_grad();
  const double loss = pipe.train_step(x.slice(0, lo, lo + 4), y.slice(0, lo, lo + 4), ce);
  EXPECT_NEAR(loss, ref.losses[0], 1e-5);
  for (auto& [name, p] : pipe.stage().named_parameters())
    EXPECT_LE(rel_diff(p.grad(), ref.first_grads.at(name)), kTol) << name << " after the failed step";
}

}  // namespace
}  // namespace hpdl::dist
