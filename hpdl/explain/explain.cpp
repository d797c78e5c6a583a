#include "hpdl/explain/explain.h"

#include <algorithm>
#include <cmath>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/ops/ops.h"

namespace hpdl::explain {
namespace {

void check_batch(const Tensor& x, const char* what) {
  HPDL_CHECK(x.defined(), "explain {}: the input is undefined", what);
  HPDL_CHECK(x.ndim() == 4, "explain {}: the input must be a batch [N, C, H, W]; got {}", what, shape_str(x.shape()));
  HPDL_CHECK(x.dim(0) > 0, "explain {}: the input batch is empty", what);
}

// A float32 CPU copy of x's values.
std::vector<float> host_values(const Tensor& x) { return x.detach().to_vector<float>(); }

// sum_n logits[n, targets[n]]: its gradient is each sample's own score gradient
// (samples do not interact in an eval-mode classifier).
Tensor target_score_sum(const Tensor& logits, const std::vector<int64_t>& targets) {
  const int64_t n = logits.dim(0), k = logits.dim(1);
  std::vector<float> onehot(static_cast<size_t>(n * k), 0.0f);
  for (int64_t i = 0; i < n; ++i) onehot[i * k + targets[i]] = 1.0f;
  Tensor mask = Tensor::from_vector(onehot, {n, k}).to(logits.dtype()).to(logits.device());
  return sum(mul(logits, mask));
}

// Per-sample target scores, without a graph.
std::vector<double> target_scores(const Model& model, const Tensor& x, const std::vector<int64_t>& targets) {
  NoGradGuard ng;
  Tensor logits = model(x);
  HPDL_CHECK(logits.ndim() == 2 && logits.dim(0) == x.dim(0), "explain: the model returned {} for an input of {}",
             shape_str(logits.shape()), shape_str(x.shape()));
  auto v = host_values(logits);
  const int64_t k = logits.dim(1);
  std::vector<double> out(static_cast<size_t>(x.dim(0)));
  for (int64_t i = 0; i < x.dim(0); ++i) out[i] = v[i * k + targets[i]];
  return out;
}

// Gradient of the target scores with respect to a batch given as host values.
std::vector<float> gradient_of(const Model& model, const std::vector<float>& values, const Shape& shape,
                               const std::vector<int64_t>& targets) {
  Tensor leaf = Tensor::from_vector(values, shape);
  leaf.set_requires_grad(true);
  Tensor logits = model(leaf);
  HPDL_CHECK(logits.ndim() == 2 && logits.dim(0) == shape[0], "explain: the model returned {} for an input of {}",
             shape_str(logits.shape()), shape_str(shape));
  return host_values(grad({target_score_sum(logits, targets)}, {leaf})[0]);
}

// Runs `total` model inputs of x's sample shape through `use`, at most
// `max_batch` at a time: build(k, row) writes input k into `row` (one sample's
// values) and returns its target class; use(first, values, shape, targets)
// gets each chunk, inputs first .. first + shape[0] - 1.
template <typename Build, typename Use>
void for_each_batch(int64_t total, int64_t max_batch, const Shape& x_shape, Build build, Use use) {
  const int64_t per = numel_of(x_shape) / x_shape[0];
  for (int64_t first = 0; first < total; first += max_batch) {
    const int64_t count = std::min(max_batch, total - first);
    std::vector<float> batch(static_cast<size_t>(count * per));
    std::vector<int64_t> targets(static_cast<size_t>(count));
    for (int64_t q = 0; q < count; ++q) targets[q] = build(first + q, batch.data() + q * per);
    Shape shape = x_shape;
    shape[0] = count;
    use(first, batch, shape, targets);
  }
}

}  // namespace

std::vector<int64_t> resolve_targets(const Tensor& logits, const std::vector<int64_t>& targets) {
  HPDL_CHECK(logits.ndim() == 2, "explain: the model's output must be logits [N, classes]; got {}",
             shape_str(logits.shape()));
  const int64_t n = logits.dim(0), k = logits.dim(1);
  if (!targets.empty()) {
    HPDL_CHECK(static_cast<int64_t>(targets.size()) == n, "explain: {} target classes for {} samples",
               targets.size(), n);
    for (int64_t i = 0; i < n; ++i)
      HPDL_CHECK(targets[i] >= 0 && targets[i] < k, "explain: sample {}: target class {} is not in [0, {})", i,
                 targets[i], k);
    return targets;
  }
  auto v = host_values(logits);
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    out[i] = std::max_element(v.begin() + i * k, v.begin() + (i + 1) * k) - (v.begin() + i * k);
  return out;
}

Tensor input_gradient(const Model& model, const Tensor& x, const std::vector<int64_t>& targets) {
  HPDL_CHECK(x.defined() && x.ndim() >= 1 && x.dim(0) > 0, "explain: the input batch is empty or undefined");
  Tensor leaf = x.detach().to(DType::f32).clone();
  leaf.set_requires_grad(true);
  Tensor logits = model(leaf);
  auto t = resolve_targets(logits, targets);
  return grad({target_score_sum(logits, t)}, {leaf})[0];
}

Tensor saliency(const Model& model, const Tensor& x, const std::vector<int64_t>& targets) {
  check_batch(x, "saliency");
  const int64_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3);
  auto g = host_values(input_gradient(model, x, targets));
  std::vector<float> out(static_cast<size_t>(n * hw), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t p = 0; p < hw; ++p) out[i * hw + p] = std::max(out[i * hw + p], std::abs(g[(i * c + ch) * hw + p]));
  return Tensor::from_vector(out, {n, x.dim(2), x.dim(3)});
}

