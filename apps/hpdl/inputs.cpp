#include "apps/hpdl/inputs.h"

#include <cstring>
#include <filesystem>

#include "hpdl/data/readers.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/trainer.h"

namespace hpdl::cli {

InferenceModel load_inference_model(const std::string& checkpoint, const std::string& config) {
  InferenceModel m;
  m.cfg = train::load_config(config.empty() ? checkpoint + "/config.toml" : config);
  m.sample = {m.cfg.model.in_channels, 28, 28};
  if (m.cfg.data.dataset != "fashion-mnist" && m.cfg.data.dataset != "mnist") {
    auto ds = train::load_datasets(m.cfg.data);
    m.sample = ds.test->sample_shape();
  }
  m.model = train::build_model(m.cfg, m.sample);
  train::load_model_weights(*m.model, checkpoint);
  m.model->eval();
  return m;
}

Tensor read_inputs(const std::string& file, const Shape& sample) {
  namespace fs = std::filesystem;
  std::string ext = fs::path(file).extension().string();
  const int64_t per = numel_of(sample);
  if (ext == ".png") {
    auto img = data::read_png(file, static_cast<int>(sample[0]));
    HPDL_CHECK(img.height == sample[1] && img.width == sample[2], "{}: image is {}x{}, the model expects {}x{}", file,
               img.height, img.width, sample[1], sample[2]);
    Tensor t = Tensor::from_vector(img.pixels, {1, sample[0], sample[1], sample[2]});
    return mul(t.to(DType::f32), 1.0 / 255.0);
  }
  data::RawArray a = ext == ".npy" ? data::read_npy(file) : data::read_idx(file);
  HPDL_CHECK(a.numel() % per == 0, "{}: {} values is not a whole number of {} samples", file, a.numel(),
             shape_str(sample));
  Tensor raw = Tensor::empty({a.numel() / per, sample[0], sample[1], sample[2]}, a.dtype);
  std::memcpy(raw.raw_data(), a.bytes.data(), a.bytes.size());
  Tensor f = raw.to(DType::f32);
  return a.dtype == DType::u8 ? mul(f, 1.0 / 255.0) : f;
}

Tensor normalize_inputs(const train::Config& cfg, const Tensor& x) {
  if (!cfg.data.normalize) return x;
  const int64_t c = x.dim(1);
  auto per_channel = [&](const std::vector<double>& v) {
    std::vector<float> out(static_cast<size_t>(c));
    for (int64_t i = 0; i < c; ++i) out[i] = static_cast<float>(v.size() == 1 ? v[0] : v.at(i));
    return Tensor::from_vector(out, {1, c, 1, 1});
  };
  return div(sub(x, per_channel(cfg.data.mean)), per_channel(cfg.data.std));
}

}  // namespace hpdl::cli
