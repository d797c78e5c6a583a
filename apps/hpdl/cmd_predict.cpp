// hpdl predict --checkpoint RUN_DIR [--best] INPUT...: class predictions for images in
// idx, .npy, PNG or HDF5 files (FILE.h5[:DATASET]; uint8 pixels scaled to
// [0, 1], then the config's normalization, as in training). One line per sample: file, index, class, probability;
// for a model trained with a regression loss (train.loss = mse, l1, huber): file, index and its k output values.
#include <fmt/format.h>

#include <cstdio>

#include "apps/hpdl/commands.h"
#include "apps/hpdl/inputs.h"
#include "hpdl/autograd/node.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/objective.h"

namespace hpdl::cli {

void register_predict(CLI::App& app) {
  auto* cmd = app.add_subcommand("predict", "Predict classes for images in idx, .npy, PNG or HDF5 files");
  struct Opts {
    CheckpointArg checkpoint;
    std::string config;
    std::vector<std::string> inputs;
    int64_t limit = 0;
  };
  auto o = std::make_shared<Opts>();
  add_checkpoint_options(cmd, o->checkpoint);
  cmd->add_option("--config", o->config, "TOML config (default: RUN_DIR/config.toml)");
  cmd->add_option("--limit", o->limit, "Print at most this many predictions per file (0: all)");
  cmd->add_option("inputs", o->inputs,
                  "idx, .npy or .png files, or FILE.h5[:DATASET] (default dataset: the run's data.hdf5_test_x)")
      ->required();
  cmd->callback([o] {
    auto m = load_inference_model(o->checkpoint, o->config);
    NoGradGuard ng;
    const bool regression = train::Objective(m.cfg).regression();
    for (const auto& file : o->inputs) {
      Tensor x = normalize_inputs(m.cfg, read_inputs(file, m.sample, m.cfg.data.hdf5_test_x));
      if (regression) {
        Tensor y = m.model->forward(x).to(DType::f64);  // [N, k]
        auto v = y.to_vector<double>();
        const int64_t k = y.dim(1), rows = y.dim(0);
        const int64_t n = o->limit > 0 ? std::min<int64_t>(o->limit, rows) : rows;
        for (int64_t i = 0; i < n; ++i) {
          std::string line = fmt::format("{}\t{}\tvalue", file, i);
          for (int64_t j = 0; j < k; ++j) line += fmt::format(" {:.7g}", v[static_cast<size_t>(i * k + j)]);
          std::printf("%s\n", line.c_str());
        }
        continue;
      }
      Tensor probs = softmax(m.model->forward(x), 1);
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
