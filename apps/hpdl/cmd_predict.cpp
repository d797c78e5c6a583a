// hpdl predict --checkpoint RUN_DIR INPUT...: class predictions for images in
// idx, .npy or PNG files (uint8 pixels scaled to [0, 1], then the config's
// normalization, as in training). One line per sample: file, index, class, probability.
#include <cstdio>
#include <filesystem>

#include "apps/hpdl/commands.h"
#include "hpdl/autograd/node.h"
#include "hpdl/data/readers.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"

namespace hpdl::cli {
namespace {

// Samples [N, C, H, W] as float32 in [0, 1] (uint8) or as stored (float).
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

}  // namespace

void register_predict(CLI::App& app) {
  auto* cmd = app.add_subcommand("predict", "Predict classes for images in idx, .npy or PNG files");
  struct Opts {
    std::string checkpoint, config;
    std::vector<std::string> inputs;
    int64_t limit = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--checkpoint", o->checkpoint, "A run directory (newest valid checkpoint) or a .safetensors file")
      ->required();
  cmd->add_option("--config", o->config, "TOML config (default: RUN_DIR/config.toml)");
  cmd->add_option("--limit", o->limit, "Print at most this many predictions per file (0: all)");
  cmd->add_option("inputs", o->inputs, "idx, .npy or .png files")->required();
  cmd->callback([o] {
    std::string path = o->config.empty() ? o->checkpoint + "/config.toml" : o->config;
    train::Config cfg = train::load_config(path);
    Shape sample = {cfg.model.in_channels, 28, 28};
    if (cfg.data.dataset != "fashion-mnist" && cfg.data.dataset != "mnist") {
      auto ds = train::load_datasets(cfg.data);
      sample = ds.test->sample_shape();
    }
    auto model = train::build_model(cfg, sample);
    train::load_model_weights(*model, o->checkpoint);
    model->eval();
    NoGradGuard ng;
    for (const auto& file : o->inputs) {
      Tensor x = read_inputs(file, sample);
      if (cfg.data.normalize) {
        // The training pipeline's normalization, per channel.
        std::vector<float> mean(cfg.data.mean.begin(), cfg.data.mean.end()), sd(cfg.data.std.begin(), cfg.data.std.end());
        Shape cs = {1, sample[0], 1, 1};
        auto per_channel = [&](const std::vector<float>& v) {
          std::vector<float> out(static_cast<size_t>(sample[0]));
          for (int64_t c = 0; c < sample[0]; ++c) out[c] = v.size() == 1 ? v[0] : v.at(c);
          return Tensor::from_vector(out, cs);
        };
        x = div(sub(x, per_channel(mean)), per_channel(sd));
      }
      Tensor probs = softmax(model->forward(x), 1);
      auto cls = argmax(probs, 1).to_vector<int64_t>();
      auto p = probs.to_vector<float>();
      const int64_t C = probs.dim(1);
      int64_t n = o->limit > 0 ? std::min<int64_t>(o->limit, static_cast<int64_t>(cls.size())) : cls.size();
      for (int64_t i = 0; i < n; ++i)
        std::printf("%s\t%lld\tclass %lld\tp=%.4f\n", file.c_str(), static_cast<long long>(i),
                    static_cast<long long>(cls[i]), p[i * C + cls[i]]);
    }
  });
}

}  // namespace hpdl::cli
