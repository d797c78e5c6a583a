// The attribution methods against what they must give on models whose answer
// is known in closed form (linear models, a global-average-pooling head), and
// against finite differences on a small nonlinear CNN.
#include <gtest/gtest.h>

#include <cmath>

#include "hpdl/autograd/node.h"
#include "hpdl/explain/explain.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using explain::Model;

// logits = flatten(x) · W^T + b with W [K, C*H*W].
struct LinearModel {
  Tensor w, b;
  int64_t k;
  LinearModel(int64_t classes, int64_t features, uint64_t seed) : k(classes) {
    Generator g(seed);
    w = Tensor::randn({classes, features}, g);
    b = Tensor::randn({classes}, g);
  }
  Model fn() const {
    return [w = w, b = b](const Tensor& x) { return linear(x.flatten(1), w, b); };
  }
  float weight(int64_t cls, int64_t j) const { return w.to_vector<float>()[cls * w.dim(1) + j]; }
};

// A small smooth CNN: conv3x3 -> tanh -> conv3x3 stride 2 -> tanh -> flatten -> linear.
struct SmallCnn {
  std::shared_ptr<nn::Sequential> net;
  explicit SmallCnn(int64_t channels, uint64_t seed) {
    Generator g(seed);
    net = std::make_shared<nn::Sequential>();
    net->push_back(std::make_shared<nn::Conv2d>(channels, 4, nn::Conv2dOptions::k(3).p(1), g));
    net->push_back(std::make_shared<nn::Tanh>());
    net->push_back(std::make_shared<nn::Conv2d>(4, 6, nn::Conv2dOptions::k(3).s(2).p(1), g));
    net->push_back(std::make_shared<nn::Tanh>());
    net->push_back(std::make_shared<nn::Flatten>());
    net->push_back(std::make_shared<nn::Linear>(6 * 4 * 4, 3, true, g));
    net->eval();
  }
  Model fn() const {
    return [n = net](const Tensor& x) { return n->forward(x); };
  }
};

Tensor random_images(const Shape& shape, uint64_t seed) {
  Generator g(seed);
  return Tensor::rand(shape, g, 0.0, 1.0);
}

TEST(ExplainTest, SaliencyOfALinearModelIsItsWeightRow) {
  const int64_t c = 2, h = 3, w = 4;
  LinearModel lin(5, c * h * w, 1);
  Tensor x = random_images({2, c, h, w}, 2);
  const std::vector<int64_t> targets = {3, 0};
  auto g = explain::input_gradient(lin.fn(), x, targets).to_vector<float>();
  auto s = explain::saliency(lin.fn(), x, targets).to_vector<float>();
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t p = 0; p < h * w; ++p) {
      float expect = 0;
      for (int64_t ch = 0; ch < c; ++ch) {
        const float wt = lin.weight(targets[n], ch * h * w + p);
        EXPECT_FLOAT_EQ(g[(n * c + ch) * h * w + p], wt);
        expect = std::max(expect, std::abs(wt));
      }
      EXPECT_FLOAT_EQ(s[n * h * w + p], expect) << "sample " << n << " pixel " << p;
    }
}

TEST(ExplainTest, DefaultTargetIsThePredictedClass) {
  LinearModel lin(4, 12, 3);
  Tensor x = random_images({3, 1, 3, 4}, 4);
  Tensor logits = lin.fn()(x);
  auto t = explain::resolve_targets(logits, {});
  auto v = logits.to_vector<float>();
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t k = 0; k < 4; ++k) EXPECT_LE(v[n * 4 + k], v[n * 4 + t[n]]);
  // Explaining the default equals explaining the predicted classes given explicitly.
  auto a = explain::saliency(lin.fn(), x, {}).to_vector<float>();
  auto b = explain::saliency(lin.fn(), x, t).to_vector<float>();
  EXPECT_EQ(a, b);
}

TEST(ExplainTest, InputGradientOfACnnMatchesFiniteDifferences) {
  SmallCnn cnn(2, 5);
  Tensor x = random_images({2, 2, 8, 8}, 6);
  const std::vector<int64_t> targets = {2, 1};
  auto g = explain::input_gradient(cnn.fn(), x, targets).to_vector<float>();
  auto xv = x.to_vector<float>();
  auto score = [&](const std::vector<float>& v, int64_t n) {
    NoGradGuard ng;
    auto l = cnn.fn()(Tensor::from_vector(v, x.shape())).to_vector<float>();
    return static_cast<double>(l[n * 3 + targets[n]]);
  };
  const double eps = 1e-2;
  int checked = 0;
  for (int64_t j = 0; j < x.numel(); j += 7) {
    const int64_t n = j / (2 * 8 * 8);
    auto up = xv, down = xv;
    up[j] += static_cast<float>(eps);
    down[j] -= static_cast<float>(eps);
    const double fd = (score(up, n) - score(down, n)) / (2 * eps);
    EXPECT_NEAR(g[j], fd, 2e-3 + 1e-2 * std::abs(fd)) << "element " << j;
    ++checked;
  }
  EXPECT_GT(checked, 30);
}

