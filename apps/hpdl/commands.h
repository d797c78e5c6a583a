// Registration functions of the hpdl subcommands (one cmd_*.cpp each).
#pragma once

#include <CLI/CLI.hpp>

namespace hpdl::cli {

void register_info(CLI::App& app);
void register_train(CLI::App& app);
void register_eval(CLI::App& app);
void register_predict(CLI::App& app);
void register_explain(CLI::App& app);
void register_tune(CLI::App& app);
void register_bench(CLI::App& app);
void register_pack(CLI::App& app);
void register_stage(CLI::App& app);
void register_report(CLI::App& app);
void register_export(CLI::App& app);

// The exit code a subcommand's callback left (0 unless it failed softly).
int exit_code();
void set_exit_code(int code);

}  // namespace hpdl::cli
