// Tensor parallelism across real ranks (np 2 and 4: P = world size): every
// sharded layer's output, input gradient and parameter gradients must equal the
// one-process layer built from the same full weights (its gradients sliced as
// the shards are), in float32 and float64; SGD on a tensor-parallel MLP must
// track the one-process run and its gathered state dict must load into the
// one-process model; the differentiable collectives pass a finite-difference
// gradcheck; a vit with split encoder layers computes the one-process loss and
// its AdamW state gathers to the one-process optimizer's and slices back
// bitwise; checkpointed encoder layers (recompute with the forward allreduce
// and per-rank dropout masks) match the uncheckpointed ones bitwise; bad sizes
// raise errors naming the layer, the size and P.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/gradcheck.h"
#include "hpdl/core/random.h"
#include "hpdl/dist/tensor_parallel.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/nn/transformer.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizer.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

// The largest |a - b| over the tensor, relative to the largest |b| (at least 1e-3).
double rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  if (va.size() != vb.size()) return 1e30;
  double d = 0, scale = 1e-3;
  for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i])), scale = std::max(scale, std::abs(vb[i]));
  return d / scale;
}

double tol_for(DType t) { return t == DType::f64 ? 1e-12 : 1e-6; }

// The split of every parameter of `m`, by full name (replicated when absent).
std::map<std::string, ShardSpec> specs_of(nn::Module& m) {
  std::map<std::string, ShardSpec> out;
  for (auto& [prefix, sub] : m.named_modules())
    if (auto* tp = dynamic_cast<TensorParallelModule*>(sub.get()))
      for (auto& [name, spec] : tp->shard_specs()) out[prefix.empty() ? name : prefix + "." + name] = spec;
  return out;
}

// Runs loss = sum(f(x) * proj) through the full and the sharded module and compares the output, dx
// and every parameter gradient (the full ones sliced like the shards). `x_part` maps the replicated
// x to what the sharded module takes (x itself, or this rank's columns).
template <typename FullFn, typename TpFn>
void expect_same_layer(nn::Module& full, nn::Module& tp, const Shape& x_shape, DType dtype, FullFn full_fwd,
                       TpFn tp_fwd, bool split_input = false, bool split_output = false, const char* what = "") {
  Generator g(42);
  Tensor x_full = Tensor::randn(x_shape, g, 0, 1, dtype).set_requires_grad();
  Tensor x_tp = split_input ? shard_tensor(x_full, {static_cast<int64_t>(x_shape.size()) - 1, 1}, W().rank(), W().size(), "x")
                            : x_full.detach().clone();
  x_tp.set_requires_grad();
  Tensor y_full = full_fwd(x_full);
  Tensor proj = Tensor::randn(y_full.shape(), g, 0, 1, dtype);
  sum(mul(y_full, proj)).backward();
  const ShardSpec last{y_full.ndim() - 1, 1};
  Tensor y_tp = tp_fwd(x_tp);
  Tensor proj_tp = split_output ? shard_tensor(proj, last, W().rank(), W().size(), "proj") : proj;
  sum(mul(y_tp, proj_tp)).backward();
  const double tol = tol_for(dtype);
  Tensor y_expect = split_output ? shard_tensor(y_full, last, W().rank(), W().size(), "y") : y_full;
  double worst = rel_diff(y_tp, y_expect);
  EXPECT_LE(rel_diff(y_tp, y_expect), tol) << what << ": output";
  Tensor dx_expect = split_input ? shard_tensor(x_full.grad(), {x_full.ndim() - 1, 1}, W().rank(), W().size(), "dx")
                                 : x_full.grad();
  ASSERT_TRUE(x_tp.grad().defined()) << what;
  worst = std::max(worst, rel_diff(x_tp.grad(), dx_expect));
  EXPECT_LE(rel_diff(x_tp.grad(), dx_expect), tol) << what << ": input gradient";
  auto specs = specs_of(tp);
  std::map<std::string, Tensor> full_params;
  for (auto& [name, p] : full.named_parameters()) full_params[name] = p;
  int compared = 0;
  for (auto& [name, p] : tp.named_parameters()) {
    ASSERT_TRUE(full_params.count(name)) << what << ": " << name << " is not a parameter of the full layer";
    ASSERT_TRUE(p.grad().defined()) << what << ": " << name << " has no gradient";
    const ShardSpec spec = specs.count(name) ? specs.at(name) : ShardSpec{};
    Tensor expect = shard_tensor(full_params.at(name).grad(), spec, W().rank(), W().size(), name);
    worst = std::max(worst, rel_diff(p.grad(), expect));
    EXPECT_LE(rel_diff(p.grad(), expect), tol) << what << ": gradient of " << name;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(full.named_parameters().size())) << what;
  if (W().rank() == 0)
    std::printf("  %s (%s, P = %d): largest relative difference %.2e\n", what, dtype_name(dtype), W().size(), worst);
}

