// hpdl train CONFIG.toml [--set key=value ...] [--resume RUN_DIR]: the main job.
#include <cstdio>

#include "apps/hpdl/commands.h"
#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"

namespace hpdl::cli {

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model from a TOML config (on one rank or under mpirun)");
  struct Opts {
    std::string config;
    std::vector<std::string> overrides;
    std::string resume;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("config", o->config, "TOML config file (see examples/)");
  cmd->add_option("--set", o->overrides, "Override a config key, e.g. --set train.epochs=2 (repeatable)");
  cmd->add_option("--resume", o->resume,
                  "Continue the run in RUN_DIR from its newest valid checkpoint (its config.toml is used "
                  "when no CONFIG is given)");
  cmd->callback([o] {
    std::string path = o->config;
    if (path.empty()) {
      if (o->resume.empty()) throw CLI::ValidationError("train", "give a CONFIG file, or --resume RUN_DIR");
      path = o->resume + "/config.toml";
    }
    auto overrides = o->overrides;
    if (!o->resume.empty()) overrides.push_back("train.run_dir=" + o->resume);
    train::Config cfg = train::load_config(path, overrides);
    train::Trainer trainer(cfg);
    auto s = trainer.run(!o->resume.empty());
    if (error_rank() <= 0) {
      if (s.test_metrics.count("rmse"))
        std::printf("test RMSE %.6g, MAE %.6g, R2 %.6f (loss %.6g) after %lld epochs, %lld steps, %.1f s, %.0f "
                    "samples/s; run in %s\n", s.test_metrics["rmse"], s.test_metrics["mae"], s.test_metrics["r2"],
                    s.test_loss, static_cast<long long>(s.epochs_done), static_cast<long long>(s.steps), s.seconds,
                    s.train_samples_per_s, s.run_dir.string().c_str());
      else if (s.test_accuracy >= 0)
        std::printf("test accuracy %.2f%% (loss %.4f) after %lld epochs, %lld steps, %.1f s, %.0f samples/s; run in %s\n",
                    100 * s.test_accuracy, s.test_loss, static_cast<long long>(s.epochs_done),
                    static_cast<long long>(s.steps), s.seconds, s.train_samples_per_s, s.run_dir.string().c_str());
      else
        std::printf("%lld steps, %.1f s, %.0f samples/s; run in %s\n", static_cast<long long>(s.steps), s.seconds,
                    s.train_samples_per_s, s.run_dir.string().c_str());
      if (s.stopped_early)
        std::printf("stopped early (train.early_stopping_patience): best %s %.6g after epoch %lld\n",
                    s.monitor.c_str(), s.best_metric, static_cast<long long>(s.best_epoch));
    }
  });
}

}  // namespace hpdl::cli
