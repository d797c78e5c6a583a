// GAN layer: DCGAN network shapes and the paper's initialisation, one
// discriminator step lowering its loss on a fixed batch, a short seeded run on
// four 8x8 patterns in which the generator's samples move to the data's pixel
// statistics, reproducibility, the classifier-based score against
// hand-computed values, PNG grids, Fashion-MNIST in [-1, 1], the errors
// bad options get, and the generator's weight average (g_ema_decay): its values
// by hand, sampling from it, its ONNX graph, and that it oscillates less.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <cmath>
#include <string>
#include <vector>

#include "hpdl/autograd/node.h"
#include "hpdl/core/threading.h"
#include "hpdl/data/readers.h"
#include "hpdl/gan/dcgan.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/gan/patterns.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using test::error_of;
using test::four_patterns;
using test::OneThread;
using test::stats_gap;

using test::contains;
using test::hand_ema;
using test::snapshot;
using test::expect_averages;

// A small DCGAN for 8x8 images.
gan::DcganOptions tiny_options(uint64_t seed = 1) { return test::tiny_gan_options<gan::DcganOptions>(seed); }

double std_of(const Tensor& t) {
  std::vector<double> v = t.to_vector<double>();
  double m = 0, s = 0;
  for (double x : v) m += x / v.size();
  for (double x : v) s += (x - m) * (x - m) / v.size();
  return std::sqrt(s);
}

TEST(GanDcgan, NetworkShapesFor28x28) {
  gan::Dcgan gan(gan::DcganOptions{});  // the Fashion-MNIST defaults
  auto& g = gan.generator();
  auto& d = gan.discriminator();
  EXPECT_EQ(g.project->weight.shape(), (Shape{128 * 7 * 7, 64}));
  EXPECT_EQ(g.up1->weight.shape(), (Shape{128, 64, 4, 4}));
  EXPECT_EQ(g.up2->weight.shape(), (Shape{64, 1, 4, 4}));
  EXPECT_EQ(d.conv1->weight.shape(), (Shape{64, 1, 4, 4}));
  EXPECT_EQ(d.conv2->weight.shape(), (Shape{128, 64, 4, 4}));
  EXPECT_EQ(d.classify->weight.shape(), (Shape{1, 128 * 7 * 7}));
  Tensor fake = gan.generate(gan.sample_latent(3));
  EXPECT_EQ(fake.shape(), (Shape{3, 1, 28, 28}));
  for (float v : fake.to_vector<float>()) ASSERT_TRUE(v >= -1 && v <= 1);
  EXPECT_GT(std_of(fake), 1e-3) << "samples differ from pixel to pixel";
  Tensor logits = d(fake);
  EXPECT_EQ(logits.shape(), (Shape{3}));
  // 8x8 and 3 channels work the same way.
  gan::DcganOptions o = tiny_options();
  o.channels = 3;
  gan::Dcgan small(o);
  EXPECT_EQ(small.generate(small.sample_latent(2)).shape(), (Shape{2, 3, 8, 8}));
  EXPECT_EQ(small.discriminator()(Tensor::zeros({2, 3, 8, 8})).shape(), (Shape{2}));
}