// ---------------------------------------------------------------- collectives

// A per-rank weight, so that a collective that mixes up ranks shows.
Tensor rank_weight(const Shape& s) {
  Generator g(100 + W().rank());
  return Tensor::randn(s, g, 0, 1, DType::f64);
}

// x is replicated and every rank perturbs the same element at once, so each
// function here is a function of the replicated x: it enters through
// copy_to_tp (or scatter_to_tp) and leaves replicated.
TEST(TensorParallel, CollectivesPassGradcheck) {
  auto& c = W();
  const int P = c.size();
  Generator g(7);
  Tensor x = Tensor::randn({3, 4}, g, 0, 1, DType::f64);
  Tensor w = rank_weight({3, 4});
  // f, then g: sum_r w_r * x.
  auto copy_reduce = [&](const std::vector<Tensor>& in) { return reduce_from_tp(mul(copy_to_tp(in[0], c), w), c); };
  // f, then gather: [w_0 x, ..., w_{P-1} x] along the last dim.
  auto copy_gather = [&](const std::vector<Tensor>& in) { return gather_from_tp(mul(copy_to_tp(in[0], c), w), c); };
  // scatter, then g: sum_r w_r * x_r (x_r: rank r's columns).
  Tensor xs = Tensor::randn({3, 2 * P}, g, 0, 1, DType::f64);
  Tensor ws = rank_weight({3, 2});
  auto scatter_reduce = [&](const std::vector<Tensor>& in) { return reduce_from_tp(mul(scatter_to_tp(in[0], c), ws), c); };
  for (auto& [name, f, in] : std::vector<std::tuple<const char*, std::function<Tensor(const std::vector<Tensor>&)>, Tensor>>{
           {"copy_to_tp -> reduce_from_tp", copy_reduce, x},
           {"copy_to_tp -> gather_from_tp", copy_gather, x},
           {"scatter_to_tp -> reduce_from_tp", scatter_reduce, xs}}) {
    auto r = gradcheck(f, {in.clone().set_requires_grad()}, 1e-6, 1e-7, 1e-6);
    EXPECT_TRUE(r.ok) << name << ": " << r.message;
    if (c.rank() == 0) std::printf("  gradcheck %s: max abs error %.2e\n", name, r.max_abs_error);
  }
  // The forwards themselves.
  Tensor total = w.clone();
  c.allreduce(total);
  EXPECT_LE(rel_diff(copy_reduce({x}), mul(total, x)), 1e-12);
  Tensor all = c.allgather(mul(w, x));  // [P, 3, 4]
  Tensor gathered = copy_gather({x});
  ASSERT_EQ(shape_str(gathered.shape()), shape_str(Shape{3, 4 * P}));
  for (int r = 0; r < P; ++r) EXPECT_LE(rel_diff(gathered.slice(1, 4 * r, 4 * (r + 1)), all.select(0, r)), 0.0);
}

