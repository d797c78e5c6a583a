// Helpers of the tests that run the Trainer in-process: a run with its log
// discarded, and the records of one type in a run's metrics.jsonl.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hpdl/train/config.h"
#include "hpdl/train/trainer.h"

namespace hpdl::test {

inline train::TrainSummary train_quietly(const train::Config& cfg) {
  std::FILE* log = std::tmpfile();
  train::TrainerOptions o;
  o.log = log;
  train::TrainSummary s = train::Trainer(cfg, o).run();
  std::fclose(log);
  return s;
}

// "step" or "epoch" records, in order.
inline std::vector<nlohmann::json> metrics_records(const std::filesystem::path& run_dir, const std::string& type) {
  std::ifstream in(run_dir / "metrics.jsonl");
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.value("type", "") == type) out.push_back(j);
  }
  return out;
}

}  // namespace hpdl::test