// The values are checked against a numpy interpreter of the graph in
// tests/integration/onnx_check.py (onnx.zoo_matches_hpdl, case dcgan_generator).
TEST(GanDcgan, GeneratorExportsAsOnnx) {
  gan::Dcgan gan(tiny_options());
  const auto m = gan::export_generator_onnx(gan.generator());
  std::vector<std::string> ops;
  for (const auto& n : m.graph.nodes) ops.push_back(n.op_type);
  const std::vector<std::string> expected{"Gemm", "Reshape", "BatchNormalization", "Relu", "ConvTranspose",
                                          "BatchNormalization", "Relu", "ConvTranspose", "Tanh"};
  EXPECT_EQ(ops, expected);
  ASSERT_EQ(m.graph.inputs.size(), 1u);
  EXPECT_EQ(m.graph.inputs[0].name, "z");
  ASSERT_EQ(m.graph.inputs[0].dims.size(), 2u);
  EXPECT_EQ(m.graph.inputs[0].dims[0].symbol, "N");
  EXPECT_EQ(m.graph.inputs[0].dims[1].value, 16);
  ASSERT_EQ(m.graph.outputs.size(), 1u);
  EXPECT_EQ(m.graph.outputs[0].name, "images");
  std::vector<int64_t> dims;
  for (const auto& d : m.graph.outputs[0].dims) dims.push_back(d.value);
  EXPECT_EQ(dims, (std::vector<int64_t>{-1, 1, 8, 8}));
  // Every parameter and batch-norm buffer is an initializer under its state-dict name.
  std::set<std::string> inits;
  for (const auto& t : m.graph.initializers) inits.insert(t.name);
  for (const auto& [name, t] : gan.generator().named_parameters()) EXPECT_TRUE(inits.count(name)) << name;
  EXPECT_TRUE(inits.count("bn1.running_var"));
  EXPECT_TRUE(contains(m.graph.doc, "'z' float32 [N, 16]")) << m.graph.doc;
  // The file is written (atomically) where asked, and a bad path names itself.
  const auto dir = test::temp_dir("gan_onnx");
  gan::save_generator_onnx(dir / "g.onnx", gan.generator());
  EXPECT_GT(std::filesystem::file_size(dir / "g.onnx"), 1000u);
  EXPECT_TRUE(contains(error_of([&] { gan::save_generator_onnx(dir / "absent" / "g.onnx", gan.generator()); }),
                       "absent"));
}

TEST(GanDcgan, InitialisationFollowsThePaper) {
  gan::Dcgan gan(gan::DcganOptions{});
  for (const Tensor& w : {gan.generator().up1->weight, gan.discriminator().conv2->weight,
                          gan.generator().project->weight})
    EXPECT_NEAR(std_of(w), 0.02, 0.002);
  EXPECT_NEAR(sum(gan.generator().bn0->weight).item() / 128, 1.0, 0.01);
  EXPECT_EQ(max(abs(gan.generator().up1->bias)).item(), 0.0);
  EXPECT_EQ(max(abs(gan.discriminator().classify->bias)).item(), 0.0);
}

TEST(GanDcgan, DiscriminatorStepLowersItsLossOnAFixedBatch) {
  gan::Dcgan gan(tiny_options());
  Tensor real = four_patterns().slice(0, 0, 32);
  Tensor fake = gan.generate(gan.sample_latent(32));
  const double before = gan.discriminator_loss(real, fake).item();
  EXPECT_NEAR(before, 2 * std::log(2.0), 0.1) << "an untrained D is undecided";
  Tensor g_weight = gan.generator().up1->weight.clone();
  const double returned = gan.discriminator_step(real, fake);
  EXPECT_DOUBLE_EQ(returned, before);
  const double after = gan.discriminator_loss(real, fake).item();
  EXPECT_LT(after, before - 1e-3) << "before " << before << " after " << after;
  // The D step leaves the generator's weights alone.
  EXPECT_EQ(max(abs(sub(gan.generator().up1->weight, g_weight))).item(), 0.0);
}

