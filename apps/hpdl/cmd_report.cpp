// hpdl report RUN_DIR [--output FILE.html]: (re)writes a run's HTML report from
// its metrics.jsonl, config.toml, trace.json and checkpoints/. A missing or
// malformed metrics file is an error naming the file and line.
#include <cstdio>

#include "apps/hpdl/commands.h"
#include "hpdl/train/report.h"

namespace hpdl::cli {

void register_report(CLI::App& app) {
  auto* cmd = app.add_subcommand("report", "Write a run directory's HTML report (plots, summary, time per phase, "
                                           "checkpoints, config)");
  struct Opts {
    std::string run_dir, output;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("run_dir", o->run_dir, "The run directory (train.run_dir)")->required();
  cmd->add_option("-o,--output", o->output, "Where to write the page (default RUN_DIR/report.html)");
  cmd->callback([o] {
    const auto path = train::write_report(o->run_dir, o->output);
    std::printf("wrote %s\n", path.string().c_str());
  });
}

}  // namespace hpdl::cli
