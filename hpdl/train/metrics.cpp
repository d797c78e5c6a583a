// JSON-lines metrics writer and reader.
#include "hpdl/train/metrics.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "hpdl/core/error.h"

namespace hpdl::train {

MetricsWriter::MetricsWriter(const std::filesystem::path& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "a");
  HPDL_CHECK(file_ != nullptr, "{}: cannot open the metrics file for appending: {} (check train.run_dir)",
             path.string(), std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::write(const nlohmann::json& record) {
  HPDL_CHECK(record.is_object(), "{}: a metrics record must be a JSON object, got {}", path_.string(),
             record.type_name());
  // Non-finite numbers (a diverged loss) become null: JSON has no NaN.
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard lock(mu_);
  const bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
  HPDL_CHECK(ok, "{}: writing metrics failed: {} (disk full?)", path_.string(), std::strerror(errno));
}

std::vector<MetricsRecord> read_metrics_records(const std::filesystem::path& path) {
  std::ifstream in(path);
  HPDL_CHECK(in.good(), "{}: cannot open the metrics file", path.string());
  std::vector<std::pair<size_t, std::string>> lines;  // (line number, text) of the non-blank lines
  size_t number = 0;
  for (std::string l; std::getline(in, l);)
    if (++number, !l.empty()) lines.emplace_back(number, std::move(l));
  std::vector<MetricsRecord> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    try {
      out.push_back({lines[i].first, nlohmann::json::parse(lines[i].second)});
    } catch (const nlohmann::json::exception& e) {
      if (i + 1 == lines.size()) break;  // torn last line of a killed run
      HPDL_FAIL("{}:{}: not a JSON record: {}", path.string(), lines[i].first, e.what());
    }
  }
  return out;
}

std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path) {
  std::vector<nlohmann::json> out;
  for (auto& r : read_metrics_records(path)) out.push_back(std::move(r.record));
  return out;
}

}  // namespace hpdl::train