// The collectives' backwards are differentiable too: a second derivative through f and g.
TEST(TensorParallel, CollectivesAreTwiceDifferentiable) {
  auto& c = W();
  Generator g(8);
  Tensor x = Tensor::randn({5}, g, 0, 1, DType::f64).set_requires_grad();
  Tensor w = rank_weight({5});
  // y = sum(tanh(sum_r w_r x)), replicated; d2y/dx2 checked by gradcheck of dy/dx.
  auto grad_fn = [&](const std::vector<Tensor>& in) {
    Tensor y = sum(tanh(reduce_from_tp(mul(copy_to_tp(in[0], c), w), c)));
    return hpdl::grad({y}, {in[0]}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  };
  auto r = gradcheck(grad_fn, {x}, 1e-6, 1e-7, 1e-6);
  EXPECT_TRUE(r.ok) << r.message;
}

// ---------------------------------------------------------------- layers

TEST(TensorParallel, ColumnParallelLinearMatchesLinear) {
  const int64_t out = 4 * W().size();
  for (DType dt : {DType::f32, DType::f64})
    for (bool gather : {false, true}) {
      Generator g(3);
      auto full = std::make_shared<nn::Linear>(6, out, true, g);
      full->to(dt);
      auto tp = std::make_shared<ColumnParallelLinear>(*full, W(), gather);
      EXPECT_EQ(shape_str(tp->weight.shape()), shape_str(Shape{4, 6}));
      expect_same_layer(*full, *tp, {5, 6}, dt, [&](const Tensor& x) { return full->forward(x); },
                        [&](const Tensor& x) { return tp->forward(x); }, false, !gather,
                        gather ? "ColumnParallelLinear (gather_output)" : "ColumnParallelLinear");
    }
}

TEST(TensorParallel, RowParallelLinearMatchesLinear) {
  const int64_t in = 3 * W().size();
  for (DType dt : {DType::f32, DType::f64})
    for (bool parallel_input : {true, false}) {
      Generator g(4);
      auto full = std::make_shared<nn::Linear>(in, 5, true, g);
      full->to(dt);
      auto tp = std::make_shared<RowParallelLinear>(*full, W(), parallel_input);
      EXPECT_EQ(shape_str(tp->weight.shape()), shape_str(Shape{5, 3}));
      expect_same_layer(*full, *tp, {2, 4, in}, dt, [&](const Tensor& x) { return full->forward(x); },
                        [&](const Tensor& x) { return tp->forward(x); }, parallel_input, false,
                        parallel_input ? "RowParallelLinear (split input)" : "RowParallelLinear (replicated input)");
    }
}

TEST(TensorParallel, ParallelMlpMatchesTwoLinears) {
  for (DType dt : {DType::f32, DType::f64})
    for (const char* act : {"relu", "gelu"}) {
      Generator g(5);
      auto full = std::make_shared<nn::Sequential>();
      auto l1 = std::make_shared<nn::Linear>(8, 8 * W().size(), true, g);
      auto l2 = std::make_shared<nn::Linear>(8 * W().size(), 8, true, g);
      full->push_back(l1);
      full->push_back(nn::make_activation(act));
      full->push_back(l2);
      full->to(dt);
      auto tp = std::make_shared<ParallelMLP>(*l1, *l2, W(), act);
      // The full model's names are 0.* and 2.*; compare through a renamed view.
      struct Named : nn::Module {
        Named(nn::ModulePtr a, nn::ModulePtr b) {
          register_module("linear1", a);
          register_module("linear2", b);
        }
        Tensor forward(const Tensor& x) override { return x; }
        std::string type_name() const override { return "Named"; }
      };
      auto named = std::make_shared<Named>(l1, l2);
      expect_same_layer(*named, *tp, {3, 2, 8}, dt, [&](const Tensor& x) { return full->forward(x); },
                        [&](const Tensor& x) { return tp->forward(x); }, false, false,
                        (std::string("ParallelMLP ") + act).c_str());
    }
}

TEST(TensorParallel, ParallelSelfAttentionMatchesMultiheadAttention) {
  const int64_t H = 2 * W().size(), E = 3 * H;
  for (DType dt : {DType::f32, DType::f64})
    for (bool causal : {false, true}) {
      Generator g(6);
      auto full = std::make_shared<nn::MultiheadAttention>(E, H, 0.0, true, g);
      full->causal = causal;
      full->to(dt);
      // Non-zero biases, so their gradients and slicing are exercised.
      {
        NoGradGuard ng;
        full->in_proj_bias.copy_(Tensor::randn({3 * E}, g, 0, 0.5, dt));
        full->out_proj->bias.copy_(Tensor::randn({E}, g, 0, 0.5, dt));
      }
      auto tp = std::make_shared<ParallelSelfAttention>(*full, W());
      EXPECT_EQ(tp->local_heads, 2);
      EXPECT_EQ(shape_str(tp->in_proj_weight.shape()), shape_str(Shape{3 * E / W().size(), E}));
      expect_same_layer(*full, *tp, {2, 5, E}, dt, [&](const Tensor& x) { return full->forward(x); },
                        [&](const Tensor& x) { return tp->forward(x); }, false, false,
                        causal ? "ParallelSelfAttention (causal)" : "ParallelSelfAttention");
    }
}

TEST(TensorParallel, ParallelEncoderLayerMatchesTransformerEncoderLayer) {
  const int64_t H = 2 * W().size(), E = 2 * H;
  for (DType dt : {DType::f32, DType::f64})
    for (bool norm_first : {true, false}) {
      Generator g(9);
      nn::TransformerEncoderLayerOptions o;
      o.dim_feedforward = 4 * W().size();
      o.dropout = 0.0;
      o.norm_first = norm_first;
      o.activation = "gelu";
      auto full = std::make_shared<nn::TransformerEncoderLayer>(E, H, o, g);
      full->to(dt);
      auto tp = std::make_shared<ParallelTransformerEncoderLayer>(*full, W());
      expect_same_layer(*full, *tp, {2, 3, E}, dt, [&](const Tensor& x) { return full->forward(x); },
                        [&](const Tensor& x) { return tp->forward(x); }, false, false,
                        norm_first ? "ParallelTransformerEncoderLayer (pre-norm)"
                                   : "ParallelTransformerEncoderLayer (post-norm)");
    }
}

// Activation checkpointing of tensor-parallel encoder layers (each layer one segment): the
// recompute runs the layer's forward allreduce again inside backward, and must draw the same
// per-rank dropout masks (attention, split hidden activation) as the forward did. Two
// micro-batches in 1F1B order (both forwards, then both backwards: micro-batch 0's recompute
// comes after micro-batch 1 has drawn its masks) give the outputs, input gradients, parameter
// gradients and generator states of the uncheckpointed stack, bit for bit.
TEST(TensorParallel, CheckpointedEncoderLayersMatchBitwise) {
  const int64_t H = 2 * W().size(), E = 2 * H;
  auto build = [&] {
    Generator g(41);
    nn::TransformerEncoderLayerOptions o;
    o.dim_feedforward = 4 * W().size();
    o.dropout = 0.3;
    auto stack = std::make_shared<nn::Sequential>();
    for (int i = 0; i < 2; ++i) {
      o.seed = 5 + static_cast<uint64_t>(i);
      nn::TransformerEncoderLayer full(E, H, o, g);
      stack->push_back(std::make_shared<ParallelTransformerEncoderLayer>(full, W()));
    }
    stack->train();
    return stack;
  };
  auto plain = build(), ckpt = build();
  ckpt->set_checkpoint_chunk(1);
  Generator gx(42);
  std::vector<Tensor> xs, ws;
  for (int m = 0; m < 2; ++m) xs.push_back(Tensor::randn({2, 3, E}, gx)), ws.push_back(Tensor::randn({2, 3, E}, gx));
  auto run = [&](nn::Sequential& net, std::vector<Tensor>& outs, std::vector<Tensor>& dxs) {
    std::vector<Tensor> in, loss;
    for (int m = 0; m < 2; ++m) {
      in.push_back(xs[m].detach());
      in[m].set_requires_grad(true);
      outs.push_back(net.forward(in[m]));
      loss.push_back(sum(mul(outs[m], ws[m])));
    }
    for (int m = 0; m < 2; ++m) loss[m].backward(), dxs.push_back(in[m].grad());
  };
  std::vector<Tensor> y_plain, y_ckpt, dx_plain, dx_ckpt;
  run(*plain, y_plain, dx_plain);
  run(*ckpt, y_ckpt, dx_ckpt);
  for (int m = 0; m < 2; ++m) {
    EXPECT_EQ(y_ckpt[m].to_vector<float>(), y_plain[m].to_vector<float>()) << "output of micro-batch " << m;
    ASSERT_TRUE(dx_ckpt[m].defined()) << m;
    EXPECT_EQ(dx_ckpt[m].to_vector<float>(), dx_plain[m].to_vector<float>()) << "input gradient of micro-batch " << m;
  }
  auto pp = plain->named_parameters(), pc = ckpt->named_parameters();
  ASSERT_EQ(pp.size(), pc.size());
  for (size_t i = 0; i < pp.size(); ++i) {
    ASSERT_TRUE(pc[i].second.grad().defined()) << pc[i].first;
    EXPECT_EQ(pc[i].second.grad().to_vector<float>(), pp[i].second.grad().to_vector<float>()) << pp[i].first;
  }
  auto gp = plain->named_generators(), gc = ckpt->named_generators();
  ASSERT_EQ(gp.size(), gc.size());
  for (size_t i = 0; i < gp.size(); ++i)
    EXPECT_EQ(gc[i].second->offset(), gp[i].second->offset()) << gp[i].first;
  // Dropout was on: the eval-mode output of micro-batch 0 differs from the training one.
  NoGradGuard ng;
  plain->eval();
  EXPECT_NE(plain->forward(xs[0]).to_vector<float>(), y_plain[0].to_vector<float>());
}

// An additive float mask [T, T] goes to every rank's heads alike.
TEST(TensorParallel, ParallelSelfAttentionTakesAMask) {
  const int64_t H = 2 * W().size(), E = 2 * H, T = 4;
  Generator g(10);
  auto full = std::make_shared<nn::MultiheadAttention>(E, H, 0.0, true, g);
  full->to(DType::f64);
  auto tp = std::make_shared<ParallelSelfAttention>(*full, W());
  Tensor mask = Tensor::randn({T, T}, g, 0, 1, DType::f64);
  expect_same_layer(*full, *tp, {2, T, E}, DType::f64, [&](const Tensor& x) { return full->forward(x, mask); },
                    [&](const Tensor& x) { return tp->forward(x, mask); }, false, false,
                    "ParallelSelfAttention (masked)");
}

// ---------------------------------------------------------------- training and state dicts

// load_full_state_dict slices q, k and v rows apart and gather_full_state_dict puts them back:
// a round trip through the shards is exact, and the sharded layer then computes the new weights' output.
TEST(TensorParallel, EncoderLayerStateDictRoundTrip) {
  const int64_t H = 2 * W().size(), E = 2 * H;
  nn::TransformerEncoderLayerOptions o;
  o.dim_feedforward = 4 * W().size();
  o.dropout = 0.0;
  Generator g1(31), g2(32);
  auto first = std::make_shared<nn::TransformerEncoderLayer>(E, H, o, g1);
  auto other = std::make_shared<nn::TransformerEncoderLayer>(E, H, o, g2);
  {
    NoGradGuard ng;  // non-zero biases, so a misplaced bias slice shows
    for (auto& [name, t] : other->named_parameters())
      if (name.find("bias") != std::string::npos) t.copy_(Tensor::randn(t.shape(), g2));
  }
  auto tp = std::make_shared<ParallelTransformerEncoderLayer>(*first, W());
  load_full_state_dict(*tp, other->state_dict());
  auto gathered = gather_full_state_dict(*tp);
  auto expect = other->state_dict();
  ASSERT_EQ(gathered.size(), expect.size());
  for (auto& [name, t] : expect) {
    ASSERT_TRUE(gathered.count(name)) << name;
    EXPECT_EQ(rel_diff(gathered.at(name), t), 0.0) << name;
  }
  Tensor x = Tensor::randn({2, 3, E}, g1);
  EXPECT_LE(rel_diff(tp->forward(x), other->forward(x)), 1e-6);
  EXPECT_GT(rel_diff(tp->forward(x), first->forward(x)), 1e-3);
}

// A layer without bias has no bias key to gather or load.
TEST(TensorParallel, LayersWithoutBias) {
  Generator g(33);
  auto full = std::make_shared<nn::Linear>(4, 2 * W().size(), false, g);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<ColumnParallelLinear>(*full, W()));
  auto gathered = gather_full_state_dict(*net);
  ASSERT_EQ(gathered.size(), 1u);
  EXPECT_EQ(rel_diff(gathered.at("0.weight"), full->weight), 0.0);
  std::map<std::string, Tensor> state{{"0.weight", mul(full->weight.detach(), 2.0)}};
  load_full_state_dict(*net, state);
  EXPECT_EQ(rel_diff(gather_full_state_dict(*net).at("0.weight"), state.at("0.weight")), 0.0);
}