Tensor IntegratedGradients::map() const {
  HPDL_CHECK(attributions.defined() && attributions.ndim() == 4, "IntegratedGradients::map: no [N, C, H, W] attributions");
  return hpdl::sum(attributions, {1});
}

IntegratedGradients integrated_gradients(const Model& model, const Tensor& x, const std::vector<int64_t>& targets,
                                         int64_t steps, const Tensor& baseline, int64_t max_batch) {
  check_batch(x, "integrated gradients");
  HPDL_CHECK(steps >= 1, "explain integrated gradients: steps must be at least 1; got {}", steps);
  HPDL_CHECK(max_batch >= 1, "explain integrated gradients: max_batch must be at least 1; got {}", max_batch);
  const int64_t n = x.dim(0), per = x.numel() / n;
  Shape sample = x.shape();
  sample[0] = 1;
  Tensor base = baseline.defined() ? baseline : Tensor::zeros(sample);
  HPDL_CHECK(base.shape() == x.shape() || base.shape() == sample,
             "explain integrated gradients: the baseline is {}; it must be {} or {}", shape_str(base.shape()),
             shape_str(x.shape()), shape_str(sample));
  auto xv = host_values(x), bv = host_values(base);
  const bool shared_base = base.dim(0) == 1;
  auto b_at = [&](int64_t i, int64_t j) { return bv[(shared_base ? 0 : i * per) + j]; };

  std::vector<int64_t> t;
  {
    NoGradGuard ng;
    t = resolve_targets(model(x.detach().to(DType::f32)), targets);
  }
  // Every (sample, step) path point, max_batch of them per model call.
  std::vector<double> grad_sum(static_cast<size_t>(n * per), 0.0);
  for_each_batch(
      n * steps, max_batch, x.shape(),
      [&](int64_t k, float* row) {
        const int64_t i = k / steps;
        const double alpha = (static_cast<double>(k % steps) + 0.5) / static_cast<double>(steps);
        for (int64_t j = 0; j < per; ++j) {
          const double b = b_at(i, j);
          row[j] = static_cast<float>(b + alpha * (xv[i * per + j] - b));
        }
        return t[i];
      },
      [&](int64_t first, const std::vector<float>& batch, const Shape& shape, const std::vector<int64_t>& bt) {
        auto g = gradient_of(model, batch, shape, bt);
        for (int64_t q = 0; q < shape[0]; ++q) {
          const int64_t i = (first + q) / steps;
          for (int64_t j = 0; j < per; ++j) grad_sum[i * per + j] += g[q * per + j];
        }
      });
  IntegratedGradients r;
  std::vector<float> attr(static_cast<size_t>(n * per));
  r.sum.assign(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < per; ++j) {
      const double a = (xv[i * per + j] - b_at(i, j)) * grad_sum[i * per + j] / static_cast<double>(steps);
      attr[i * per + j] = static_cast<float>(a);
      r.sum[i] += a;
    }
  r.attributions = Tensor::from_vector(attr, x.shape());
  auto at_x = target_scores(model, x.detach().to(DType::f32), t);
  Tensor full_base = shared_base ? base.expand(x.shape()).contiguous() : base;
  auto at_b = target_scores(model, full_base.detach().to(DType::f32), t);
  r.score_gap.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) r.score_gap[i] = at_x[i] - at_b[i];
  return r;
}

