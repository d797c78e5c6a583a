// nn::LSTM and nn::GRU: PyTorch's parameter names, shapes and counts, the
// default init range, batch_first, state-dict round trips through
// safetensors, errors that name the layer, a small sequence task that only an
// RNN with memory can learn, and the row-by-row classifier of the model zoo.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <unistd.h>

#include "hpdl/autograd/engine.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/nn.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"
#include "tests/unit/nn/torch_check.h"

namespace hpdl::nn {
namespace {

TEST(RnnLayers, LstmParametersFollowPyTorch) {
  Generator gen(1);
  LSTM lstm(5, 7, {2, true}, gen);
  auto named = lstm.named_parameters();
  std::vector<std::string> want{"weight_ih_l0",         "weight_hh_l0",         "bias_ih_l0",
                                "bias_hh_l0",           "weight_ih_l0_reverse", "weight_hh_l0_reverse",
                                "bias_ih_l0_reverse",   "bias_hh_l0_reverse",   "weight_ih_l1",
                                "weight_hh_l1",         "bias_ih_l1",           "bias_hh_l1",
                                "weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse",
                                "bias_hh_l1_reverse"};
  ASSERT_EQ(named.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(named[i].first, want[i]);
  EXPECT_EQ(named[0].second.shape(), (Shape{28, 5}));
  EXPECT_EQ(named[1].second.shape(), (Shape{28, 7}));
  EXPECT_EQ(named[2].second.shape(), (Shape{28}));
  EXPECT_EQ(named[8].second.shape(), (Shape{28, 14}));  // layer 1 reads both directions
  // torch.nn.LSTM(28, 128).parameters() count: 4*128*(28 + 128 + 2)
  EXPECT_EQ(LSTM(28, 128).num_parameters(), 80896);
  EXPECT_EQ(GRU(28, 128).num_parameters(), 3 * 128 * (28 + 128 + 2));
  for (const auto& [name, p] : named) EXPECT_TRUE(p.requires_grad()) << name;
}

TEST(RnnLayers, DefaultInitIsUniformInInverseSqrtHidden) {
  Generator gen(2);
  GRU gru(16, 64, {}, gen);
  const double bound = 1.0 / 8.0;
  for (const auto& [name, p] : gru.named_parameters()) {
    auto v = p.to_vector<double>();
    double lo = 1, hi = -1, sq = 0;
    for (double x : v) lo = std::min(lo, x), hi = std::max(hi, x), sq += x * x;
    EXPECT_GE(lo, -bound) << name;
    EXPECT_LE(hi, bound) << name;
    EXPECT_GT(hi, 0.9 * bound) << name;  // spread over the whole range, not a constant
    EXPECT_LT(lo, -0.9 * bound) << name;
    EXPECT_NEAR(std::sqrt(sq / static_cast<double>(v.size())), bound / std::sqrt(3.0), 0.15 * bound) << name;
  }
}

TEST(RnnLayers, BatchFirstIsTheTransposedTimeMajorRun) {
  Generator g1(3), g2(3), gx(4);
  LSTM tm(3, 5, {2}, g1);
  LSTM bf(3, 5, {2, false, true}, g2);
  Tensor x = Tensor::randn({6, 4, 3}, gx);  // [T, N, I]
  RnnResult a = tm.forward_state(x);
  RnnResult b = bf.forward_state(x.transpose(0, 1));
  ASSERT_EQ(b.output.shape(), (Shape{4, 6, 5}));
  EXPECT_EQ(a.output.transpose(0, 1).contiguous().to_vector<float>(), b.output.contiguous().to_vector<float>());
  EXPECT_EQ(a.h_n.to_vector<float>(), b.h_n.to_vector<float>());
  EXPECT_EQ(a.c_n.to_vector<float>(), b.c_n.to_vector<float>());
  EXPECT_EQ(tm.forward(x).shape(), (Shape{6, 4, 5}));
}

TEST(RnnLayers, StateDictRoundTripsThroughSafetensors) {
  Generator g1(5), g2(6), gx(7);
  GRU a(4, 6, {1, true}, g1), b(4, 6, {1, true}, g2);
  Tensor x = Tensor::randn({5, 2, 4}, gx);
  ASSERT_NE(a.forward(x).to_vector<float>(), b.forward(x).to_vector<float>());
  auto dir = std::filesystem::temp_directory_path() / ("hpdl_rnn_sd_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  io::save_safetensors(dir / "gru.safetensors", a.state_dict());
  auto file = io::load_safetensors(dir / "gru.safetensors");
  b.load_state_dict(file.tensors);
  EXPECT_EQ(a.forward(x).to_vector<float>(), b.forward(x).to_vector<float>());
  std::filesystem::remove_all(dir);
}

TEST(RnnLayers, ErrorsNameTheLayer) {
  LSTM lstm(3, 4);
  try {
    lstm.forward(Tensor::ones({5, 2, 7}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("LSTM(3, 4)"), std::string::npos) << m;
    EXPECT_NE(m.find("[5, 2, 7]"), std::string::npos) << m;
  }
  EXPECT_THROW(lstm.forward(Tensor::ones({5, 3})), Error);
  EXPECT_THROW(GRU(3, 4).forward_state(Tensor::ones({2, 1, 3}), Tensor(), Tensor::zeros({1, 1, 4})), Error);
  EXPECT_THROW(LSTM(0, 4), Error);
  EXPECT_THROW(LSTM(3, 4, {0}), Error);
}

// Recall the first element of a sequence after 6 more steps: a readout of the
// last input cannot do it, an RNN has to carry it. AdamW, 150 steps.
void learns_to_remember(bool use_lstm) {
  Generator gen(11), data(12);
  std::shared_ptr<RNNBase> rnn = use_lstm ? std::shared_ptr<RNNBase>(std::make_shared<LSTM>(1, 16, RnnOptions{}, gen))
                                          : std::make_shared<GRU>(1, 16, RnnOptions{}, gen);
  Linear head(16, 1, true, gen);
  std::vector<optim::ParamSpec> specs;
  for (const auto& [name, p] : rnn->named_parameters()) specs.push_back({"rnn." + name, p});
  for (const auto& [name, p] : head.named_parameters()) specs.push_back({"head." + name, p});
  optim::AdamWOptions ao;
  ao.lr = 1e-2;
  ao.weight_decay = 0;
  optim::AdamW opt(specs, ao);
  auto loss_of = [&](const Tensor& x) {
    Tensor target = x.select(0, 0);  // [N, 1]
    Tensor pred = head.forward(rnn->forward_state(x).h_n.select(0, 0));
    return mse_loss(pred, target);
  };
  Tensor probe = Tensor::rand({7, 64, 1}, data, -1, 1);
  double first = loss_of(probe).item();
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    loss_of(Tensor::rand({7, 32, 1}, data, -1, 1)).backward();
    opt.step();
  }
  double last = loss_of(probe).item();
  EXPECT_LT(last, 0.1 * first) << (use_lstm ? "LSTM" : "GRU") << ": loss " << first << " -> " << last;
}

TEST(RnnLayers, LstmLearnsToRememberTheFirstElement) { learns_to_remember(true); }
TEST(RnnLayers, GruLearnsToRememberTheFirstElement) { learns_to_remember(false); }

// hpdl's layer and torch.nn.LSTM / torch.nn.GRU with the same parameters (loaded by name
// from hpdl's state dict) give the same outputs and gradients: the layout, gate order and
// equations are PyTorch's. rnn_torch_check.py does the torch side; skipped without torch.
void matches_pytorch(bool use_lstm, const RnnOptions& o) {
  Generator gen(21);
  std::shared_ptr<RNNBase> rnn = use_lstm ? std::shared_ptr<RNNBase>(std::make_shared<LSTM>(3, 4, o, gen))
                                          : std::make_shared<GRU>(3, 4, o, gen);
  rnn->to(DType::f64);
  const int64_t T = 5, N = 2, LD = o.num_layers * (o.bidirectional ? 2 : 1);
  std::map<std::string, Tensor> file;
  file["x"] = Tensor::randn(o.batch_first ? Shape{N, T, 3} : Shape{T, N, 3}, gen, 0, 1, DType::f64);
  file["h0"] = Tensor::randn({LD, N, 4}, gen, 0, 1, DType::f64);
  if (use_lstm) file["c0"] = Tensor::randn({LD, N, 4}, gen, 0, 1, DType::f64);
  Tensor x = file["x"].clone().set_requires_grad(), h0 = file["h0"].clone().set_requires_grad();
  Tensor c0 = use_lstm ? file["c0"].clone().set_requires_grad() : Tensor();
  RnnResult r = rnn->forward_state(x, h0, c0);
  file["w_out"] = Tensor::randn(r.output.shape(), gen, 0, 1, DType::f64);
  file["w_h_n"] = Tensor::randn(r.h_n.shape(), gen, 0, 1, DType::f64);
  Tensor loss = add(sum(mul(r.output, file["w_out"])), sum(mul(r.h_n, file["w_h_n"])));
  if (use_lstm) {
    file["w_c_n"] = Tensor::randn(r.c_n.shape(), gen, 0, 1, DType::f64);
    loss = add(loss, sum(mul(r.c_n, file["w_c_n"])));
  }
  loss.backward();
  file["hpdl.out"] = r.output.contiguous();
  file["hpdl.h_n"] = r.h_n;
  file["hpdl.dx"] = x.grad();
  file["hpdl.dh0"] = h0.grad();
  if (use_lstm) file["hpdl.c_n"] = r.c_n, file["hpdl.dc0"] = c0.grad();
  for (const auto& [name, p] : rnn->named_parameters()) {
    file["param." + name] = p;
    file["hpdl.grad." + name] = p.grad();
  }
  const test::TorchCheck c = test::run_torch_check(
      "rnn_torch_check.py", file,
      {{"cell", use_lstm ? "lstm" : "gru"}, {"input_size", "3"}, {"hidden_size", "4"},
       {"num_layers", std::to_string(o.num_layers)}, {"bidirectional", o.bidirectional ? "1" : "0"},
       {"batch_first", o.batch_first ? "1" : "0"}});
  if (c.torch_missing())
    GTEST_SKIP() << "/usr/bin/python3 cannot import torch (install python3-torch to run this interop check)";
  EXPECT_EQ(c.rc, 0) << c.command << "\n" << c.report;
}

TEST(RnnLayers, LstmMatchesPyTorch) { matches_pytorch(true, {2, true, false}); }
TEST(RnnLayers, GruMatchesPyTorchBatchFirst) { matches_pytorch(false, {2, true, true}); }

TEST(RnnModels, RowClassifierFromTheZoo) {
  models::ModelConfig c;
  c.hidden = {32};
  auto m = models::make_model("lstm", c);
  EXPECT_EQ(m->num_parameters(), 4 * 32 * (28 + 32 + 2) + 32 * 10 + 10);
  auto sd = m->state_dict();
  EXPECT_TRUE(sd.count("rnn.weight_ih_l0") && sd.count("rnn.bias_hh_l0") && sd.count("fc.weight"));
  Generator gen(1);
  Tensor x = Tensor::randn({3, 1, 28, 28}, gen);
  Tensor y = m->forward(x);
  EXPECT_EQ(y.shape(), (Shape{3, 10}));
  // Gradients reach the recurrent weights through the last hidden state.
  sum(y).backward();
  EXPECT_TRUE(sd.at("rnn.weight_hh_l0").grad().defined());
  c.hidden = {32, 32};
  EXPECT_EQ(models::make_model("gru", c)->forward(x).shape(), (Shape{3, 10}));
  c.hidden = {32, 16};
  EXPECT_THROW(models::make_model("lstm", c), Error);
  c.hidden = {32};
  EXPECT_THROW(m->forward(Tensor::ones({2, 1, 28, 20})), Error);
}

}  // namespace
}  // namespace hpdl::nn
