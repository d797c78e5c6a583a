// GAN layer: DCGAN network shapes and the paper's initialisation, one
// discriminator step lowering its loss on a fixed batch, a short seeded run on
// four 8x8 patterns in which the generator's samples move to the data's pixel
// statistics, reproducibility, the classifier-based score against
// hand-computed values, PNG grids, Fashion-MNIST in [-1, 1], and the errors
// bad options get.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <cmath>
#include <string>
#include <vector>

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

// A small DCGAN for 8x8 images: G 16 -> [32, 2, 2] -> [16, 4, 4] -> [1, 8, 8].
gan::DcganOptions tiny_options(uint64_t seed = 1) {
  gan::DcganOptions o;
  o.image_size = 8;
  o.latent_dim = 16;
  o.g_features = 16;
  o.d_features = 16;
  o.batch_size = 32;
  o.seed = seed;
  return o;
}

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

}  // namespace
}  // namespace hpdl