TEST(ExplainTest, IntegratedGradientsOfALinearModelAreExact) {
  const int64_t c = 1, h = 4, w = 4;
  LinearModel lin(3, c * h * w, 7);
  Tensor x = random_images({2, c, h, w}, 8);
  Tensor base = Tensor::full({1, c, h, w}, 0.25);
  const std::vector<int64_t> targets = {1, 2};
  auto r = explain::integrated_gradients(lin.fn(), x, targets, 5, base);
  auto a = r.attributions.to_vector<float>();
  auto xv = x.to_vector<float>();
  for (int64_t n = 0; n < 2; ++n) {
    double total = 0;
    for (int64_t j = 0; j < h * w; ++j) {
      const double expect = (xv[n * h * w + j] - 0.25) * lin.weight(targets[n], j);
      EXPECT_NEAR(a[n * h * w + j], expect, 1e-5);
      total += expect;
    }
    EXPECT_NEAR(r.sum[n], total, 1e-4);
    EXPECT_NEAR(r.score_gap[n], total, 1e-4) << "completeness";
  }
  EXPECT_EQ(r.map().shape(), Shape({2, h, w}));
}

TEST(ExplainTest, IntegratedGradientsAreCompleteOnACnnAndConvergeWithSteps) {
  SmallCnn cnn(1, 9);
  Tensor x = random_images({3, 1, 8, 8}, 10);
  auto coarse = explain::integrated_gradients(cnn.fn(), x, {}, 2);
  auto fine = explain::integrated_gradients(cnn.fn(), x, {}, 64);
  double coarse_err = 0, fine_err = 0;
  for (int64_t n = 0; n < 3; ++n) {
    EXPECT_GT(std::abs(fine.score_gap[n]), 1e-3) << "a zero gap would make completeness vacuous";
    EXPECT_NEAR(fine.sum[n], fine.score_gap[n], 1e-3 * std::abs(fine.score_gap[n])) << "sample " << n;
    coarse_err += std::abs(coarse.sum[n] - coarse.score_gap[n]);
    fine_err += std::abs(fine.sum[n] - fine.score_gap[n]);
  }
  EXPECT_LT(fine_err, coarse_err);
  // The midpoint rule's error falls as 1/steps^2: 16x from 8 to 32 steps (a
  // left Riemann sum's would fall 4x).
  auto total_error = [&](int64_t steps) {
    auto r = explain::integrated_gradients(cnn.fn(), x, {}, steps);
    double e = 0;
    for (int64_t n = 0; n < 3; ++n) e += std::abs(r.sum[n] - r.score_gap[n]);
    return e;
  };
  EXPECT_GT(total_error(8) / total_error(32), 10.0);
  // Chunking the path points differently changes nothing.
  auto chunked = explain::integrated_gradients(cnn.fn(), x, {}, 64, {}, 7);
  auto a = fine.attributions.to_vector<float>(), b = chunked.attributions.to_vector<float>();
  for (size_t j = 0; j < a.size(); ++j) EXPECT_NEAR(a[j], b[j], 1e-6) << "element " << j;
}

// Grad-CAM on features -> global average pooling -> linear is the class
// activation map: ReLU(sum_k W[t, k] A_k / (h*w)).
TEST(ExplainTest, GradCamOfAPoolingHeadIsTheClassActivationMap) {
  Generator g(11);
  auto net = std::make_shared<nn::Sequential>();
  auto conv = net->push_back(std::make_shared<nn::Conv2d>(1, 5, nn::Conv2dOptions::k(3).p(1), g));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::AdaptiveAvgPool2d>(1, 1));
  net->push_back(std::make_shared<nn::Flatten>());
  auto fc = net->push_back(std::make_shared<nn::Linear>(5, 4, true, g));
  net->eval();
  Tensor x = random_images({2, 1, 6, 6}, 12);
  auto split = explain::split_sequential(*net, x.narrow(0, 0, 1));
  EXPECT_EQ(split.layer, "1");  // the ReLU: the last 4-D output with more than one position
  const std::vector<int64_t> targets = {3, 1};
  auto cam = explain::grad_cam(split, x, targets).to_vector<float>();
  Tensor a;
  {
    NoGradGuard ng;
    a = relu(conv->forward(x));
  }
  auto av = a.to_vector<float>();
  auto wv = fc->weight.to_vector<float>();
  int positive = 0;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t p = 0; p < 36; ++p) {
      double s = 0;
      for (int64_t k = 0; k < 5; ++k) s += wv[targets[n] * 5 + k] * av[(n * 5 + k) * 36 + p] / 36.0;
      EXPECT_NEAR(cam[n * 36 + p], std::max(0.0, s), 1e-6) << "sample " << n << " position " << p;
      positive += s > 0;
    }
  EXPECT_GT(positive, 5);
  EXPECT_LT(positive, 72) << "the ReLU of the map should matter somewhere";
}

