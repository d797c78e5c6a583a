// hpdl eval --checkpoint RUN_DIR|FILE [--best] [CONFIG]: test-set loss and accuracy of a checkpoint
// (regression losses: RMSE, MAE and R^2); --best: the run's best model (train.keep_best).
#include <cstdio>

#include "apps/hpdl/commands.h"
#include "apps/hpdl/inputs.h"
#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"

namespace hpdl::cli {

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Evaluate a checkpoint on the test set");
  struct Opts {
    CheckpointArg checkpoint;
    std::string config;
    std::vector<std::string> overrides;
  };
  auto o = std::make_shared<Opts>();
  add_checkpoint_options(cmd, o->checkpoint);
  cmd->add_option("config", o->config, "TOML config (default: RUN_DIR/config.toml)");
  cmd->add_option("--set", o->overrides, "Override a config key (repeatable)");
  cmd->callback([o] {
    const std::string weights = o->checkpoint.weights();  // a bad --best is named before the config is read
    std::string path = o->config.empty() ? o->checkpoint.default_config() : o->config;
    train::Config cfg = train::load_config(path, o->overrides);
    train::apply_layout(cfg);
    const train::Objective objective(cfg);
    auto ds = train::load_datasets(cfg.data, objective.targets());
    auto model = train::build_model(cfg, train::make_pipeline(cfg.data, false).output_shape(ds.test->sample_shape()));
    train::load_model_weights(*model, weights, !o->checkpoint.live);
    auto r = train::evaluate(*model, ds.test, cfg.data, nullptr, &objective);
    if (error_rank() <= 0 && objective.regression())
      std::printf("test RMSE %.6g, MAE %.6g, R2 %.6f (%lld samples), loss %.6g\n", r.metrics["rmse"], r.metrics["mae"],
                  r.metrics["r2"], static_cast<long long>(r.samples), r.loss);
    else if (error_rank() <= 0)
      std::printf("test accuracy %.2f%% (%lld samples), loss %.4f\n", 100 * r.accuracy,
                  static_cast<long long>(r.samples), r.loss);
  });
}

}  // namespace hpdl::cli
