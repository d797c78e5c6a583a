// hpdl: the command line. Each subcommand registers itself from its own file
// (cmd_*.cpp); errors print one line and exit non-zero.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "apps/hpdl/commands.h"
#include "hpdl/core/error.h"
#include "hpdl/dist/communicator.h"

int main(int argc, char** argv) {
  CLI::App app{"hpdl: deep learning training for supercomputers"};
  app.require_subcommand(1);
  hpdl::cli::register_info(app);
  hpdl::cli::register_train(app);
  hpdl::cli::register_eval(app);
  hpdl::cli::register_predict(app);
  hpdl::cli::register_export(app);
  hpdl::cli::register_explain(app);
  hpdl::cli::register_tune(app);
  hpdl::cli::register_bench(app);
  hpdl::cli::register_pack(app);
  hpdl::cli::register_stage(app);
  hpdl::cli::register_report(app);
  hpdl::dist::init(&argc, &argv);
  auto& world = hpdl::dist::Communicator::world();
  // Under MPI a failing rank ends the whole job (MPI_Abort) instead of leaving
  // the other ranks waiting in a collective forever.
  auto fail = [&](const std::string& message) {
    if (world.size() > 1) world.abort(message);
    std::fprintf(stderr, "hpdl: error: %s\n", message.c_str());
    return 1;
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const hpdl::Error& e) {
    return fail(world.size() > 1 ? e.message() : e.what());
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return hpdl::cli::exit_code();
}
