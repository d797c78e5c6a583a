// MetricsWriter: metrics as JSON lines (RUN_DIR/metrics.jsonl), one object a
// line, flushed after each line so `tail -f` and a crashed run both see every
// record written so far. read_metrics() reads a file back, tolerating a torn
// last line from a killed run.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <mutex>
#include <vector>

namespace hpdl::train {

class MetricsWriter {
 public:
  // Opens `path` for appending (a resumed run continues the same file). Throws naming it.
  explicit MetricsWriter(const std::filesystem::path& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Appends one record (must be a JSON object) and flushes. Thread-safe.
  void write(const nlohmann::json& record);
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
  std::mutex mu_;
};

// Every complete record of a metrics file; an unparsable final line (a torn
// write) is skipped, an unparsable earlier line throws naming file and line.
std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path);

// The same, each record with its 1-based line number in the file (blank lines counted).
struct MetricsRecord {
  size_t line = 0;
  nlohmann::json record;
};
std::vector<MetricsRecord> read_metrics_records(const std::filesystem::path& path);

}  // namespace hpdl::train
