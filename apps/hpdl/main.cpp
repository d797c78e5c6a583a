// hpdl: the command line. Each subcommand registers itself from its own file
// (cmd_*.cpp); errors print one line and exit non-zero.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "apps/hpdl/commands.h"
#include "hpdl/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"hpdl: deep learning training for supercomputers"};
  app.require_subcommand(1);
  hpdl::cli::register_info(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const hpdl::Error& e) {
    std::fprintf(stderr, "hpdl: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hpdl: error: %s\n", e.what());
    return 1;
  }
  return hpdl::cli::exit_code();
}
