// Per-sample transforms on float [C, H, W] images: normalize, random crop with
// zero padding, random horizontal flip. Random choices come from the
// counter-based Generator keyed by (seed, epoch, sample index, transform
// slot), so an augmented sample is the same whichever worker thread made it,
// in whatever order, and a resumed run re-creates it exactly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/core/shape.h"

namespace hpdl::data {

// Identifies one sample draw: the stream a transform's randomness comes from.
struct SampleKey {
  uint64_t seed = 0;
  uint64_t epoch = 0;
  int64_t index = 0;  // dataset index of the sample
};

class Transform {
 public:
  virtual ~Transform() = default;
  virtual std::string name() const = 0;
  // The output shape for an input of `in` ([C, H, W]); throws if unsupported.
  virtual Shape output_shape(const Shape& in) const { return in; }
  // Reads `in` (shape in_shape), writes `out` (output_shape(in_shape)). `in`
  // and `out` never alias. `stream` is this transform's random stream for the
  // sample: draw with Generator::uniform(stream, k) for k = 0, 1, ...
  virtual void apply(const float* in, const Shape& in_shape, float* out, uint64_t stream) const = 0;
};

// (x - mean[c]) / std[c] per channel; a single mean/std value applies to all channels.
class Normalize : public Transform {
 public:
  Normalize(std::vector<float> mean, std::vector<float> std);
  std::string name() const override { return "normalize"; }
  void apply(const float* in, const Shape& s, float* out, uint64_t stream) const override;

 private:
  std::vector<float> mean_, inv_std_;
};

// Pads each side by `padding` zeros, then takes a random height x width window
// (torchvision RandomCrop(size, padding)). height/width 0 keep the input size.
class RandomCrop : public Transform {
 public:
  RandomCrop(int64_t padding, int64_t height = 0, int64_t width = 0);
  std::string name() const override { return "random_crop"; }
  Shape output_shape(const Shape& in) const override;
  void apply(const float* in, const Shape& s, float* out, uint64_t stream) const override;

 private:
  int64_t padding_, height_, width_;
};

// Mirrors the image left-right with probability p.
class RandomHorizontalFlip : public Transform {
 public:
  explicit RandomHorizontalFlip(double p = 0.5) : p_(p) {}
  std::string name() const override { return "random_hflip"; }
  void apply(const float* in, const Shape& s, float* out, uint64_t stream) const override;

 private:
  double p_;
};

// Transforms applied in order. apply() is const and thread-safe; the caller provides scratch space of scratch_numel() floats.
class Pipeline {
 public:
  Pipeline() = default;
  void add(std::shared_ptr<Transform> t) { steps_.push_back(std::move(t)); }
  bool empty() const { return steps_.empty(); }
  Shape output_shape(const Shape& in) const;
  // The largest intermediate, for sizing two scratch buffers.
  int64_t scratch_numel(const Shape& in) const;
  // Transforms `data` (shape in) into `out` (output_shape(in)), using two
  // caller buffers a and b of scratch_numel(in) floats each; `data` may be `a`.
  void apply(const float* data, const Shape& in, float* out, float* a, float* b, const SampleKey& key) const;

 private:
  std::vector<std::shared_ptr<Transform>> steps_;
};

// The usual image pipeline, from the config's [data] flags: for training
// [random crop] [random flip] [normalize]; for evaluation only [normalize].
struct AugmentOptions {
  bool random_crop = false;
  int64_t crop_padding = 4;
  bool random_flip = false;
  bool normalize = true;
  std::vector<float> mean{0.2860f}, std{0.3530f};
};
Pipeline make_pipeline(const AugmentOptions& options, bool train);

// The random stream of transform `slot` for a sample.
uint64_t transform_stream(const SampleKey& key, int slot);

}  // namespace hpdl::data