Split split_sequential(nn::Sequential& model, const Tensor& sample, const std::string& layer, const Model& pre) {
  check_batch(sample, "Grad-CAM");
  const auto& children = model.children();
  HPDL_CHECK(!children.empty(), "explain Grad-CAM: the model has no layers");
  // Each top-level child's output shape, for the default and for messages.
  std::vector<Shape> shapes;
  {
    NoGradGuard ng;
    Tensor h = pre ? pre(sample) : sample;
    for (const auto& [name, m] : children) {
      h = m->forward(h);
      shapes.push_back(h.shape());
    }
  }
  auto candidates = [&] {
    std::string s;
    for (size_t i = 0; i < children.size(); ++i)
      if (shapes[i].size() == 4)
        s += fmt::format("{}{} ({}, {})", s.empty() ? "" : ", ", children[i].first, children[i].second->type_name(),
                         shape_str(shapes[i]));
    return s.empty() ? std::string("none") : s;
  };
  int64_t at = -1;
  if (layer.empty()) {
    for (size_t i = 0; i + 1 < children.size(); ++i)
      if (shapes[i].size() == 4 && shapes[i][2] * shapes[i][3] > 1) at = static_cast<int64_t>(i);
    HPDL_CHECK(at >= 0, "explain Grad-CAM: no layer of the model has a spatial output [N, K, h, w] with h*w > 1");
  } else {
    for (size_t i = 0; i < children.size(); ++i)
      if (children[i].first == layer) at = static_cast<int64_t>(i);
    HPDL_CHECK(at >= 0, "explain Grad-CAM: the model has no top-level layer '{}'; layers with 4-D outputs: {}", layer,
               candidates());
    HPDL_CHECK(shapes[at].size() == 4 && at + 1 < static_cast<int64_t>(children.size()),
               "explain Grad-CAM: layer '{}' ({}) has output {}; it needs a 4-D [N, K, h, w] output followed by more "
               "layers. Layers with 4-D outputs: {}",
               layer, children[at].second->type_name(), shape_str(shapes[at]), candidates());
  }
  std::vector<nn::ModulePtr> front, back;
  for (int64_t i = 0; i < static_cast<int64_t>(children.size()); ++i)
    (i <= at ? front : back).push_back(children[i].second);
  Split s;
  s.layer = children[at].first;
  s.features = [front, pre](const Tensor& x) {
    Tensor h = pre ? pre(x) : x;
    for (const auto& m : front) h = m->forward(h);
    return h;
  };
  s.head = [back](const Tensor& a) {
    Tensor h = a;
    for (const auto& m : back) h = m->forward(h);
    return h;
  };
  return s;
}

