// Checkpoint files. Verification on restart is deliberately paranoid: a job
// killed by a wall-clock limit or kill -9 may leave a half-written temporary
// (ignored: never renamed), and a damaged file system may leave a renamed but
// corrupt file (caught by size + whole-file xxh64 + safetensors' own checks).
#include "hpdl/train/checkpoint.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/io/file.h"
#include "hpdl/io/safetensors.h"

namespace hpdl::train {
namespace {

constexpr const char* kFormat = "hpdl-checkpoint";
constexpr int kVersion = 1;

// "step-0000000123.json" -> 123; -1 for other names.
int64_t step_of(const std::filesystem::path& p, const char* ext) {
  const std::string name = p.filename().string();
  const std::string e = ext;
  if (name.size() != 5 + 10 + e.size() || name.compare(0, 5, "step-") != 0 ||
      name.compare(name.size() - e.size(), e.size(), e) != 0)
    return -1;
  int64_t v = 0;
  for (size_t i = 5; i < 15; ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

}  // namespace

std::map<std::string, Tensor> prefixed(const std::map<std::string, Tensor>& m, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : m) out[prefix + k] = v;
  return out;
}

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& m, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : m)
    if (k.rfind(prefix, 0) == 0) out[k.substr(prefix.size())] = v;
  return out;
}

CheckpointManager::CheckpointManager(const std::filesystem::path& run_dir, int keep)
    : dir_(run_dir / "checkpoints"), keep_(keep) {
  HPDL_CHECK(keep >= 1, "CheckpointManager: keep must be >= 1, got {} (train.keep_checkpoints)", keep);
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  HPDL_CHECK(!ec, "{}: cannot create the checkpoint directory: {} (check train.run_dir)", dir_.string(), ec.message());
}

std::filesystem::path CheckpointManager::tensors_path(int64_t step) const {
  return dir_ / fmt::format("step-{:010d}.safetensors", step);
}
std::filesystem::path CheckpointManager::sidecar_path(int64_t step) const {
  return dir_ / fmt::format("step-{:010d}.json", step);
}