// 1200 steps of 32 images (about 4 s a run on one core), three seeds. The
// untrained G outputs tanh of small values, near 0 everywhere; the data are -1
// with +1 strokes. The per-pixel mean and standard deviation of 256 samples
// (fixed latents) must come close to the data's. One run is chaotic: a change
// in the rounding of one kernel (the strided weight gradient moving from oneDNN
// to the direct loops) moved seed 1 from mean gap 0.10 to 0.23, while over
// seeds 1-8 the two kernels reached 0.03-0.23 and 0.03-0.20. So every run must
// at least halve its mean gap, and the median of the three must come close:
// measured 0.69 -> 0.23, 0.11, 0.17 (std gaps 0.46 -> 0.24, 0.10, 0.18).
TEST(GanTraining, GeneratorMovesTowardsFourPatterns) {
  OneThread one_thread;
  Tensor data = four_patterns();
  std::vector<double> mean_gaps, sd_gaps;
  for (uint64_t seed : {1, 2, 3}) {
    gan::Dcgan gan(tiny_options(seed));
    Tensor z = gan.sample_latent(256);  // fixed latents for before/after
    auto [mean_gap0, sd_gap0] = stats_gap(gan.generate(z), data);
    int64_t calls = 0;
    double first_acc = -1;
    gan::DcganStepStats last = gan::train_dcgan(gan, data, 1200, [&](int64_t step, const gan::DcganStepStats& st) {
      ++calls;
      EXPECT_EQ(step, calls);
      if (step == 1) first_acc = st.d_accuracy;
    });
    EXPECT_EQ(calls, 1200);
    EXPECT_EQ(gan.steps(), 1200);
    auto [mean_gap1, sd_gap1] = stats_gap(gan.generate(z), data);
    std::printf("seed %d: mean gap %.4f -> %.4f, std gap %.4f -> %.4f, D accuracy %.3f -> %.3f, losses D %.3f G %.3f\n",
                static_cast<int>(seed), mean_gap0, mean_gap1, sd_gap0, sd_gap1, first_acc, last.d_accuracy,
                last.d_loss, last.g_loss);
    EXPECT_GT(mean_gap0, 0.5) << "seed " << seed;
    EXPECT_LT(mean_gap1, 0.5 * mean_gap0) << "seed " << seed;
    EXPECT_TRUE(std::isfinite(last.d_loss) && std::isfinite(last.g_loss)) << "seed " << seed;
    mean_gaps.push_back(mean_gap1), sd_gaps.push_back(sd_gap1);
  }
  std::sort(mean_gaps.begin(), mean_gaps.end());
  std::sort(sd_gaps.begin(), sd_gaps.end());
  EXPECT_LT(mean_gaps[1], 0.2);
  EXPECT_LT(sd_gaps[1], 0.25);
}

TEST(GanTraining, ASeedGivesTheSameRun) {
  OneThread one_thread;
  auto run = [](uint64_t seed) {
    gan::Dcgan gan(tiny_options(seed));
    std::vector<double> losses;
    gan::train_dcgan(gan, four_patterns(), 5, [&](int64_t, const gan::DcganStepStats& st) {
      losses.push_back(st.d_loss), losses.push_back(st.g_loss);
    });
    return losses;
  };
  std::vector<double> a = run(3), b = run(3), c = run(4);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// Data parallel over W ranks, a step takes the next W batches of one order, rank r the r-th: the
// ranks' batches of a step, side by side, are the one-rank batch of W * batch (reshuffles included).
TEST(GanTraining, RanksSplitEachStepOfOneMinibatchOrder) {
  const Tensor images = Tensor::arange(200).reshape({200, 1, 1, 1});  // 200 / 64: a partial order left over
  const uint64_t seed = 9;
  gan::detail::ShuffledBatches whole(64, seed);
  std::vector<gan::detail::ShuffledBatches> ranks(2, gan::detail::ShuffledBatches(32, seed));
  for (int step = 0; step < 7; ++step) {  // 3 steps per order: two reshuffles
    const std::vector<double> want = whole.next(images).to_vector<double>();
    std::vector<double> got = ranks[0].next(images, 0, 2).to_vector<double>();
    const std::vector<double> second = ranks[1].next(images, 1, 2).to_vector<double>();
    got.insert(got.end(), second.begin(), second.end());
    EXPECT_EQ(got, want) << "step " << step;
  }
  EXPECT_EQ(ranks[0].position(), whole.position());
  EXPECT_EQ(ranks[0].order(), ranks[1].order());
  // A rank count whose step does not fit the images is refused, naming both numbers.
  try {
    ranks[0].check(images, 1, 1, "test", 7);
    ADD_FAILURE() << "7 ranks x 32 > 200 images accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("200 images are fewer than one batch of 32 on each of 7 ranks (224 in all)"),
              std::string::npos) << e.what();
  }
}