// 6 -> 16 (column) -> tanh -> 12 (row) -> tanh -> 3 (replicated).
std::shared_ptr<nn::Sequential> make_full_mlp() {
  Generator g(21);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Linear>(6, 16, true, g));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<nn::Linear>(16, 12, true, g));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<nn::Linear>(12, 3, true, g));
  return net;
}

std::shared_ptr<nn::Sequential> make_tp_mlp(nn::Sequential& full) {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<ColumnParallelLinear>(*std::dynamic_pointer_cast<nn::Linear>(full.children()[0].second), W()));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<RowParallelLinear>(*std::dynamic_pointer_cast<nn::Linear>(full.children()[2].second), W()));
  net->push_back(std::make_shared<nn::Tanh>());
  net->push_back(std::make_shared<nn::Linear>(12, 3));
  // The replicated head is not sharded: load_full_state_dict copies it (and re-slices the rest).
  load_full_state_dict(*net, full.state_dict());
  return net;
}

std::pair<Tensor, Tensor> batch(int k) {
  Generator g(500 + k);
  Tensor x = Tensor::randn({8, 6}, g);
  std::vector<int64_t> y(8);
  for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
  return {x, Tensor::from_vector(y, {8})};
}

TEST(TensorParallel, SgdStepsMatchOneProcessAndStateDictGathers) {
  optim::SGDOptions so;
  so.lr = 0.1;
  so.momentum = 0.9;
  auto full = make_full_mlp();
  auto tp = make_tp_mlp(*full);
  // Parameters per rank: the split layers hold 1/P of their weights.
  EXPECT_LT(tp->num_parameters(), full->num_parameters());
  optim::SGD opt_full(optim::param_specs(*full), so), opt_tp(optim::param_specs(*tp), so);
  double worst_loss = 0;
  for (int k = 0; k < 4; ++k) {
    auto [x, y] = batch(k);
    full->zero_grad();
    tp->zero_grad();
    Tensor lf = cross_entropy(full->forward(x), y);
    Tensor lt = cross_entropy(tp->forward(x), y);
    lf.backward();
    lt.backward();
    worst_loss = std::max(worst_loss, std::abs(lt.item() - lf.item()));
    EXPECT_NEAR(lt.item(), lf.item(), 1e-6 * std::max(1.0, std::abs(lf.item()))) << "step " << k;
    opt_full.step();
    opt_tp.step();
  }
  auto gathered = gather_full_state_dict(*tp);
  auto ref = full->state_dict();
  ASSERT_EQ(gathered.size(), ref.size());
  double worst = 0;
  for (auto& [name, t] : ref) {
    ASSERT_TRUE(gathered.count(name)) << name;
    worst = std::max(worst, rel_diff(gathered.at(name), t));
    EXPECT_LE(rel_diff(gathered.at(name), t), 1e-6) << name << " after 4 steps";
  }
  // Training moved the weights (the comparison above is not of the initial state).
  auto initial = make_full_mlp()->state_dict();
  EXPECT_GT(rel_diff(gathered.at("0.weight"), initial.at("0.weight")), 1e-3);
  // The gathered dict loads into a one-process model, which then computes what the TP model does.
  auto fresh = make_full_mlp();
  fresh->load_state_dict(gathered, /*strict=*/true);
  auto [x, y] = batch(9);
  EXPECT_LE(rel_diff(tp->forward(x), fresh->forward(x)), 1e-6);
  if (W().rank() == 0)
    std::printf("  SGD x4, P = %d: largest loss difference %.2e, state %.2e\n", W().size(), worst_loss, worst);
}