CheckpointInfo CheckpointManager::save(const CheckpointMeta& meta, const std::map<std::string, Tensor>& tensors) {
  HPDL_CHECK(meta.step >= 0 && meta.step < 10'000'000'000, "CheckpointManager: step {} out of range", meta.step);
  CheckpointInfo info;
  info.tensors_path = tensors_path(meta.step);
  info.sidecar_path = sidecar_path(meta.step);
  info.meta = meta;
  // The sidecar of an older save of this step must go first: otherwise a crash
  // between the two writes would pair the old sidecar with the new tensors.
  std::error_code ec;
  std::filesystem::remove(info.sidecar_path, ec);
  io::SafetensorsWriteInfo w = io::save_safetensors(
      info.tensors_path, tensors, {{"hpdl.step", std::to_string(meta.step)}, {"hpdl.format", kFormat}});
  info.file_bytes = w.file_bytes;
  info.file_xxh64 = io::hex64(w.file_xxh64);

  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  j["step"] = meta.step;
  j["epoch"] = meta.epoch;
  j["sampler_position"] = meta.sampler_position;
  j["rng"] = nlohmann::json::array();
  for (auto& g : meta.rng) j["rng"].push_back({{"name", g.name}, {"seed", g.seed}, {"offset", g.offset}});
  j["config"] = meta.config;
  j["extra"] = meta.extra;
  j["tensors"] = {{"file", info.tensors_path.filename().string()},
                  {"bytes", w.file_bytes},
                  {"xxh64", info.file_xxh64},
                  {"data_xxh64", io::hex64(w.data_xxh64)}};
  j["written_unix_time"] = static_cast<int64_t>(std::time(nullptr));
  const std::string text = j.dump(2) + "\n";
  io::write_file_atomic(info.sidecar_path, text.data(), text.size());
  prune();
  return info;
}

std::filesystem::path CheckpointManager::best_path(const std::filesystem::path& run_dir) {
  return run_dir / "checkpoints" / "best.safetensors";
}

void CheckpointManager::save_best(const std::map<std::string, Tensor>& tensors,
                                  std::map<std::string, std::string> metadata) const {
  metadata["hpdl.format"] = "hpdl-best-model";
  io::save_safetensors(best_path(dir_.parent_path()), tensors, metadata);
}

void CheckpointManager::prune() const {
  std::vector<int64_t> s = steps();
  if (static_cast<int>(s.size()) <= keep_) return;
  const int64_t oldest_kept = s[static_cast<size_t>(keep_ - 1)];
  std::error_code ec;
  // Sidecars first: once its sidecar is gone a checkpoint is invisible, so a crash mid-prune is harmless.
  for (size_t i = static_cast<size_t>(keep_); i < s.size(); ++i) std::filesystem::remove(sidecar_path(s[i]), ec);
  for (auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    int64_t st = step_of(e.path(), ".safetensors");
    if (st >= 0 && st < oldest_kept) std::filesystem::remove(e.path(), ec);
  }
}

std::vector<int64_t> CheckpointManager::steps() const {
  std::vector<int64_t> out;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    int64_t st = step_of(e.path(), ".json");
    if (st >= 0) out.push_back(st);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

CheckpointInfo CheckpointManager::read_sidecar(const std::filesystem::path& sidecar) {
  const std::string f = sidecar.string();
  std::vector<uint8_t> bytes = io::read_file(sidecar);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::exception& e) {
    HPDL_FAIL("{}: checkpoint sidecar is not valid JSON (truncated?): {}", f, e.what());
  }
  try {
    HPDL_CHECK(j.value("format", "") == kFormat, "{}: not an hpdl checkpoint sidecar (format '{}')", f,
               j.value("format", ""));
    HPDL_CHECK(j.at("version").get<int>() <= kVersion, "{}: checkpoint version {} is newer than this hpdl reads ({})",
               f, j.at("version").get<int>(), kVersion);
    CheckpointInfo info;
    info.sidecar_path = sidecar;
    info.tensors_path = sidecar.parent_path() / j.at("tensors").at("file").get<std::string>();
    info.file_bytes = j.at("tensors").at("bytes").get<uint64_t>();
    info.file_xxh64 = j.at("tensors").at("xxh64").get<std::string>();
    info.meta.step = j.at("step").get<int64_t>();
    info.meta.epoch = j.at("epoch").get<int64_t>();
    info.meta.sampler_position = j.at("sampler_position").get<int64_t>();
    for (auto& g : j.at("rng"))
      info.meta.rng.push_back({g.at("name").get<std::string>(), g.at("seed").get<uint64_t>(), g.at("offset").get<uint64_t>()});
    info.meta.config = j.value("config", nlohmann::json::object());
    info.meta.extra = j.value("extra", nlohmann::json::object());
    return info;
  } catch (const nlohmann::json::exception& e) {
    HPDL_FAIL("{}: checkpoint sidecar is missing a field or has a wrong type: {}", f, e.what());
  }
}

std::optional<CheckpointInfo> CheckpointManager::latest_valid(std::vector<std::string>* problems) const {
  for (int64_t st : steps()) {
    try {
      CheckpointInfo info = read_sidecar(sidecar_path(st));
      const std::string f = info.tensors_path.string();
      std::vector<uint8_t> bytes = io::read_file(info.tensors_path);
      HPDL_CHECK(bytes.size() == info.file_bytes, "{}: {} bytes, the sidecar recorded {} (truncated or replaced)", f,
                 bytes.size(), info.file_bytes);
      const std::string got = io::hex64(io::xxh64(bytes.data(), bytes.size()));
      HPDL_CHECK(got == info.file_xxh64, "{}: xxh64 {} differs from the sidecar's {} (the file is corrupt)", f, got,
                 info.file_xxh64);
      io::verify_safetensors(info.tensors_path);
      return info;
    } catch (const Error& e) {
      const std::string msg = fmt::format("skipping checkpoint step {}: {}; falling back to an older one", st, e.message());
      warn_once(msg);
      if (problems) problems->push_back(msg);
    }
  }
  return std::nullopt;
}

std::map<std::string, Tensor> CheckpointManager::load(const CheckpointInfo& info) const {
  io::SafetensorsFile f = io::load_safetensors(info.tensors_path);
  return std::move(f.tensors);
}

namespace {
// Adds the seconds from its construction to its destruction to `total`, however the scope ends.
class AddElapsed {
 public:
  explicit AddElapsed(double& total) : total_(total), t0_(std::chrono::steady_clock::now()) {}
  ~AddElapsed() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  AddElapsed(const AddElapsed&) = delete;
  AddElapsed& operator=(const AddElapsed&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point t0_;
};
}  // namespace

void AsyncCheckpointWriter::save(const CheckpointMeta& meta, const std::map<std::string, Tensor>& tensors) {
  AddElapsed blocked(blocked_s_);
  // The snapshot first, while the previous write may still run: the two overlap, and the
  // caller's tensors are free to change as soon as this returns.
  std::map<std::string, Tensor> snapshot;
  for (const auto& [name, t] : tensors) snapshot[name] = t.device().is_cpu() ? t.clone() : t.to(kCPU);
  join();  // one write in flight; its error surfaces here
  inflight_ = std::async(std::launch::async, [this, meta, snap = std::move(snapshot)] {
    adopt_num_threads();
    return manager_.save(meta, snap);
  });
}

void AsyncCheckpointWriter::join() {
  if (inflight_.valid()) last_ = inflight_.get();  // get() leaves the future invalid, also when it throws
}

std::optional<CheckpointInfo> AsyncCheckpointWriter::wait() {
  AddElapsed blocked(blocked_s_);
  join();
  return last_;
}

AsyncCheckpointWriter::~AsyncCheckpointWriter() {
  try {
    wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hpdl: warning: the last background checkpoint write failed: %s\n", e.what());
  }
}

}  // namespace hpdl::train