Tensor grad_cam(const Split& split, const Tensor& x, const std::vector<int64_t>& targets) {
  check_batch(x, "Grad-CAM");
  HPDL_CHECK(split.features && split.head, "explain Grad-CAM: the split has no features or head function");
  Tensor a;
  {
    NoGradGuard ng;
    a = split.features(x.detach().to(DType::f32)).to(DType::f32).clone();
  }
  HPDL_CHECK(a.ndim() == 4 && a.dim(0) == x.dim(0), "explain Grad-CAM: layer '{}' gives {}; it must be [N, K, h, w]",
             split.layer, shape_str(a.shape()));
  a.set_requires_grad(true);
  Tensor logits = split.head(a);
  auto t = resolve_targets(logits, targets);
  auto g = host_values(grad({target_score_sum(logits, t)}, {a})[0]);
  auto av = host_values(a);
  const int64_t n = a.dim(0), k = a.dim(1), hw = a.dim(2) * a.dim(3);
  std::vector<float> cam(static_cast<size_t>(n * hw), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<double> acc(static_cast<size_t>(hw), 0.0);
    for (int64_t c = 0; c < k; ++c) {
      const float* gp = g.data() + (i * k + c) * hw;
      const float* ap = av.data() + (i * k + c) * hw;
      double weight = 0;
      for (int64_t p = 0; p < hw; ++p) weight += gp[p];
      weight /= static_cast<double>(hw);
      for (int64_t p = 0; p < hw; ++p) acc[p] += weight * ap[p];
    }
    for (int64_t p = 0; p < hw; ++p) cam[i * hw + p] = static_cast<float>(std::max(0.0, acc[p]));
  }
  return resize_bilinear(Tensor::from_vector(cam, {n, a.dim(2), a.dim(3)}), x.dim(2), x.dim(3));
}

Tensor occlusion(const Model& model, const Tensor& x, const std::vector<int64_t>& targets, int64_t window,
                 int64_t stride, double fill, int64_t max_batch) {
  check_batch(x, "occlusion");
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3), hw = h * w, per = c * hw;
  HPDL_CHECK(window >= 1 && window <= std::min(h, w),
             "explain occlusion: the window ({}) must be between 1 and the image's smaller side ({}x{})", window, h, w);
  HPDL_CHECK(stride >= 1, "explain occlusion: the stride must be at least 1; got {}", stride);
  HPDL_CHECK(max_batch >= 1, "explain occlusion: max_batch must be at least 1; got {}", max_batch);
  auto starts = [&](int64_t side) {
    std::vector<int64_t> s;
    for (int64_t p = 0; p + window < side; p += stride) s.push_back(p);
    s.push_back(side - window);
    return s;
  };
  const auto ys = starts(h), xs = starts(w);
  const int64_t per_sample = static_cast<int64_t>(ys.size() * xs.size());

  Tensor xf = x.detach().to(DType::f32).contiguous();
  std::vector<int64_t> t;
  {
    NoGradGuard ng;
    t = resolve_targets(model(xf), targets);
  }
  const auto base = target_scores(model, xf, t);
  auto xv = host_values(xf);
  std::vector<double> drop(static_cast<size_t>(n * hw), 0.0), cover(static_cast<size_t>(n * hw), 0.0);
  auto window_at = [&](int64_t k) {
    const int64_t pos = k % per_sample;
    return std::pair<int64_t, int64_t>{ys[pos / xs.size()], xs[pos % xs.size()]};
  };
  for_each_batch(
      n * per_sample, max_batch, x.shape(),
      [&](int64_t k, float* row) {
        const int64_t i = k / per_sample;
        const auto [y0, x0] = window_at(k);
        std::copy(xv.begin() + i * per, xv.begin() + (i + 1) * per, row);
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t y = y0; y < y0 + window; ++y)
            std::fill_n(row + ch * hw + y * w + x0, window, static_cast<float>(fill));
        return t[i];
      },
      [&](int64_t first, const std::vector<float>& batch, const Shape& shape, const std::vector<int64_t>& bt) {
        auto scores = target_scores(model, Tensor::from_vector(batch, shape), bt);
        for (int64_t q = 0; q < shape[0]; ++q) {
          const int64_t i = (first + q) / per_sample;
          const auto [y0, x0] = window_at(first + q);
          const double d = base[i] - scores[q];
          for (int64_t y = y0; y < y0 + window; ++y)
            for (int64_t xx = x0; xx < x0 + window; ++xx) {
              drop[i * hw + y * w + xx] += d;
              cover[i * hw + y * w + xx] += 1.0;
            }
        }
      });
  std::vector<float> out(static_cast<size_t>(n * hw));
  for (size_t p = 0; p < out.size(); ++p) out[p] = static_cast<float>(drop[p] / cover[p]);
  return Tensor::from_vector(out, {n, h, w});
}