// ---------------------------------------------------------------- whole model, optimizer state

// A vit whose encoder layers are split over the world: the same logits and loss as the one-process
// model; after an AdamW step its optimizer state, gathered, is the one-process optimizer's (moments
// of split weights reassembled like the weights) and slices back to this rank's state bit for bit.
TEST(TensorParallel, ParallelVitAndItsOptimizerStateMatchOneProcess) {
  nn::models::VitOptions vo;
  vo.patch_size = 7, vo.dim = 16, vo.depth = 2, vo.heads = 4, vo.mlp_ratio = 2.0, vo.seed = 3;
  auto full = std::make_shared<nn::models::VisionTransformer>(vo);
  auto source = std::make_shared<nn::models::VisionTransformer>(vo);  // the same weights (same seed)
  auto tp = std::make_shared<ParallelVisionTransformer>(*source, W());
  source.reset();
  EXPECT_LT(tp->num_parameters(), full->num_parameters());
  // Names and order of parameters are the full model's.
  auto fp = full->named_parameters(), tpp = tp->named_parameters();
  ASSERT_EQ(fp.size(), tpp.size());
  for (size_t i = 0; i < fp.size(); ++i) EXPECT_EQ(fp[i].first, tpp[i].first);
  Generator g(5);
  Tensor x = Tensor::randn({3, 1, 28, 28}, g);
  Tensor y = Tensor::from_vector<int64_t>({1, 7, 2}, {3});
  optim::AdamWOptions ao;
  ao.lr = 1e-2;
  optim::AdamW opt_full(optim::param_specs(*full), ao), opt_tp(optim::param_specs(*tp), ao);
  Tensor lf = cross_entropy(full->forward(x), y), lt = cross_entropy(tp->forward(x), y);
  EXPECT_NEAR(lt.item(), lf.item(), 1e-6 * std::max(1.0, std::abs(lf.item())));
  lf.backward();
  lt.backward();
  opt_full.step();
  opt_tp.step();
  const auto mine = opt_tp.state_dict();
  const auto gathered = gather_full_optimizer_state(*tp, mine);
  const auto ref = opt_full.state_dict();
  ASSERT_EQ(gathered.size(), ref.size());
  const auto split = sharded_parameters(*tp);
  EXPECT_EQ(split.count("blocks.0.self_attn.in_proj_weight"), 1u);
  EXPECT_EQ(split.count("head.weight"), 0u);
  for (auto& [key, t] : ref) {
    ASSERT_TRUE(gathered.count(key)) << key;
    if (t.dtype() == DType::f32) {
      EXPECT_LE(rel_diff(gathered.at(key), t), 1e-5) << key;  // only summation order differs
    } else {
      EXPECT_EQ(gathered.at(key).item(), t.item()) << key;
    }
  }
  // Back to this rank's slices, bitwise.
  const auto again = shard_optimizer_state(*tp, gathered);
  ASSERT_EQ(again.size(), mine.size());
  for (auto& [key, t] : mine) {
    ASSERT_TRUE(again.count(key)) << key;
    ASSERT_EQ(shape_str(again.at(key).shape()), shape_str(t.shape())) << key;
    EXPECT_EQ(rel_diff(again.at(key), t), 0.0) << key;
  }
}

