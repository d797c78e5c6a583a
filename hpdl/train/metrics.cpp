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

std::vector<nlohmann::json> read_metrics(const std::filesystem::path& path) {
  std::ifstream in(path);
  HPDL_CHECK(in.good(), "{}: cannot open the metrics file", path.string());
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) lines.push_back(l);
  std::vector<nlohmann::json> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    try {
      out.push_back(nlohmann::json::parse(lines[i]));
    } catch (const nlohmann::json::exception& e) {
      if (i + 1 == lines.size()) break;  // torn last line of a killed run
      HPDL_FAIL("{}:{}: not a JSON record: {}", path.string(), i + 1, e.what());
    }
  }
  return out;
}

}  // namespace hpdl::train
