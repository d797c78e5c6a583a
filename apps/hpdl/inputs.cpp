#include "apps/hpdl/inputs.h"

#include <CLI/CLI.hpp>
#include <fmt/ranges.h>

#include <cstring>
#include <filesystem>

#include "hpdl/data/readers.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/checkpoint.h"
#include "hpdl/train/trainer.h"

namespace hpdl::cli {

std::string CheckpointArg::weights() const {
  HPDL_CHECK(!(best && live), "--live and --best: the best model file holds only the weights that were evaluated "
             "(the averages of a train.ema_decay run); use --live without --best for the newest live weights");
  if (!best) return path;
  HPDL_CHECK(std::filesystem::is_directory(path), "--best reads a run directory's best model: give --checkpoint "
             "RUN_DIR, not the file '{}'", path);
  const auto file = train::CheckpointManager::best_path(path);
  HPDL_CHECK(std::filesystem::exists(file), "--best: {} does not exist: the run in {} was trained without "
             "train.keep_best = true, or has not evaluated yet (leave out --best for its newest checkpoint)",
             file.string(), path);
  return file.string();
}

void add_checkpoint_options(CLI::App* cmd, CheckpointArg& arg) {
  cmd->add_option("--checkpoint", arg.path, "A run directory (newest valid checkpoint) or a .safetensors file")
      ->required();
  cmd->add_flag("--best", arg.best,
                "Use the run directory's best model (RUN_DIR/checkpoints/best.safetensors, written with "
                "train.keep_best = true) instead of its newest checkpoint");
  cmd->add_flag("--live", arg.live,
                "A run trained with train.ema_decay: its live weights instead of their averages (the default)");
}

InferenceModel load_inference_model(const CheckpointArg& checkpoint, const std::string& config) {
  InferenceModel m;
  const std::string weights = checkpoint.weights();  // a bad --best is named before the config is read
  m.cfg = train::load_config(config.empty() ? checkpoint.default_config() : config);
  m.sample = {m.cfg.model.in_channels, 28, 28};
  if (m.cfg.data.dataset == "hdf5") {
    // The sample shape from the test dataset's header, as data::load_hdf5 gives it, without reading it.
    const auto info = data::hdf5_dataset_info(m.cfg.data.path, m.cfg.data.hdf5_test_x);
    const Shape& d = info.shape;
    HPDL_CHECK(d.size() >= 2 && d.size() <= 4, "{}: dataset '{}' is {}, expected [N, C, H, W], [N, H, W] or [N, F] "
               "(data.hdf5_test_x)", m.cfg.data.path, m.cfg.data.hdf5_test_x, shape_str(d));
    m.sample = d.size() == 4 ? Shape{d[1], d[2], d[3]} : d.size() == 3 ? Shape{1, d[1], d[2]} : Shape{1, 1, d[1]};
  } else if (m.cfg.data.dataset != "fashion-mnist" && m.cfg.data.dataset != "mnist") {
    auto ds = train::load_datasets(m.cfg.data, train::Objective(m.cfg).targets());
    m.sample = ds.test->sample_shape();
  }
  train::apply_layout(m.cfg);
  m.model = train::build_model(m.cfg, m.sample);
  train::load_model_weights(*m.model, weights, !checkpoint.live);
  m.model->eval();
  return m;
}

namespace {

bool is_hdf5_name(const std::filesystem::path& p) {
  const std::string ext = p.extension().string();
  return ext == ".h5" || ext == ".hdf5" || ext == ".he5";
}

// The HDF5 dataset `name` of `file` as float32 [N, sample...].
Tensor read_hdf5_inputs(const std::string& file, const std::string& name, const Shape& sample) {
  const data::Hdf5DatasetInfo info = data::hdf5_dataset_info(file, name);
  const int64_t per = numel_of(sample);
  Shape rest(info.shape.begin() + (info.shape.empty() ? 0 : 1), info.shape.end());
  // The shapes the training reader (data::load_hdf5) accepts for the same samples.
  const bool fits = info.shape.size() >= 2 &&
                    (rest == sample || (rest.size() == 2 && sample.size() == 3 && sample[0] == 1 &&
                                        rest[0] == sample[1] && rest[1] == sample[2]) ||
                     (rest.size() == 1 && sample.size() == 3 && sample[0] == 1 && sample[1] == 1 &&
                      rest[0] == sample[2]));
  HPDL_CHECK(fits, "{}: dataset '{}' is {}, the model takes samples [N, {}] (or [N, H, W] for one channel, [N, F] "
             "for feature vectors)", file, name, shape_str(info.shape), fmt::join(sample, ", "));
  const int64_t n = info.shape[0];
  Shape full{n};
  full.insert(full.end(), sample.begin(), sample.end());
  if (info.dtype == DType::u8) {  // pixels: scaled to [0, 1] as in training
    Tensor raw = Tensor::empty(full, DType::u8);
    data::read_hdf5_into(file, name, DType::u8, raw.raw_data(), static_cast<size_t>(n * per));
    return mul(raw.to(DType::f32), 1.0 / 255.0);
  }
  Tensor f = Tensor::empty(full, DType::f32);
  data::read_hdf5_into(file, name, DType::f32, f.raw_data(), static_cast<size_t>(n * per) * sizeof(float));
  return f;
}

}  // namespace

InputSpec parse_input(const std::string& arg) {
  namespace fs = std::filesystem;
  InputSpec s{arg, "", is_hdf5_name(arg)};
  // "FILE.h5:DATASET", unless a file of that whole name exists.
  if (const size_t colon = arg.find(':'); colon != std::string::npos && !fs::exists(arg)) {
    const std::string file = arg.substr(0, colon);
    if (is_hdf5_name(file)) s = {file, arg.substr(colon + 1), true};
  }
  return s;
}

Tensor read_inputs(const std::string& arg, const Shape& sample, const std::string& hdf5_dataset) {
  namespace fs = std::filesystem;
  const InputSpec spec = parse_input(arg);
  if (spec.hdf5) return read_hdf5_inputs(spec.file, spec.dataset.empty() ? hdf5_dataset : spec.dataset, sample);
  const std::string& file = spec.file;
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
