// hpdl tune SEARCH.toml: hyperparameter search over the job's MPI ranks (see
// hpdl/tune/tune.h). Rank 0 prints each trial's result as its rung ends and
// appends it to RUN_DIR/results.jsonl; at the end it names the best trial and
// writes its resolved training config to RUN_DIR/best.toml.
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/hpdl/commands.h"
#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/io/file.h"
#include "hpdl/train/config.h"
#include "hpdl/tune/tune.h"

namespace hpdl::cli {
namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

std::string percent(double v) { return v >= 0 ? fmt::format("{:.2f}%", 100 * v) : std::string("-"); }

}  // namespace

void register_tune(CLI::App& app) {
  auto* cmd = app.add_subcommand("tune", "Hyperparameter search (random, grid, successive halving, ASHA, Hyperband, PBT) over MPI ranks");
  struct Opts {
    std::string search;
    std::vector<std::string> overrides;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("search", o->search, "Search file (TOML; see examples/tune/)")->required();
  cmd->add_option("--set", o->overrides, "KEY=VALUE: a search key (trials, method, ...) or a training config key");
  cmd->callback([o] {
    auto& world = dist::Communicator::world();
    const auto search = tune::load_search(o->search, o->overrides);
    // Trials on ranks that share cores split them (design decision 86); a trial's train.threads wins.
    const std::string thread_note = world.split_shared_cores();
    namespace fs = std::filesystem;
    const fs::path results = search.run_dir / "results.jsonl";
    int exists = 0;
    if (world.rank() == 0) exists = fs::exists(results) ? 1 : 0;
    world.broadcast_bytes(&exists, sizeof(exists));
    HPDL_CHECK(!exists, "hpdl tune: {} already holds a search ({}); choose another run_dir or remove it",
               search.run_dir.string(), results.string());
    const auto trials = tune::trial_overrides(search);
    const auto plan = tune::brackets(search);
    std::FILE* out = nullptr;
    if (world.rank() == 0) {
      fs::create_directories(search.run_dir);
      out = std::fopen(results.c_str(), "w");
      HPDL_CHECK(out, "hpdl tune: cannot write {}", results.string());
      std::string rung_text;  // "4 x 20 steps, 2 x 40 steps"; hyperband: "bracket 0: ...; bracket 1: ..."
      if (search.method == "asha") {  // how many trials reach each rung depends on the order of completion
        rung_text = "rungs at ";
        for (size_t r = 0; r < plan[0].rungs.size(); ++r)
          rung_text += fmt::format("{}{}", r ? ", " : "", plan[0].rungs[r].budget);
        rung_text += " " + search.resource;
      }
      for (size_t b = 0; b < plan.size() && search.method != "asha"; ++b) {
        if (plan.size() > 1) rung_text += fmt::format("{}bracket {}: ", b ? "; " : "", b);
        for (size_t r = 0; r < plan[b].rungs.size(); ++r)
          rung_text += fmt::format("{}{} x {} {}", r ? ", " : "", plan[b].rungs[r].trials, plan[b].rungs[r].budget,
                                   search.resource);
      }
      std::printf("hpdl tune: %s search, %zu trials (%s), %d rank(s) in groups of %lld, metric %s (%s), runs in %s\n",
                  search.method.c_str(), trials.size(), rung_text.c_str(), world.size(),
                  static_cast<long long>(search.ranks_per_trial), search.metric.c_str(), search.direction.c_str(),
                  search.run_dir.c_str());
      if (!thread_note.empty()) std::printf("hpdl tune: %d thread(s) per rank: %s\n", num_threads(), thread_note.c_str());
      std::fflush(stdout);
    }
    auto on_record = [&](const tune::Record& r) {
      nlohmann::json j = {{"trial", r.trial}, {"rung", r.rung}, {"budget", r.budget}, {"resource", search.resource},
                          {"overrides", r.overrides}, {"ok", r.outcome.ok}, {"seconds", r.outcome.seconds}};
      if (search.method == "hyperband") j["bracket"] = r.bracket;
      if (r.parent >= 0) j["parent"] = r.parent;
      if (r.group >= 0) j["group"] = r.group;
      // Every record names what it was ranked by, so the file explains its own choice.
      j["metric_name"] = search.metric, j["direction"] = search.direction;
      if (r.outcome.ok) {
        j["metric"] = r.metric;
        if (r.outcome.val_accuracy >= 0) j["val_accuracy"] = r.outcome.val_accuracy;
        if (r.outcome.val_loss >= 0) j["val_loss"] = r.outcome.val_loss;
        if (r.outcome.test_accuracy >= 0) j["test_accuracy"] = r.outcome.test_accuracy;
        if (r.outcome.test_loss >= 0) j["test_loss"] = r.outcome.test_loss;
        const std::pair<const char*, double> regression[] = {
            {"val_rmse", r.outcome.val_rmse},   {"val_mae", r.outcome.val_mae},   {"val_r2", r.outcome.val_r2},
            {"test_rmse", r.outcome.test_rmse}, {"test_mae", r.outcome.test_mae}, {"test_r2", r.outcome.test_r2}};
        for (const auto& [name, v] : regression)
          if (std::isfinite(v)) j[name] = v;
      } else {
        j["error"] = r.outcome.error;
      }
      std::fprintf(out, "%s\n", j.dump().c_str());
      std::fflush(out);
      std::string what = r.outcome.ok ? fmt::format("{} {:.4f}", search.metric, r.metric) : "FAILED: " + r.outcome.error;
      const std::string where = search.method == "hyperband" ? fmt::format("bracket {} rung {}", r.bracket, r.rung)
                                : search.method == "pbt"     ? fmt::format("generation {}", r.rung)
                                                             : fmt::format("rung {}", r.rung);
      const std::string from = r.parent >= 0  ? fmt::format("  (from trial {:03d})", r.parent)
                               : r.group >= 0 ? fmt::format("  (group {})", r.group)
                                              : std::string();
      std::printf("%s (%lld %s) trial %03lld  %s  (%.1f s)  %s%s\n", where.c_str(), static_cast<long long>(r.budget),
                  search.resource.c_str(), static_cast<long long>(r.trial), what.c_str(), r.outcome.seconds,
                  join(r.overrides).c_str(), from.c_str());
      std::fflush(stdout);
    };
    auto result = tune::run_search(search, tune::training_runner(search), world, on_record,
                                   tune::checkpoint_cloner(search));
    if (world.rank() == 0) {
      std::fclose(out);
      const auto& b = result.best;
      HPDL_CHECK(b.outcome.ok, "hpdl tune: every trial of the last rung failed; see {}", results.string());
      std::vector<std::string> all = search.set;
      all.insert(all.end(), b.overrides.begin(), b.overrides.end());
      train::Config best = train::load_config(search.config, all);
      train::save_config(best, search.run_dir / "best.toml");
      const std::string test = std::isfinite(b.outcome.test_rmse)
                                   ? fmt::format("test RMSE {:.6g}, R2 {:.4f}", b.outcome.test_rmse, b.outcome.test_r2)
                                   : "test accuracy " + percent(b.outcome.test_accuracy);
      std::printf("best: trial %03lld (%s): %s %.6g (%s), %s after %lld %s; its config: %s\n",
                  static_cast<long long>(b.trial), join(b.overrides).c_str(), search.metric.c_str(), b.metric,
                  search.direction.c_str(), test.c_str(), static_cast<long long>(b.budget), search.resource.c_str(),
                  (search.run_dir / "best.toml").c_str());
    }
  });
}

}  // namespace hpdl::cli
