// hpdl_store_cli: a driver with only the `pack` and `stage` subcommands, so the
// store's integration tests run before the full `hpdl` binary links.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "hpdl/core/error.h"

namespace hpdl::cli {
void register_pack(CLI::App& app);
void register_stage(CLI::App& app);
}  // namespace hpdl::cli

int main(int argc, char** argv) {
  CLI::App app{"hpdl store commands (pack, stage)"};
  app.require_subcommand(1);
  hpdl::cli::register_pack(app);
  hpdl::cli::register_stage(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hpdl: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
