// Activation checkpointing (ops/checkpoint.h): a checkpointed segment must give
// the same gradients as the plain graph, bit for bit, for the inputs and the
// parameters used inside (MLP, conv/BN/ReLU residual block, transformer
// encoder layer with dropout); BatchNorm's running statistics and dropout's
// generators must end a step as after a plain one; gradcheck through it; and
// the edge cases (no input needs grad, several inputs/outputs, no_grad,
// nesting, create_graph and grad()) either work or throw naming the problem.
#include <gtest/gtest.h>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/core/random.h"
#include "hpdl/nn/blocks.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/transformer.h"
#include "hpdl/ops/ops.h"

namespace hpdl {
namespace {

// One step's gradients: the input's, then every parameter's, in order.
std::vector<std::vector<float>> step_grads(nn::Module& m, const Tensor& x_values, bool ckpt) {
  m.zero_grad();
  Tensor x = x_values.clone().set_requires_grad();
  Tensor y = ckpt ? checkpoint([&m](const Tensor& in) { return m.forward(in); }, x) : m.forward(x);
  // A loss that weighs every output element differently, so no gradient is uniform.
  Generator g(7);
  Tensor w = Tensor::randn(y.shape(), g);
  sum(mul(y, w)).backward();
  std::vector<std::vector<float>> out{x.grad().to_vector<float>()};
  for (auto& p : m.parameters()) out.push_back(p.grad().defined() ? p.grad().to_vector<float>() : std::vector<float>{});
  return out;
}

void expect_bitwise(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size()) << "gradient " << i;
    ASSERT_FALSE(a[i].empty()) << "gradient " << i << " missing";
    for (size_t j = 0; j < a[i].size(); ++j) ASSERT_EQ(a[i][j], b[i][j]) << "gradient " << i << " element " << j;
  }
}

TEST(ActivationCheckpoint, MlpGradientsBitwiseEqual) {
  auto net = nn::models::mlp(12, {16, 8}, 5, "tanh", 0.0, 3);
  Generator g(1);
  Tensor x = Tensor::randn({4, 12}, g);
  auto plain = step_grads(*net, x, false);
  auto ckpt = step_grads(*net, x, true);
  expect_bitwise(plain, ckpt);
}

TEST(ActivationCheckpoint, ResidualBlockGradientsAndRunningStatsEqual) {
  // Two identical blocks (same seed): the forward updates the running statistics,
  // so each path gets its own and both must end equal after one step.
  Generator ga(11), gb(11);
  auto plain_block = std::make_shared<nn::BasicBlock>(3, 6, 2, ga);
  auto ckpt_block = std::make_shared<nn::BasicBlock>(3, 6, 2, gb);
  Generator g(2);
  Tensor x = Tensor::randn({2, 3, 6, 6}, g);
  auto plain = step_grads(*plain_block, x, false);
  auto ckpt = step_grads(*ckpt_block, x, true);
  expect_bitwise(plain, ckpt);
  auto pb = plain_block->named_buffers(), cb = ckpt_block->named_buffers();
  ASSERT_EQ(pb.size(), cb.size());
  bool moved = false;
  for (size_t i = 0; i < pb.size(); ++i) {
    SCOPED_TRACE(pb[i].first);
    if (pb[i].second.dtype() == DType::i64) {
      EXPECT_EQ(pb[i].second.to_vector<int64_t>(), cb[i].second.to_vector<int64_t>());
      EXPECT_EQ(cb[i].second.to_vector<int64_t>()[0], 1) << "one batch counted, not two";
    } else {
      auto pv = pb[i].second.to_vector<float>(), cv = cb[i].second.to_vector<float>();
      EXPECT_EQ(pv, cv);
      for (float v : cv) moved = moved || (v != 0.0f && v != 1.0f);
    }
  }
  EXPECT_TRUE(moved) << "the running statistics were updated at all";
}

TEST(ActivationCheckpoint, TransformerLayerWithDropoutBitwiseEqual) {
  nn::TransformerEncoderLayerOptions o;
  o.dropout = 0.3;
  o.dim_feedforward = 24;
  Generator ga(5), gb(5);
  auto a = std::make_shared<nn::TransformerEncoderLayer>(8, 2, o, ga);
  auto b = std::make_shared<nn::TransformerEncoderLayer>(8, 2, o, gb);
  Generator g(3);
  Tensor x = Tensor::randn({2, 5, 8}, g);
  auto plain = step_grads(*a, x, false);
  auto ckpt = step_grads(*b, x, true);
  expect_bitwise(plain, ckpt);
  // Every dropout generator ends where the plain step left it: the recompute replays its draws and rewinds.
  auto ag = a->named_generators(), bg = b->named_generators();
  ASSERT_EQ(ag.size(), bg.size());
  ASSERT_FALSE(ag.empty());
  for (size_t i = 0; i < ag.size(); ++i) {
    EXPECT_GT(ag[i].second->offset(), 0u) << ag[i].first << " was drawn from";
    EXPECT_EQ(ag[i].second->offset(), bg[i].second->offset()) << ag[i].first;
  }
}