DeletionCurve deletion_curve(const Model& model, const Tensor& x, const Tensor& maps,
                             const std::vector<int64_t>& targets, int64_t points, double fill, int64_t max_batch) {
  check_batch(x, "deletion curve");
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3), hw = h * w, per = c * hw;
  HPDL_CHECK(maps.defined() && maps.shape() == Shape({n, h, w}), "explain deletion curve: the maps are {}; the input needs [{}, {}, {}]",
             maps.defined() ? shape_str(maps.shape()) : std::string("undefined"), n, h, w);
  HPDL_CHECK(points >= 1, "explain deletion curve: points must be at least 1; got {}", points);
  HPDL_CHECK(max_batch >= 1, "explain deletion curve: max_batch must be at least 1; got {}", max_batch);
  Tensor xf = x.detach().to(DType::f32).contiguous();
  std::vector<int64_t> t;
  {
    NoGradGuard ng;
    t = resolve_targets(model(xf), targets);
  }
  auto xv = host_values(xf), mv = host_values(maps);
  // Each sample's pixels, most important first (ties: lower index first).
  std::vector<std::vector<int64_t>> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    order[i].resize(static_cast<size_t>(hw));
    for (int64_t p = 0; p < hw; ++p) order[i][p] = p;
    const float* m = mv.data() + i * hw;
    std::stable_sort(order[i].begin(), order[i].end(), [m](int64_t a, int64_t b) { return m[a] > m[b]; });
  }
  DeletionCurve curve;
  curve.probability.assign(static_cast<size_t>(points + 1), 0.0);
  for (int64_t s = 0; s <= points; ++s) curve.fractions.push_back(static_cast<double>(s) / static_cast<double>(points));
  for_each_batch(
      n * (points + 1), max_batch, x.shape(),
      [&](int64_t k, float* row) {
        const int64_t i = k / (points + 1), s = k % (points + 1);
        std::copy(xv.begin() + i * per, xv.begin() + (i + 1) * per, row);
        const int64_t removed = (s * hw + points / 2) / points;
        for (int64_t r = 0; r < removed; ++r)
          for (int64_t ch = 0; ch < c; ++ch) row[ch * hw + order[i][r]] = static_cast<float>(fill);
        return t[i];
      },
      [&](int64_t first, const std::vector<float>& batch, const Shape& shape, const std::vector<int64_t>& bt) {
        NoGradGuard ng;
        Tensor logits = model(Tensor::from_vector(batch, shape));
        auto pv = host_values(softmax(logits, 1));
        const int64_t k = logits.dim(1);
        for (int64_t q = 0; q < shape[0]; ++q)
          curve.probability[(first + q) % (points + 1)] += pv[q * k + bt[q]] / static_cast<double>(n);
      });
  for (int64_t s = 0; s < points; ++s)
    curve.area += 0.5 * (curve.probability[s] + curve.probability[s + 1]) / static_cast<double>(points);
  return curve;
}

Tensor random_map(int64_t n, int64_t height, int64_t width, uint64_t seed) {
  Generator g(seed);
  return Tensor::rand({n, height, width}, g, 0.0, 1.0);
}

Tensor resize_bilinear(const Tensor& maps, int64_t height, int64_t width) {
  HPDL_CHECK(maps.defined() && maps.ndim() == 3, "resize_bilinear: maps must be [N, h, w]; got {}",
             maps.defined() ? shape_str(maps.shape()) : std::string("undefined"));
  HPDL_CHECK(height >= 1 && width >= 1, "resize_bilinear: the output size {}x{} is empty", height, width);
  const int64_t n = maps.dim(0), h = maps.dim(1), w = maps.dim(2);
  auto v = host_values(maps);
  // Source coordinate of an output pixel's centre, and its two neighbours.
  struct Tap {
    int64_t lo, hi;
    float frac;
  };
  auto taps = [](int64_t in, int64_t out) {
    std::vector<Tap> t(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o) {
      double s = (static_cast<double>(o) + 0.5) * static_cast<double>(in) / static_cast<double>(out) - 0.5;
      s = std::clamp(s, 0.0, static_cast<double>(in - 1));
      const int64_t lo = static_cast<int64_t>(std::floor(s));
      t[o] = {lo, std::min(lo + 1, in - 1), static_cast<float>(s - static_cast<double>(lo))};
    }
    return t;
  };
  const auto ty = taps(h, height), tx = taps(w, width);
  std::vector<float> out(static_cast<size_t>(n * height * width));
  for (int64_t i = 0; i < n; ++i) {
    const float* m = v.data() + i * h * w;
    for (int64_t y = 0; y < height; ++y)
      for (int64_t x = 0; x < width; ++x) {
        const Tap& a = ty[y];
        const Tap& b = tx[x];
        const float top = m[a.lo * w + b.lo] * (1 - b.frac) + m[a.lo * w + b.hi] * b.frac;
        const float bottom = m[a.hi * w + b.lo] * (1 - b.frac) + m[a.hi * w + b.hi] * b.frac;
        out[(i * height + y) * width + x] = top * (1 - a.frac) + bottom * a.frac;
      }
  }
  return Tensor::from_vector(out, {n, height, width});
}