TEST(GanScore, ClassifierScoreMatchesHandComputedValues) {
  // Confident and diverse: p = (1, 0) and (0, 1) -> confidence 1, entropy log 2, IS 2.
  gan::ClassifierScore s = gan::classifier_score(Tensor::from_vector<float>({40, 0, 0, 40}, {2, 2}));
  EXPECT_NEAR(s.confidence, 1.0, 1e-9);
  EXPECT_NEAR(s.class_entropy, std::log(2.0), 1e-9);
  EXPECT_NEAR(s.inception_score, 2.0, 1e-9);
  // p = (3/4, 1/4) and (1/4, 3/4): marginal (1/2, 1/2), KL = 3/4 log 3/2 + 1/4 log 1/2 each.
  s = gan::classifier_score(Tensor::from_vector<double>({std::log(3.0), 0, 0, std::log(3.0)}, {2, 2}));
  EXPECT_NEAR(s.confidence, 0.75, 1e-9);
  EXPECT_NEAR(s.class_entropy, std::log(2.0), 1e-9);
  EXPECT_NEAR(s.inception_score, std::pow(1.5, 0.75) * std::pow(0.5, 0.25), 1e-9);
  // Mode collapse: every image one class -> entropy 0, IS 1.
  s = gan::classifier_score(Tensor::from_vector<float>({5, 0, 0, 5, 0, 0, 5, 0, 0}, {3, 3}));
  EXPECT_NEAR(s.class_entropy, 0.0, 1e-12);
  EXPECT_NEAR(s.inception_score, 1.0, 1e-9);
  EXPECT_TRUE(contains(error_of([] { gan::classifier_score(Tensor::zeros({4})); }), "[M, classes]"));
}

TEST(GanImages, WriteImageGridRoundTrips) {
  auto dir = test::temp_dir("gan_grid");
  // Three 2x3 images: all -1, all +1, a ramp; 2 columns -> 2 rows.
  std::vector<float> v(6, -1.0f);
  for (int i = 0; i < 6; ++i) v.push_back(1.0f);
  for (int i = 0; i < 6; ++i) v.push_back(-1.0f + 0.4f * i);
  gan::write_image_grid(dir / "grid.png", Tensor::from_vector(v, {3, 1, 2, 3}), 2);
  data::Image img = data::read_png(dir / "grid.png");
  EXPECT_EQ(img.channels, 1);
  EXPECT_EQ(img.height, 2 * (2 + 2) + 2);
  EXPECT_EQ(img.width, 2 * (3 + 2) + 2);
  auto at = [&](int64_t y, int64_t x) { return static_cast<int>(img.pixels[y * img.width + x]); };
  EXPECT_EQ(at(0, 0), 0);    // border
  EXPECT_EQ(at(2, 2), 0);    // image 0 (-1)
  EXPECT_EQ(at(2, 7), 255);  // image 1 (+1)
  EXPECT_EQ(at(6, 2), 0);    // image 2, ramp start -1
  EXPECT_EQ(at(7, 4), static_cast<int>(std::lround((-1.0 + 0.4 * 5 + 1) * 127.5)));
  EXPECT_EQ(at(6, 7), 0);  // empty cell stays black
  EXPECT_TRUE(contains(error_of([&] { gan::write_image_grid(dir / "x.png", Tensor::zeros({2, 2, 4, 4}), 2); }),
                       "[N, 1 or 3, H, W]"));
}

TEST(GanData, FashionMnistImagesAreScaledToPlusMinusOne) {
  Tensor labels;
  Tensor x = gan::load_fashion_mnist_images(data::kFashionMnistDir, false, 100, &labels);
  EXPECT_EQ(x.shape(), (Shape{100, 1, 28, 28}));
  EXPECT_EQ(labels.shape(), (Shape{100}));
  EXPECT_NEAR(min(x).item(), -1.0, 1e-6);
  EXPECT_NEAR(max(x).item(), 1.0, 1e-6);
  for (int64_t y : labels.to_vector<int64_t>()) ASSERT_TRUE(y >= 0 && y < 10);
}