TEST(ActivationCheckpoint, DropoutMaskReplayedWithoutModules) {
  // The same generator drawn inside and after the segment: the recompute must
  // see the forward's mask, and the draw after it must be unaffected.
  auto segment = [](Generator& g) {
    return [&g](const Tensor& in) { return dropout(tanh(in), 0.5, true, g); };
  };
  Generator gen(9);
  Tensor x = Tensor::randn({64}, gen).set_requires_grad();
  Tensor y = checkpoint(segment(gen), x);
  Tensor after = Tensor::rand({4}, gen);
  sum(y).backward();
  Generator ref(9);
  Tensor xr = Tensor::randn({64}, ref).set_requires_grad();
  Tensor yr = segment(ref)(xr);
  Tensor after_ref = Tensor::rand({4}, ref);
  sum(yr).backward();
  EXPECT_EQ(y.to_vector<float>(), yr.to_vector<float>());
  EXPECT_EQ(x.grad().to_vector<float>(), xr.grad().to_vector<float>());
  EXPECT_EQ(after.to_vector<float>(), after_ref.to_vector<float>());
  EXPECT_EQ(gen.offset(), ref.offset());
}

TEST(ActivationCheckpoint, Gradcheck) {
  Generator g(4);
  Tensor a = Tensor::randn({3, 4}, g, 0, 1, DType::f64).set_requires_grad();
  Tensor w = Tensor::randn({4, 2}, g, 0, 1, DType::f64).set_requires_grad();
  auto seg = [](const std::vector<Tensor>& in) {
    Tensor h = tanh(matmul(in[0], in[1]));
    return std::vector<Tensor>{mul(h, h), sigmoid(h)};
  };
  auto f = [&seg](const std::vector<Tensor>& in) {
    auto outs = checkpoint(seg, in);
    return add(outs[0], mul(outs[1], 3.0));
  };
  GradcheckResult r = gradcheck(f, {a, w});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(ActivationCheckpoint, InputsWithoutGradParametersStillGetTheirs) {
  // The first segment of a network sees raw data: only the parameters inside need gradients.
  auto lin = std::make_shared<nn::Linear>(3, 2);
  Generator g(6);
  Tensor x = Tensor::randn({4, 3}, g);
  sum(lin->forward(x)).backward();
  auto plain = lin->weight.grad().to_vector<float>();
  lin->zero_grad();
  Tensor y = checkpoint([&lin](const Tensor& in) { return lin->forward(in); }, x);
  EXPECT_TRUE(y.requires_grad());
  sum(y).backward();
  EXPECT_EQ(lin->weight.grad().to_vector<float>(), plain);
  EXPECT_FALSE(x.grad().defined());
}

TEST(ActivationCheckpoint, SeveralInputsAndOutputsIdentityAndUnusedOutput) {
  Generator g(8);
  Tensor a = Tensor::randn({5}, g).set_requires_grad();
  Tensor b = Tensor::randn({5}, g).set_requires_grad();
  Tensor c = Tensor::randn({5}, g);  // no grad
  auto seg = [](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{mul(in[0], in[1]), in[0], add(in[1], in[2]), exp(in[2])};
  };
  auto outs = checkpoint(seg, {a, b, c});
  ASSERT_EQ(outs.size(), 4u);
  EXPECT_TRUE(a.is_leaf()) << "returning an input must not rewrite the input's history";
  // Output 3 receives no gradient; output 1 is the identity.
  sum(add(add(outs[0], mul(outs[1], 2.0)), outs[2])).backward();
  auto av = a.to_vector<float>(), bv = b.to_vector<float>();
  auto ga = a.grad().to_vector<float>(), gb = b.grad().to_vector<float>();
  for (size_t i = 0; i < av.size(); ++i) {
    EXPECT_FLOAT_EQ(ga[i], bv[i] + 2.0f);
    EXPECT_FLOAT_EQ(gb[i], av[i] + 1.0f);
  }
  EXPECT_FALSE(c.grad().defined());
}

TEST(ActivationCheckpoint, NoGradAndNesting) {
  Generator g(10);
  Tensor x = Tensor::randn({6}, g).set_requires_grad();
  {
    NoGradGuard ng;
    Tensor y = checkpoint([](const Tensor& in) { return exp(in); }, x);
    EXPECT_FALSE(y.requires_grad()) << "under no_grad a checkpoint is a plain call";
  }
  // A no_grad part inside the segment stays constant; a checkpoint nested in it works.
  auto seg = [](const Tensor& in) {
    Tensor k;
    {
      NoGradGuard ng;
      k = exp(in);
    }
    return mul(checkpoint([](const Tensor& v) { return sin(v); }, in), k);
  };
  Tensor y = checkpoint(seg, x);
  sum(y).backward();
  auto xv = x.to_vector<float>(), gx = x.grad().to_vector<float>();
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_FLOAT_EQ(gx[i], std::cos(xv[i]) * std::exp(xv[i]));
}

TEST(ActivationCheckpoint, CreateGraphRefused) {
  Generator g(12);
  Tensor x = Tensor::randn({3}, g).set_requires_grad();
  Tensor y = sum(checkpoint([](const Tensor& in) { return mul(in, in); }, x));
  try {
    grad({y}, {x}, {}, false, /*create_graph=*/true);
    FAIL() << "create_graph through a checkpoint must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("create_graph"), std::string::npos) << e.what();
  }
}

TEST(ActivationCheckpoint, GradLeavesParametersAloneAndRefusesInnerTensors) {
  auto lin = std::make_shared<nn::Linear>(3, 3);
  Generator g(13);
  Tensor x = Tensor::randn({2, 3}, g).set_requires_grad();
  Tensor y = sum(checkpoint([&lin](const Tensor& in) { return tanh(lin->forward(in)); }, x));
  auto dx = grad({y}, {x}, {}, /*retain_graph=*/true);
  EXPECT_FALSE(lin->weight.grad().defined()) << "grad() must not accumulate into .grad";
  Tensor yr = sum(tanh(lin->forward(x)));
  EXPECT_EQ(dx[0].to_vector<float>(), grad({yr}, {x})[0].to_vector<float>());
  try {
    grad({y}, {lin->weight});
    FAIL() << "grad() with respect to a parameter inside the segment must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inside a checkpointed segment"), std::string::npos) << e.what();
  }
}