data::Image render_heatmap(const Tensor& image, const Tensor& map, bool signed_map, int64_t scale, int64_t scale_y) {
  HPDL_CHECK(image.defined() && image.ndim() == 3 && (image.dim(0) == 1 || image.dim(0) == 3),
             "render_heatmap: the image must be [C, H, W] with C = 1 or 3; got {}",
             image.defined() ? shape_str(image.shape()) : std::string("undefined"));
  const int64_t c = image.dim(0), h = image.dim(1), w = image.dim(2);
  HPDL_CHECK(map.defined() && map.shape() == Shape({h, w}), "render_heatmap: the map is {}; the image needs [{}, {}]",
             map.defined() ? shape_str(map.shape()) : std::string("undefined"), h, w);
  HPDL_CHECK(scale >= 1 && scale <= 64, "render_heatmap: scale {} is not in [1, 64]", scale);
  if (scale_y == 0) scale_y = scale;
  HPDL_CHECK(scale_y >= 1 && scale_y <= 64, "render_heatmap: scale_y {} is not in [1, 64]", scale_y);
  auto iv = host_values(image), mv = host_values(map);
  float top = 0;
  for (float v : mv) top = std::max(top, signed_map ? std::abs(v) : v);
  auto clamp01 = [](double v) { return std::clamp(v, 0.0, 1.0); };
  data::Image out;
  out.channels = 3;
  out.height = h * scale_y;
  out.width = 2 * w * scale;
  out.pixels.assign(static_cast<size_t>(3 * out.height * out.width), 0);
  auto put = [&](int64_t y, int64_t x, int64_t ch, double v) {
    const auto byte = static_cast<uint8_t>(std::lround(255.0 * clamp01(v)));
    for (int64_t dy = 0; dy < scale_y; ++dy)
      std::fill_n(out.pixels.begin() + (ch * out.height + y * scale_y + dy) * out.width + x * scale, scale, byte);
  };
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      double rgb[3], gray = 0;
      for (int64_t ch = 0; ch < 3; ++ch) {
        rgb[ch] = clamp01(iv[(c == 1 ? 0 : ch) * h * w + y * w + x]);
        gray += rgb[ch] / 3.0;
      }
      const double t = top > 0 ? mv[y * w + x] / top : 0.0;
      double heat[3], alpha = 0.65;
      if (signed_map) {  // red for positive, blue for negative, more opaque the larger |t|
        heat[0] = t > 0 ? 1.0 : 0.0;
        heat[1] = 0.0;
        heat[2] = t < 0 ? 1.0 : 0.0;
        alpha = 0.9 * std::sqrt(std::min(1.0, std::abs(t)));
      } else {  // black, red, yellow, white
        heat[0] = clamp01(3 * t);
        heat[1] = clamp01(3 * t - 1);
        heat[2] = clamp01(3 * t - 2);
      }
      for (int64_t ch = 0; ch < 3; ++ch) {
        put(y, x, ch, rgb[ch]);
        put(y, w + x, ch, (1 - alpha) * gray + alpha * heat[ch]);
      }
    }
  return out;
}

}  // namespace hpdl::explain