// optimizer.clip_grad_norm with split layers: the norm over every rank's slices (replicated
// parameters once) is the one-process model's, and the clipped gradients are its clipped
// gradients sliced; only the order of float sums differs (measured: ~1e-7 relative).
TEST(TensorParallel, ClipGradNormIsTheFullModels) {
  nn::models::VitOptions vo;
  vo.patch_size = 7, vo.dim = 16, vo.depth = 2, vo.heads = 4, vo.mlp_ratio = 2.0, vo.seed = 9;
  Generator g(6);
  Tensor x = Tensor::randn({3, 1, 28, 28}, g);
  Tensor y = Tensor::from_vector<int64_t>({4, 0, 9}, {3});
  auto full = std::make_shared<nn::models::VisionTransformer>(vo);
  cross_entropy(full->forward(x), y).backward();
  std::map<std::string, Tensor> unclipped;
  for (auto& [name, p] : full->named_parameters()) unclipped[name] = p.grad().clone();
  const double norm = optim::clip_grad_norm(full->parameters(), 1e30);  // measures only
  const auto specs = [&] {
    auto source = std::make_shared<nn::models::VisionTransformer>(vo);
    auto probe = std::make_shared<ParallelVisionTransformer>(*source, W());
    return specs_of(*probe);
  }();
  ASSERT_FALSE(specs.empty());
  for (const double max_norm : {0.1 * norm, 10 * norm}) {
    for (auto& [name, p] : full->named_parameters()) p.set_grad(unclipped.at(name).clone());
    optim::clip_grad_norm(full->parameters(), max_norm);
    auto source = std::make_shared<nn::models::VisionTransformer>(vo);
    auto tp = std::make_shared<ParallelVisionTransformer>(*source, W());
    source.reset();
    cross_entropy(tp->forward(x), y).backward();
    const double got = clip_grad_norm(*tp, W(), max_norm);
    EXPECT_NEAR(got, norm, 1e-6 * norm) << "max_norm " << max_norm;
    std::map<std::string, Tensor> want;
    for (auto& [name, p] : full->named_parameters()) want[name] = p.grad();
    double worst = 0;
    for (auto& [name, p] : tp->named_parameters()) {
      const ShardSpec spec = specs.count(name) ? specs.at(name) : ShardSpec{};
      const double d = rel_diff(p.grad(), shard_tensor(want.at(name), spec, W().rank(), W().size(), name));
      worst = std::max(worst, d);
      EXPECT_LE(d, 1e-5) << name << ", max_norm " << max_norm;
    }
    if (max_norm < norm) {  // clipped: the full model's norm is now max_norm (up to the 1e-6 epsilon)
      EXPECT_NEAR(clip_grad_norm(*tp, W(), 1e30), max_norm, 1e-5 * max_norm);
    }
    if (W().rank() == 0)
      std::printf("  clip (P = %d, max_norm %.3g): norm %.9g vs %.9g, largest gradient difference %.2e\n", W().size(),
                  max_norm, got, norm, worst);
  }
  auto source = std::make_shared<nn::models::VisionTransformer>(vo);
  auto tp = std::make_shared<ParallelVisionTransformer>(*source, W());
  EXPECT_THROW(clip_grad_norm(*tp, W(), 0.0), Error);
}