TEST(GanOptions, BadOptionsAreNamed) {
  auto err = [](auto change) {
    gan::DcganOptions o;
    change(o);
    return error_of([&] { gan::Dcgan g(o); });
  };
  EXPECT_TRUE(contains(err([](auto& o) { o.image_size = 30; }), "image_size 30"));
  EXPECT_TRUE(contains(err([](auto& o) { o.channels = 0; }), "channels"));
  EXPECT_TRUE(contains(err([](auto& o) { o.latent_dim = 0; }), "latent_dim"));
  EXPECT_TRUE(contains(err([](auto& o) { o.g_features = -1; }), "g_features"));
  EXPECT_TRUE(contains(err([](auto& o) { o.d_features = 0; }), "d_features"));
  EXPECT_TRUE(contains(err([](auto& o) { o.lr = 0; }), "lr"));
  EXPECT_TRUE(contains(err([](auto& o) { o.beta1 = 1.0; }), "beta1"));
  EXPECT_TRUE(contains(err([](auto& o) { o.beta2 = -0.1; }), "beta2"));
  EXPECT_TRUE(contains(err([](auto& o) { o.batch_size = 1; }), "batch_size"));
  EXPECT_EQ(err([](auto&) {}), "");

  gan::Dcgan gan(tiny_options());
  std::string m = error_of([&] { gan.train_step(Tensor::zeros({4, 1, 28, 28})); });
  EXPECT_TRUE(contains(m, "[N, 1, 8, 8]") && contains(m, "[4, 1, 28, 28]")) << m;
  m = error_of([&] { gan::train_dcgan(gan, Tensor::zeros({8, 1, 8, 8}), 1); });
  EXPECT_TRUE(contains(m, "8 images are fewer than one batch of 32")) << m;
  m = error_of([&] { gan.generate(Tensor::zeros({2, 5})); });
  EXPECT_TRUE(contains(m, "[N, 16]") && contains(m, "[2, 5]")) << m;
}

// ---------------------------------------------------------------- generator averaging

// Four steps with decay 0.9, with and without warmup: the averages are the EMA of G's
// weights after each step worked out here from the recorded weights; training itself is
// the same run as without averaging.
TEST(GanEma, AveragesAreTheHandComputedEmaOfGsWeights) {
  OneThread one_thread;
  for (bool warmup : {true, false}) {
    gan::DcganOptions o = tiny_options(5);
    o.g_ema_decay = 0.9;
    o.g_ema_warmup = warmup;
    gan::Dcgan gan(o);
    ASSERT_NE(gan.generator_ema(), nullptr);
    std::vector<test::Snapshot> history{snapshot(gan.generator())};
    std::vector<double> losses;
    gan::train_dcgan(gan, four_patterns(), 4, [&](int64_t, const gan::DcganStepStats& st) {
      history.push_back(snapshot(gan.generator()));
      losses.push_back(st.d_loss), losses.push_back(st.g_loss);
    });
    EXPECT_EQ(gan.generator_ema()->updates(), 4);
    expect_averages(*gan.generator_ema(), hand_ema(history, 0.9, warmup), history.back());

    gan::Dcgan plain(tiny_options(5));
    std::vector<double> plain_losses;
    gan::train_dcgan(plain, four_patterns(), 4, [&](int64_t, const gan::DcganStepStats& st) {
      plain_losses.push_back(st.d_loss), plain_losses.push_back(st.g_loss);
    });
    EXPECT_EQ(losses, plain_losses) << "averaging must not change training";
  }
}

