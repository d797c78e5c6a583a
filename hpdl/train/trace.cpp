// Chrome-trace recording, merging and the overlap measure.
#include "hpdl/train/trace.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "hpdl/core/error.h"
#include "hpdl/io/file.h"

namespace hpdl::train {

int64_t trace_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void TraceRecorder::span(const std::string& name, const std::string& category, int64_t begin_us, int64_t end_us,
                         int tid) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back({name, category, begin_us, std::max<int64_t>(0, end_us - begin_us), tid});
}

size_t TraceRecorder::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

void TraceRecorder::write(const std::filesystem::path& path) const {
  nlohmann::json arr = nlohmann::json::array();
  static const char* lanes[] = {"compute", "communication", "data"};
  {
    std::lock_guard<std::mutex> lock(mu_);
    arr.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", rank_}, {"args", {{"name", "rank " + std::to_string(rank_)}}}});
    for (int t = 0; t < 3; ++t)
      arr.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank_}, {"tid", t}, {"args", {{"name", lanes[t]}}}});
    for (const auto& e : events_)
      arr.push_back({{"name", e.name}, {"cat", e.cat}, {"ph", "X"}, {"ts", e.ts}, {"dur", e.dur}, {"pid", rank_}, {"tid", e.tid}});
  }
  const std::string text = arr.dump();
  io::write_file_atomic(path, text.data(), text.size());
}

void merge_traces(const std::vector<std::filesystem::path>& rank_files, const std::filesystem::path& out) {
  nlohmann::json all = nlohmann::json::array();
  for (const auto& f : rank_files) {
    std::ifstream in(f);
    HPDL_CHECK(in.good(), "trace: cannot read {}", f.string());
    nlohmann::json part;
    try {
      in >> part;
    } catch (const std::exception& e) {
      HPDL_FAIL("trace: {} is not valid JSON: {}", f.string(), e.what());
    }
    for (auto& e : part) all.push_back(std::move(e));
  }
  const std::string text = nlohmann::json{{"traceEvents", all}, {"displayTimeUnit", "ms"}}.dump();
  io::write_file_atomic(out, text.data(), text.size());
}

double allreduce_hidden_fraction(const std::filesystem::path& trace_file) {
  std::ifstream in(trace_file);
  HPDL_CHECK(in.good(), "trace: cannot read {}", trace_file.string());
  nlohmann::json j;
  in >> j;
  const nlohmann::json& events = j.is_object() ? j["traceEvents"] : j;
  // Per rank: backward intervals and allreduce intervals.
  std::map<int, std::vector<std::pair<int64_t, int64_t>>> bwd, ar;
  for (const auto& e : events) {
    if (e.value("ph", "") != "X") continue;
    int pid = e.value("pid", 0);
    int64_t b = e.value("ts", int64_t{0}), d = e.value("dur", int64_t{0});
    std::string name = e.value("name", "");
    if (name == "backward") bwd[pid].push_back({b, b + d});
    if (e.value("cat", "") == "allreduce") ar[pid].push_back({b, b + d});
  }
  double total = 0, hidden = 0;
  for (auto& [pid, spans] : ar) {
    for (auto [b, e] : spans) {
      total += static_cast<double>(e - b);
      for (auto [bb, be] : bwd[pid]) hidden += static_cast<double>(std::max<int64_t>(0, std::min(e, be) - std::max(b, bb)));
    }
  }
  return total > 0 ? hidden / total : -1;
}

}  // namespace hpdl::train
