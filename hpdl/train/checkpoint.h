// CheckpointManager: checkpoints in RUN_DIR/checkpoints as pairs
// step-NNNNNNNNNN.safetensors (model and optimizer tensors) and
// step-NNNNNNNNNN.json (the sidecar: epoch, step, sampler position, RNG
// states, config, and the size and xxh64 of the safetensors file). Both are
// written atomically, tensors first and the sidecar last, so a sidecar's
// existence is the commit marker: a checkpoint without one never happened.
// best.safetensors beside them (train.keep_best) is a single model-only file.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <future>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl::train {

// A counter-based Generator's whole state, by name ("init", "dropout", ...).
struct GeneratorState {
  std::string name;
  uint64_t seed = 0;
  uint64_t offset = 0;
};

struct CheckpointMeta {
  int64_t step = 0;              // optimizer steps taken
  int64_t epoch = 0;             // epoch the next step belongs to
  int64_t sampler_position = 0;  // samples of that epoch already consumed (DataLoader::position())
  std::vector<GeneratorState> rng;
  nlohmann::json config = nlohmann::json::object();  // train::to_json(config)
  nlohmann::json extra = nlohmann::json::object();   // anything else a caller wants back (best metric, ...)
};

struct CheckpointInfo {
  std::filesystem::path tensors_path, sidecar_path;
  CheckpointMeta meta;
  uint64_t file_bytes = 0;
  std::string file_xxh64;  // 16 hex digits
};

// Checkpoints keep several state dicts in one file under prefixes ("model.", "optim."):
// prefixed() puts `prefix` before every name; with_prefix() takes the entries whose names
// start with it, without it.
std::map<std::string, Tensor> prefixed(const std::map<std::string, Tensor>& m, const std::string& prefix);
std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& m, const std::string& prefix);

class CheckpointManager {
 public:
  // Creates RUN_DIR/checkpoints if needed. keep >= 1: how many checkpoints save() leaves.
  explicit CheckpointManager(const std::filesystem::path& run_dir, int keep = 3);

  // Writes the checkpoint for meta.step (replacing one of the same step), then
  // deletes all but the newest `keep`. Throws naming the file on I/O errors;
  // on failure the previous checkpoints are untouched.
  CheckpointInfo save(const CheckpointMeta& meta, const std::map<std::string, Tensor>& tensors);

  // The newest checkpoint whose sidecar parses and whose safetensors file has
  // the recorded size and xxh64 and passes its own checks; a bad one is
  // reported with warn_once (naming the file and the fault), appended to
  // `problems` if given, and skipped for the one before it. nullopt if none is good.
  std::optional<CheckpointInfo> latest_valid(std::vector<std::string>* problems = nullptr) const;

  // Loads the tensors of a checkpoint (verified again). Throws naming the file.
  std::map<std::string, Tensor> load(const CheckpointInfo& info) const;

  // Steps of the sidecars present, newest first (not verified).
  std::vector<int64_t> steps() const;
  const std::filesystem::path& dir() const { return dir_; }

  // Parses a sidecar file; throws naming it when malformed.
  static CheckpointInfo read_sidecar(const std::filesystem::path& sidecar);

  // RUN_DIR/checkpoints/best.safetensors (train.keep_best): the model of the best evaluation so
  // far, one self-contained file (its "model." tensors; what it holds in the metadata: hpdl.format
  // "hpdl-best-model", hpdl.monitor, hpdl.best, hpdl.epoch, hpdl.step, hpdl.evaluation). Not a
  // step-* name, so neither latest_valid() nor pruning ever sees it.
  static std::filesystem::path best_path(const std::filesystem::path& run_dir);
  // Writes best_path() atomically (a failed write leaves the previous best in place), with its
  // checksum and `metadata` (plus hpdl.format). Throws naming the file.
  void save_best(const std::map<std::string, Tensor>& tensors, std::map<std::string, std::string> metadata) const;

 private:
  std::filesystem::path tensors_path(int64_t step) const;
  std::filesystem::path sidecar_path(int64_t step) const;
  void prune() const;

  std::filesystem::path dir_;
  int keep_;
};

// Writes a CheckpointManager's checkpoints on a background thread
// (train.checkpoint_async): save() takes a snapshot (its own host copies of
// the tensors, so training may change the originals at once), waits for the
// previous write if it is still going (one write in flight: at most one extra
// copy of the state in memory), starts the write and returns. The write is
// CheckpointManager::save (atomic files, sidecar last, pruning), so a
// checkpoint the job dies in the middle of never counts and the ones before
// it stay valid. The error of a background write is rethrown by the next
// save() (which then starts no write) or by wait(), so training stops where
// it is noticed. Call wait()
// before anything reads the checkpoints or the process exits (the destructor
// waits too, and drops an error it can no longer raise with a warning).
class AsyncCheckpointWriter {
 public:
  explicit AsyncCheckpointWriter(CheckpointManager& manager) : manager_(manager) {}
  ~AsyncCheckpointWriter();
  AsyncCheckpointWriter(const AsyncCheckpointWriter&) = delete;
  AsyncCheckpointWriter& operator=(const AsyncCheckpointWriter&) = delete;

  void save(const CheckpointMeta& meta, const std::map<std::string, Tensor>& tensors);
  // Waits for the write in flight; rethrows its error. Returns the last checkpoint written.
  std::optional<CheckpointInfo> wait();
  // Seconds the callers spent inside save() and wait() (snapshots and waits for writes):
  // the time checkpointing took from training.
  double blocked_seconds() const { return blocked_s_; }

 private:
  void join();  // waits for the write in flight (untimed), rethrows its error

  CheckpointManager& manager_;
  std::future<CheckpointInfo> inflight_;
  std::optional<CheckpointInfo> last_;
  double blocked_s_ = 0;
};

}  // namespace hpdl::train