// generate_averaged in training mode leaves G's live weights and buffers and the averages
// bitwise as they were, and equals a second generator holding the averages; so does the
// eval mode; the ONNX graph written under ModelEma::Applied holds the averages.
TEST(GanEma, SamplingFromTheAveragesLeavesTheLiveGeneratorAlone) {
  OneThread one_thread;
  gan::DcganOptions o = tiny_options(2);
  o.g_ema_decay = 0.5;
  gan::Dcgan gan(o);
  gan::train_dcgan(gan, four_patterns(), 3);
  auto& g = gan.generator();
  const std::map<std::string, Tensor> averages = gan.generator_ema()->state_dict();
  Tensor z = gan.sample_latent(16);

  Generator init(99);
  gan::DcganGenerator copy(o, init);
  for (bool train : {true, false}) {
    copy.load_state_dict(averages);  // (its own training-mode forward moves its statistics)
    g.train(train);
    copy.train(train);
    // (The live G's own training-mode forward moves its running statistics: snapshot after it.)
    EXPECT_GT(max(abs(sub(gan.generate_averaged(z), gan.generate(z)))).item(), 1e-3) << "the averages differ from G";
    const test::Snapshot live = snapshot(g);
    Tensor from_avg = gan.generate_averaged(z);
    Tensor expected;
    {
      NoGradGuard no_grad;
      expected = copy(z);
    }
    EXPECT_LT(max(abs(sub(from_avg, expected))).item(), 1e-6) << "train " << train;
    EXPECT_EQ(snapshot(g), live) << "live weights and buffers after sampling, train " << train;
    expect_averages(*gan.generator_ema(), test::values_of(averages), test::values_of(averages));
  }
  g.train();

  const test::Snapshot live = snapshot(g);
  const io::onnx::Model m = [&] {
    optim::ModelEma::Applied applied(gan.generator_ema());
    return gan::export_generator_onnx(g);
  }();
  EXPECT_EQ(snapshot(g), live) << "the guard swaps the live weights back";
  int checked = 0;
  for (const auto& init_tensor : m.graph.initializers) {
    auto it = averages.find(init_tensor.name);
    if (it == averages.end()) continue;
    std::vector<float> want = it->second.to_vector<float>(), got(want.size());
    ASSERT_EQ(init_tensor.raw.size(), want.size() * sizeof(float)) << init_tensor.name;
    std::memcpy(got.data(), init_tensor.raw.data(), init_tensor.raw.size());
    EXPECT_EQ(got, want) << init_tensor.name;
    ++checked;
  }
  EXPECT_GE(checked, 10) << "weights, biases, scales and running statistics of G";
}

// averaged_generator(): a standalone G holding the averages, in eval mode, whose batch norms
// hold statistics recomputed for the averaged weights. Those make its eval-mode output match
// the averaged weights' batch-statistics output (on a large batch) far better than the averaged
// running statistics, which come from the live G's activations. Nothing of the GAN changes: G,
// the averages, and its random stream (the next latents equal a twin GAN's).
TEST(GanEma, AveragedGeneratorHasStandingStatistics) {
  OneThread one_thread;
  gan::DcganOptions o = tiny_options(2);
  o.g_ema_decay = 0.5;
  gan::Dcgan gan(o), twin(o);
  gan::train_dcgan(gan, four_patterns(), 4);
  gan::train_dcgan(twin, four_patterns(), 4);
  const test::Snapshot live = snapshot(gan.generator());
  const std::map<std::string, Tensor> averages = gan.generator_ema()->state_dict();
  auto a = gan.averaged_generator(20);
  EXPECT_FALSE(a->is_training());
  EXPECT_EQ(snapshot(gan.generator()), live);
  expect_averages(*gan.generator_ema(), test::values_of(averages), test::values_of(averages));
  EXPECT_EQ(max(abs(sub(gan.sample_latent(4), twin.sample_latent(4)))).item(), 0.0) << "the GAN's stream moved";
  for (const auto& [name, p] : a->named_parameters())
    EXPECT_EQ(max(abs(sub(p, averages.at(name)))).item(), 0.0) << name;
  auto b = gan.averaged_generator(20);
  EXPECT_EQ(snapshot(*a), snapshot(*b)) << "deterministic";

  Generator zg(17);
  Tensor z = Tensor::randn({512, o.latent_dim}, zg);
  Tensor batch_stats = gan.generate_averaged(z);  // G is in training mode: the averaged weights' batch statistics
  gan.generator().eval();
  Tensor averaged_running = gan.generate_averaged(z);
  gan.generator().train();
  Tensor standing;
  {
    NoGradGuard no_grad;
    standing = (*a)(z);
  }
  const double err_standing = mean(abs(sub(standing, batch_stats))).item();
  const double err_running = mean(abs(sub(averaged_running, batch_stats))).item();
  EXPECT_LT(err_standing, 0.5 * err_running) << "standing " << err_standing << ", averaged running " << err_running;
  EXPECT_THROW(gan.averaged_generator(0), Error);
}