// ---------------------------------------------------------------- errors

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TensorParallel, NamedErrors) {
  const int P = W().size();
  const std::string p = "P = " + std::to_string(P);
  nn::Linear odd_out(4, 2 * P + 1);
  auto msg = error_of([&] { ColumnParallelLinear l(odd_out, W(), false, "head.fc1"); });
  EXPECT_NE(msg.find("head.fc1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("out_features " + std::to_string(2 * P + 1)), std::string::npos) << msg;
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  nn::Linear odd_in(2 * P + 1, 4);
  msg = error_of([&] { RowParallelLinear l(odd_in, W()); });
  EXPECT_NE(msg.find("RowParallelLinear"), std::string::npos) << msg;
  EXPECT_NE(msg.find("in_features " + std::to_string(2 * P + 1)), std::string::npos) << msg;
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  nn::MultiheadAttention odd_heads(3, 3);
  msg = error_of([&] { ParallelSelfAttention a(odd_heads, W()); });
  EXPECT_NE(msg.find("ParallelSelfAttention"), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_heads 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  // Wrong input width, and a dtype the collectives do not carry.
  nn::Linear ok(4, 2 * P);
  ColumnParallelLinear col(ok, W());
  msg = error_of([&] { col(Tensor::zeros({2, 5})); });
  EXPECT_NE(msg.find("must end in 4 features"), std::string::npos) << msg;
  msg = error_of([&] { copy_to_tp(Tensor::zeros({2}, DType::i64), W()); });
  EXPECT_NE(msg.find("copy_to_tp"), std::string::npos) << msg;
  EXPECT_NE(msg.find("int64"), std::string::npos) << msg;
  msg = error_of([&] { scatter_to_tp(Tensor::zeros({2, 2 * P + 1}), W()); });
  EXPECT_NE(msg.find("not divisible"), std::string::npos) << msg;
  // A state dict without a sharded layer's key.
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<ColumnParallelLinear>(ok, W()));
  msg = error_of([&] { load_full_state_dict(*net, {}); });
  EXPECT_NE(msg.find("has no \"0."), std::string::npos) << msg;
  EXPECT_NE(msg.find("ColumnParallelLinear"), std::string::npos) << msg;
}

}  // namespace
}  // namespace hpdl::dist