// after_backward (ZeRO-3 releases a unit's parameters there): once per backward of the node, after
// the segment's parameters got their gradients; never in the forward or with grad mode off; also
// when the recompute throws, and under grad().
TEST(ActivationCheckpoint, AfterBackwardRunsOnceWhenTheNodeIsDone) {
  auto lin = std::make_shared<nn::Linear>(3, 2);
  Generator g(15);
  Tensor x = Tensor::randn({4, 3}, g).set_requires_grad();
  int after = 0, runs = 0;
  bool had_grad = false;
  auto fn = [&](const std::vector<Tensor>& in) {
    ++runs;
    return std::vector<Tensor>{tanh(lin->forward(in[0]))};
  };
  auto done = [&] { ++after, had_grad = lin->weight.grad().defined(); };
  Tensor y = checkpoint(fn, {x}, done)[0];
  EXPECT_EQ(after, 0) << "after_backward ran in the forward";
  sum(y).backward();
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(after, 1);
  EXPECT_TRUE(had_grad) << "after_backward ran before the segment's parameters got their gradients";
  {
    NoGradGuard ng;
    checkpoint(fn, {x}, done);
  }
  EXPECT_EQ(after, 1) << "after_backward ran with grad mode off";
  Tensor y2 = sum(checkpoint(fn, {x}, done)[0]);
  grad({y2}, {x});
  EXPECT_EQ(after, 2) << "after_backward did not run under grad()";
  int calls = 0;
  Tensor y3 = checkpoint(
      [&calls](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{++calls == 1 ? mul(in[0], 2.0) : sum(in[0])};
      },
      {x}, done)[0];
  EXPECT_THROW(sum(y3).backward(), Error);
  EXPECT_EQ(after, 3) << "after_backward did not run when the recompute threw";
}

TEST(ActivationCheckpoint, BadSegmentsNamed) {
  Generator g(14);
  Tensor x = Tensor::randn({3}, g).set_requires_grad();
  EXPECT_THROW(checkpoint([](const std::vector<Tensor>&) { return std::vector<Tensor>{}; }, {x}), Error);
  EXPECT_THROW(checkpoint([](const std::vector<Tensor>&) { return std::vector<Tensor>{Tensor()}; }, {x}), Error);
  // A segment that computes something else the second time is caught in backward.
  int calls = 0;
  Tensor y = checkpoint(
      [&calls](const Tensor& in) { return ++calls == 1 ? mul(in, 2.0) : sum(in); }, x);
  EXPECT_THROW(sum(y).backward(), Error);
}

}  // namespace
}  // namespace hpdl