TEST(ExplainTest, SplitSequentialPicksLeNetsLastSpatialLayerAndNamesBadLayers) {
  auto net = std::dynamic_pointer_cast<nn::Sequential>(nn::models::lenet5(1, 10));
  ASSERT_NE(net, nullptr);
  net->eval();
  Tensor x = random_images({2, 1, 28, 28}, 13);
  auto split = explain::split_sequential(*net, x.narrow(0, 0, 1));
  Tensor logits, direct;
  {
    NoGradGuard ng;
    Tensor feat = split.features(x);
    EXPECT_EQ(feat.shape(), Shape({2, 16, 5, 5})) << "layer " << split.layer;
    logits = split.head(feat);
    direct = net->forward(x);
  }
  EXPECT_EQ(logits.to_vector<float>(), direct.to_vector<float>());
  auto cam = explain::grad_cam(split, x, {});
  EXPECT_EQ(cam.shape(), Shape({2, 28, 28}));

  std::string e = test::error_of([&] { explain::split_sequential(*net, x.narrow(0, 0, 1), "conv9"); });
  EXPECT_NE(e.find("no top-level layer 'conv9'"), std::string::npos) << e;
  EXPECT_NE(e.find("Conv2d"), std::string::npos) << "candidates are listed: " << e;
  e = test::error_of([&] { explain::split_sequential(*net, x.narrow(0, 0, 1), "7"); });
  EXPECT_NE(e.find("layer '7'"), std::string::npos) << e;
  EXPECT_NE(e.find("4-D"), std::string::npos) << e;
  auto mlp = std::dynamic_pointer_cast<nn::Sequential>(nn::models::mlp(784, {32}, 10));
  e = test::error_of([&] { explain::split_sequential(*mlp, x.narrow(0, 0, 1)); });
  EXPECT_NE(e.find("no layer of the model has a spatial output"), std::string::npos) << e;
}

// A model that looks at one pixel only: occluding a window changes the score
// exactly when the window covers that pixel.
TEST(ExplainTest, OcclusionFindsTheOnlyPixelThatMatters) {
  const int64_t h = 10, w = 9, py = 4, px = 6;
  std::vector<float> wv(static_cast<size_t>(2 * h * w), 0.0f);
  wv[1 * h * w + py * w + px] = 2.0f;  // class 1 reads pixel (4, 6)
  Tensor weight = Tensor::from_vector(wv, {2, h * w});
  Model model = [weight](const Tensor& x) { return linear(x.flatten(1), weight); };
  Tensor x = random_images({2, 1, h, w}, 14);
  auto xv = x.to_vector<float>();
  const int64_t window = 4, stride = 3;
  auto m = explain::occlusion(model, x, {1, 1}, window, stride, 0.1).to_vector<float>();
  for (int64_t n = 0; n < 2; ++n) {
    const float drop = 2.0f * (xv[n * h * w + py * w + px] - 0.1f);
    EXPECT_NEAR(m[n * h * w + py * w + px], drop, 1e-5) << "every window over the pixel drops the score fully";
    for (int64_t y = 0; y < h; ++y)
      for (int64_t xx = 0; xx < w; ++xx) {
        const float v = m[n * h * w + y * w + xx];
        EXPECT_FALSE(std::isnan(v)) << "pixel (" << y << ", " << xx << ") is covered by no window";
        if (std::abs(y - py) >= window || std::abs(xx - px) >= window)
          EXPECT_EQ(v, 0.0f) << "pixel (" << y << ", " << xx << ") shares no window with the pixel";
        else
          EXPECT_GE(std::abs(v), 0.0f);
      }
    // The corner windows are moved in to touch the far edge: the last row is covered.
    EXPECT_FALSE(std::isnan(m[n * h * w + (h - 1) * w + (w - 1)]));
  }
  // Batching the occluded copies differently changes nothing.
  auto m7 = explain::occlusion(model, x, {1, 1}, window, stride, 0.1, 7).to_vector<float>();
  EXPECT_EQ(m, m7);
}

