// Transforms. Each random transform draws its numbers from one stream per
// (seed, epoch, index, slot); the stream id is a chain of SplitMix64 hashes,
// so neighbouring samples or epochs get unrelated streams.
#include "hpdl/data/transforms.h"

#include <algorithm>
#include <cstring>

#include "hpdl/core/error.h"
#include "hpdl/core/random.h"

namespace hpdl::data {

uint64_t transform_stream(const SampleKey& key, int slot) {
  uint64_t s = Generator::bits(key.seed ^ 0x7472616E73666Dull, key.epoch);
  s = Generator::bits(s, static_cast<uint64_t>(key.index));
  return Generator::bits(s, static_cast<uint64_t>(slot));
}

static void check_chw(const Shape& s, const char* op) {
  HPDL_CHECK(s.size() == 3, "{}: expects a [C, H, W] sample, got {}", op, shape_str(s));
}

Normalize::Normalize(std::vector<float> mean, std::vector<float> std) : mean_(std::move(mean)) {
  HPDL_CHECK(!mean_.empty() && mean_.size() == std.size(), "normalize: {} means for {} standard deviations",
             mean_.size(), std.size());
  for (float s : std) {
    HPDL_CHECK(s > 0, "normalize: standard deviation {} must be > 0 (data.normalize)", s);
    inv_std_.push_back(1.0f / s);
  }
}

void Normalize::apply(const float* in, const Shape& s, float* out, uint64_t) const {
  check_chw(s, "normalize");
  const int64_t C = s[0], hw = s[1] * s[2];
  HPDL_CHECK(mean_.size() == 1 || static_cast<int64_t>(mean_.size()) == C,
             "normalize: {} mean/std values for {} channels (give 1 or {})", mean_.size(), C, C);
  for (int64_t c = 0; c < C; ++c) {
    const size_t k = mean_.size() == 1 ? 0 : static_cast<size_t>(c);
    const float m = mean_[k], is = inv_std_[k];
    for (int64_t i = 0; i < hw; ++i) out[c * hw + i] = (in[c * hw + i] - m) * is;
  }
}

RandomCrop::RandomCrop(int64_t padding, int64_t height, int64_t width)
    : padding_(padding), height_(height), width_(width) {
  HPDL_CHECK(padding >= 0 && height >= 0 && width >= 0, "random_crop: padding {} and size {}x{} must be >= 0",
             padding, height, width);
}

Shape RandomCrop::output_shape(const Shape& in) const {
  check_chw(in, "random_crop");
  Shape out{in[0], height_ ? height_ : in[1], width_ ? width_ : in[2]};
  HPDL_CHECK(out[1] <= in[1] + 2 * padding_ && out[2] <= in[2] + 2 * padding_,
             "random_crop: a {}x{} crop does not fit a {} image padded by {}", out[1], out[2], shape_str(in), padding_);
  return out;
}

void RandomCrop::apply(const float* in, const Shape& s, float* out, uint64_t stream) const {
  const Shape o = output_shape(s);
  const int64_t C = s[0], H = s[1], W = s[2], oh = o[1], ow = o[2];
  // Top-left corner of the window in padded coordinates, uniform over all placements.
  const int64_t y0 = static_cast<int64_t>(Generator::uniform(stream, 0) * static_cast<double>(H + 2 * padding_ - oh + 1));
  const int64_t x0 = static_cast<int64_t>(Generator::uniform(stream, 1) * static_cast<double>(W + 2 * padding_ - ow + 1));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t y = 0; y < oh; ++y) {
      const int64_t sy = y0 + y - padding_;
      float* row = out + (c * oh + y) * ow;
      if (sy < 0 || sy >= H) {
        std::fill_n(row, ow, 0.0f);
        continue;
      }
      for (int64_t x = 0; x < ow; ++x) {
        const int64_t sx = x0 + x - padding_;
        row[x] = (sx < 0 || sx >= W) ? 0.0f : in[(c * H + sy) * W + sx];
      }
    }
}

void RandomHorizontalFlip::apply(const float* in, const Shape& s, float* out, uint64_t stream) const {
  check_chw(s, "random_hflip");
  const int64_t rows = s[0] * s[1], W = s[2];
  if (Generator::uniform(stream, 0) < p_) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t x = 0; x < W; ++x) out[r * W + x] = in[r * W + (W - 1 - x)];
  } else {
    std::memcpy(out, in, static_cast<size_t>(rows * W) * sizeof(float));
  }
}

Shape Pipeline::output_shape(const Shape& in) const {
  Shape s = in;
  for (auto& t : steps_) s = t->output_shape(s);
  return s;
}

int64_t Pipeline::scratch_numel(const Shape& in) const {
  Shape s = in;
  int64_t m = numel_of(s);
  for (auto& t : steps_) m = std::max(m, numel_of(s = t->output_shape(s)));
  return m;
}

void Pipeline::apply(const float* data, const Shape& in, float* out, float* a, float* b, const SampleKey& key) const {
  if (steps_.empty()) {
    std::memcpy(out, data, static_cast<size_t>(numel_of(in)) * sizeof(float));
    return;
  }
  // Ping-pong between the scratch buffers; the last step writes straight into out.
  const float* src = data;
  Shape s = in;
  for (size_t i = 0; i < steps_.size(); ++i) {
    float* dst = i + 1 == steps_.size() ? out : (src == a ? b : a);
    steps_[i]->apply(src, s, dst, transform_stream(key, static_cast<int>(i)));
    s = steps_[i]->output_shape(s);
    src = dst;
  }
}

Pipeline make_pipeline(const AugmentOptions& o, bool train) {
  Pipeline p;
  if (train && o.random_crop) p.add(std::make_shared<RandomCrop>(o.crop_padding));
  if (train && o.random_flip) p.add(std::make_shared<RandomHorizontalFlip>(0.5));
  if (o.normalize) p.add(std::make_shared<Normalize>(o.mean, o.std));
  return p;
}

}  // namespace hpdl::data