TEST(GanEma, BadDecayIsNamed) {
  for (double bad : {1.0, -0.1, std::nan("")}) {
    gan::DcganOptions o = tiny_options();
    o.g_ema_decay = bad;
    const std::string m = error_of([&] { gan::Dcgan g(o); });
    EXPECT_TRUE(contains(m, "DcganOptions: g_ema_decay must be 0 (no generator averaging) or in (0, 1)")) << m;
  }
  gan::Dcgan off(tiny_options());
  EXPECT_EQ(off.generator_ema(), nullptr);
  const std::string m = error_of([&] { off.generate_averaged(off.sample_latent(2)); });
  EXPECT_TRUE(contains(m, "Dcgan::generate_averaged") && contains(m, "g_ema_decay")) << m;
  const std::string m2 = error_of([&] { off.averaged_generator(); });
  EXPECT_TRUE(contains(m2, "Dcgan::averaged_generator") && contains(m2, "g_ema_decay")) << m2;
}

// 1200 steps on the four patterns, decay 0.99, three seeds (2 s a run on one core). What
// holds robustly is what averaging is for: the averaged G's samples of fixed latents move
// less between checkpoints 50 steps apart (steps 600-1200) than the live G's. Measured
// over seeds 1-8: mean move 0.042-0.116 live, 0.017-0.060 averaged, ratio 0.38-0.71
// (seeds 1-3: 0.60, 0.70, 0.62). Being closer to the data is not robust on this toy: the
// mean gap averaged over the checkpoints was smaller for 6 of 8 seeds (0.145 against
// 0.156 over all 8) and up to 0.008 larger for the others, so the test only asks that it
// be no worse than the live G's by more than 0.02.
TEST(GanEma, AveragedGeneratorOscillatesLessOnFourPatterns) {
  OneThread one_thread;
  Tensor data = four_patterns();
  double ratio_sum = 0;
  for (uint64_t seed : {1, 2, 3}) {
    gan::DcganOptions o = tiny_options(seed);
    o.g_ema_decay = 0.99;
    gan::Dcgan gan(o);
    Tensor z = gan.sample_latent(256);
    Tensor last_live, last_avg;
    double move_live = 0, move_avg = 0, gap_live = 0, gap_avg = 0;
    gan::train_dcgan(gan, data, 1200, [&](int64_t step, const gan::DcganStepStats&) {
      if (step < 600 || step % 50 != 0) return;
      Tensor live = gan.generate(z), avg = gan.generate_averaged(z);
      gap_live += stats_gap(live, data).first, gap_avg += stats_gap(avg, data).first;
      if (last_live.defined()) {
        move_live += mean(abs(sub(live, last_live))).item();
        move_avg += mean(abs(sub(avg, last_avg))).item();
      }
      last_live = live, last_avg = avg;
    });
    const double ratio = move_avg / move_live;
    std::printf("seed %d: move between checkpoints live %.4f averaged %.4f (ratio %.2f); mean gap live %.3f "
                "averaged %.3f\n", static_cast<int>(seed), move_live / 12, move_avg / 12, ratio, gap_live / 13,
                gap_avg / 13);
    EXPECT_LT(ratio, 0.85) << "seed " << seed;
    EXPECT_LT(gap_avg / 13, gap_live / 13 + 0.02) << "seed " << seed;
    ratio_sum += ratio;
  }
  EXPECT_LT(ratio_sum / 3, 0.75);
}

}  // namespace
}  // namespace hpdl