// The one-pixel model again: a map that ranks the pixel first loses the
// evidence at the first deletion step; one that ranks it last keeps it to the end.
TEST(ExplainTest, DeletionCurveRewardsTheMapThatFindsThePixel) {
  const int64_t h = 4, w = 5, pixel = 2 * w + 3, points = 4;
  std::vector<float> wv(static_cast<size_t>(2 * h * w), 0.0f);
  wv[h * w + pixel] = 2.0f;
  Tensor weight = Tensor::from_vector(wv, {2, h * w});
  Model model = [weight](const Tensor& x) { return linear(x.flatten(1), weight); };
  Tensor x = Tensor::full({1, 1, h, w}, 0.75);
  std::vector<float> good(static_cast<size_t>(h * w), 0.0f), bad(static_cast<size_t>(h * w), 1.0f);
  good[pixel] = 1.0f;
  bad[pixel] = 0.0f;
  const double kept = 1.0 / (1.0 + std::exp(-1.5));  // softmax of logits (0, 2 * 0.75)
  auto g = explain::deletion_curve(model, x, Tensor::from_vector(good, {1, h, w}), {1}, points);
  auto b = explain::deletion_curve(model, x, Tensor::from_vector(bad, {1, h, w}), {1}, points);
  ASSERT_EQ(g.probability.size(), 5u);
  EXPECT_EQ(g.fractions.front(), 0.0);
  EXPECT_EQ(g.fractions.back(), 1.0);
  EXPECT_NEAR(g.probability[0], kept, 1e-6);
  for (int s = 1; s <= points; ++s) EXPECT_NEAR(g.probability[s], 0.5, 1e-6) << "step " << s;
  for (int s = 0; s < points; ++s) EXPECT_NEAR(b.probability[s], kept, 1e-6) << "step " << s;
  EXPECT_NEAR(b.probability[points], 0.5, 1e-6);
  EXPECT_NEAR(g.area, (0.5 * (kept + 0.5) + 3 * 0.5) / points, 1e-6);
  EXPECT_LT(g.area, b.area);
  std::string e = test::error_of([&] { explain::deletion_curve(model, x, Tensor::zeros({1, w, h}), {1}); });
  EXPECT_NE(e.find("maps are [1, 5, 4]"), std::string::npos) << e;
}

TEST(ExplainTest, BilinearResizeUsesHalfPixelCentres) {
  Tensor m = Tensor::from_vector(std::vector<float>{0, 4, 8, 12}, {1, 2, 2});
  auto r = explain::resize_bilinear(m, 4, 4).to_vector<float>();
  // Along a row [a, b] -> [a, 0.75a + 0.25b, 0.25a + 0.75b, b].
  const std::vector<float> row0 = {0, 1, 3, 4}, row3 = {8, 9, 11, 12};
  for (int x = 0; x < 4; ++x) {
    EXPECT_FLOAT_EQ(r[x], row0[x]);
    EXPECT_FLOAT_EQ(r[12 + x], row3[x]);
    EXPECT_FLOAT_EQ(r[4 + x], 0.75f * row0[x] + 0.25f * row3[x]);
  }
  auto same = explain::resize_bilinear(m, 2, 2).to_vector<float>();
  EXPECT_EQ(same, m.to_vector<float>());
}

