// A Chrome-trace (Trace Event Format) recorder: complete events ("ph":"X")
// with microsecond timestamps, one process id per MPI rank, so chrome://tracing
// or Perfetto shows forward, backward, each bucket's allreduce, the optimizer
// and data waits of every rank on one timeline.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

namespace hpdl::train {

int64_t trace_now_us();  // steady clock, microseconds

class TraceRecorder {
 public:
  TraceRecorder(int rank, bool enabled) : rank_(rank), enabled_(enabled) {}
  bool enabled() const { return enabled_; }
  // A span [begin, end) on thread lane `tid` (0 compute, 1 communication, 2 data).
  void span(const std::string& name, const std::string& category, int64_t begin_us, int64_t end_us, int tid = 0);
  // Writes this rank's events as a JSON array of objects (atomically).
  void write(const std::filesystem::path& path) const;
  size_t size() const;

  // RAII span on the compute lane.
  class Scope {
   public:
    Scope(TraceRecorder& t, const char* name, const char* cat) : t_(t), name_(name), cat_(cat), begin_(trace_now_us()) {}
    ~Scope() {
      if (t_.enabled()) t_.span(name_, cat_, begin_, trace_now_us());
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    TraceRecorder& t_;
    const char* name_;
    const char* cat_;
    int64_t begin_;
  };

 private:
  struct Event {
    std::string name, cat;
    int64_t ts, dur;
    int tid;
  };
  int rank_;
  bool enabled_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
};

// Merges per-rank trace files into one Chrome trace ({"traceEvents": [...]}) at `out`.
void merge_traces(const std::vector<std::filesystem::path>& rank_files, const std::filesystem::path& out);

// The fraction of allreduce time that overlapped backward, from a merged or
// per-rank trace: sum over allreduce spans of (overlap with any backward span)
// divided by total allreduce time. Returns -1 when there is no allreduce span.
double allreduce_hidden_fraction(const std::filesystem::path& trace_file);

}  // namespace hpdl::train
