// `hpdl stage STORE --to DIR`: under mpirun, copies a store from the shared file
// system to each node's local folder, reading every partition from the shared
// store once and moving it between nodes over MPI; without mpirun it copies.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "hpdl/store/stage.h"

namespace hpdl::cli {

void register_stage(CLI::App& app);

void register_stage(CLI::App& app) {
  struct Args {
    std::string store, to, mode = "full";
    int replicas = 1;
    bool quiet = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("stage", "Copy a store to node-local storage (run under mpirun, one rank or more per node)");
  cmd->add_option("store", args->store, "Store folder on the shared file system")->required();
  cmd->add_option("--to", args->to,
                  "Node-local destination; %n is replaced by the node index, %h by the host name")
      ->required();
  cmd->add_option("--mode", args->mode, "full (every node gets every partition) or partitioned")
      ->check(CLI::IsMember({"full", "partitioned"}));
  cmd->add_option("--replicas", args->replicas, "Partitioned mode: nodes holding each partition (default 1)");
  cmd->add_flag("-q,--quiet", args->quiet, "Print nothing on success");
  cmd->callback([args] {
    store::StageOptions o;
    o.mode = args->mode == "full" ? store::StageMode::full : store::StageMode::partitioned;
    o.replicas = args->replicas;
    store::StageResult r = store::stage(args->store, args->to, o);
    if (r.leader && !args->quiet)
      std::printf("hpdl stage: node %d/%d: %u partition(s) in %s (%llu bytes read from the shared store)\n", r.node,
                  r.nodes, r.partitions_here, r.dir.c_str(), (unsigned long long)r.bytes_read_shared);
  });
}

}  // namespace hpdl::cli
