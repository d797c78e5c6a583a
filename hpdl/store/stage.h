// Staging: copies a store from the shared file system to node-local storage once
// per node. Under mpirun, each partition is read from the shared location by one
// node leader only and sent over MPI to the other nodes that need it, so the shared
// file system sees every byte read once instead of once per node.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace hpdl::store {

enum class StageMode {
  full,         // every node holds every partition
  partitioned,  // each partition lives on `replicas` nodes (partition p on nodes p, p+1, ... mod N)
};

struct StageOptions {
  StageMode mode = StageMode::full;
  int replicas = 1;  // partitioned mode only; clamped to the node count
  // Bytes per MPI message while streaming a partition (bounded memory per rank).
  uint64_t chunk_bytes = uint64_t{64} << 20;
};

struct StageResult {
  int node = 0;                 // this rank's node index (0..nodes-1)
  int nodes = 1;
  bool leader = true;           // this rank wrote the node's copy
  std::filesystem::path dir;    // this node's destination folder
  uint32_t partitions_here = 0;  // partitions now in `dir`
  uint64_t bytes_read_shared = 0;  // bytes this rank read from the shared store
};

// Expands the destination pattern for one node: "%n" becomes the node index,
// "%h" the host name; a pattern without either is used as is.
std::filesystem::path stage_destination(const std::string& pattern, int node);

// Which node(s) hold partition p: true when node `node` of `nodes` holds it.
bool stage_node_holds(StageMode mode, int replicas, uint32_t partition, int node, int nodes);

// Stages `store` into `to_pattern` (see stage_destination). Must be called by every
// rank of the job when run under a launcher (mpirun/srun); without one it copies.
// Nodes are found with MPI_Comm_split_type(MPI_COMM_TYPE_SHARED); the environment
// variable HPDL_NODE_ID overrides a rank's node (so one machine can test two
// "nodes"). Every file is written to a temporary name, verified against the
// index's checksums, fsynced and renamed; the index is written last. Throws
// hpdl::Error naming the file on a read, write or checksum failure.
StageResult stage(const std::filesystem::path& store, const std::string& to_pattern, const StageOptions& options);

}  // namespace hpdl::store