TEST(ExplainTest, HeatmapImagePlacesInputAndMapSideBySide) {
  const int64_t h = 3, w = 2, scale = 4;
  Tensor image = Tensor::full({1, h, w}, 0.5);
  Tensor map = Tensor::from_vector(std::vector<float>{0, 0, 0, 1, -1, 0}, {h, w});
  auto img = explain::render_heatmap(image, map, true, scale);
  ASSERT_EQ(img.channels, 3);
  ASSERT_EQ(img.height, h * scale);
  ASSERT_EQ(img.width, 2 * w * scale);
  auto px = [&](int64_t ch, int64_t y, int64_t x) { return img.pixels[(ch * img.height + y) * img.width + x]; };
  EXPECT_EQ(px(0, 0, 0), 128);  // the input, gray 0.5
  EXPECT_EQ(px(2, h * scale - 1, w * scale - 1), 128);
  const int64_t right = w * scale;
  // map (1, 1) = +1: red; map (2, 0) = -1: blue; map (0, 0) = 0: the gray input.
  EXPECT_GT(px(0, 1 * scale + 1, right + 1 * scale + 1), px(2, 1 * scale + 1, right + 1 * scale + 1));
  EXPECT_GT(px(2, 2 * scale + 1, right + 1), px(0, 2 * scale + 1, right + 1));
  EXPECT_EQ(px(0, 1, right + 1), 128);
  // Unsigned: the maximum is the brightest.
  Tensor unsigned_map = Tensor::from_vector(std::vector<float>{0, 0, 0, 1, 0.5, 0}, {h, w});
  auto hot = explain::render_heatmap(image, unsigned_map, false, 1);
  auto brightness = [&](int64_t y, int64_t x) {
    int sum = 0;
    for (int64_t ch = 0; ch < 3; ++ch) sum += hot.pixels[static_cast<size_t>((ch * hot.height + y) * hot.width + w + x)];
    return sum;
  };
  EXPECT_GT(brightness(1, 1), brightness(2, 0));
  EXPECT_GT(brightness(2, 0), brightness(0, 0));

  std::string e = test::error_of([&] { explain::render_heatmap(image, Tensor::zeros({2, 2}), false); });
  EXPECT_NE(e.find("[3, 2]"), std::string::npos) << e;
}

// A feature vector [1, 1, F] is drawn as a strip: blocks scale wide and scale_y high, every
// pixel row of the strip the same, each feature's attribution in its own column block.
TEST(ExplainTest, HeatmapStripOfAFeatureVectorHasItsOwnHeight) {
  const int64_t f = 5, scale = 2, scale_y = 8;
  Tensor x = Tensor::full({1, 1, f}, 0.25);
  Tensor map = Tensor::from_vector(std::vector<float>{0, 1, 0, -1, 0}, {1, f});
  auto img = explain::render_heatmap(x, map, true, scale, scale_y);
  ASSERT_EQ(img.height, scale_y);
  ASSERT_EQ(img.width, 2 * f * scale);
  auto px = [&](int64_t ch, int64_t y, int64_t col) { return img.pixels[(ch * img.height + y) * img.width + col]; };
  for (int64_t y = 1; y < scale_y; ++y)
    for (int64_t ch = 0; ch < 3; ++ch)
      for (int64_t col = 0; col < img.width; ++col) ASSERT_EQ(px(ch, y, col), px(ch, 0, col)) << y << " " << col;
  const int64_t right = f * scale;
  EXPECT_GT(px(0, 3, right + 1 * scale), px(2, 3, right + 1 * scale));      // feature 1: +1, red
  EXPECT_EQ(px(0, 3, right + 1 * scale + 1), px(0, 3, right + 1 * scale));  // its block is scale wide
  EXPECT_GT(px(2, 3, right + 3 * scale), px(0, 3, right + 3 * scale));      // feature 3: -1, blue
  EXPECT_EQ(px(0, 3, right + 2 * scale), px(0, 3, 2 * scale));              // feature 2: 0, the gray input
  EXPECT_NE(test::error_of([&] { explain::render_heatmap(x, map, true, scale, 65); }).find("scale_y 65"),
            std::string::npos);
}

TEST(ExplainTest, BadArgumentsAreNamed) {
  LinearModel lin(3, 16, 15);
  Tensor x = random_images({2, 1, 4, 4}, 16);
  std::string e = test::error_of([&] { explain::saliency(lin.fn(), x, {0, 3}); });
  EXPECT_NE(e.find("sample 1: target class 3 is not in [0, 3)"), std::string::npos) << e;
  e = test::error_of([&] { explain::saliency(lin.fn(), x, {0}); });
  EXPECT_NE(e.find("1 target classes for 2 samples"), std::string::npos) << e;
  e = test::error_of([&] { explain::integrated_gradients(lin.fn(), x, {}, 0); });
  EXPECT_NE(e.find("steps must be at least 1"), std::string::npos) << e;
  e = test::error_of([&] { explain::integrated_gradients(lin.fn(), x, {}, 4, Tensor::zeros({3, 1, 4, 4})); });
  EXPECT_NE(e.find("baseline is [3, 1, 4, 4]"), std::string::npos) << e;
  e = test::error_of([&] { explain::occlusion(lin.fn(), x, {}, 5); });
  EXPECT_NE(e.find("window (5)"), std::string::npos) << e;
  e = test::error_of([&] { explain::saliency(lin.fn(), Tensor::zeros({16}), {}); });
  EXPECT_NE(e.find("[N, C, H, W]"), std::string::npos) << e;
}

}  // namespace
}  // namespace hpdl
