// hpdl::Error and the rank-aware warning helper.
#include "hpdl/core/error.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

namespace hpdl {
namespace {

int rank_from_env() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return -1;
}

int g_rank = -2;  // -2: not yet read

const char* basename_of(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

std::string compose(const std::string& message, const char* file, int line, int rank) {
  std::string out;
  if (rank >= 0) out = fmt::format("[rank {}] ", rank);
  out += message;
  out += fmt::format(" ({}:{})", basename_of(file), line);
  return out;
}

}  // namespace

int error_rank() {
  if (g_rank == -2) g_rank = rank_from_env();
  return g_rank;
}

void set_error_rank(int rank) { g_rank = rank; }

Error::Error(const char* file, int line, std::string message)
    : std::runtime_error(compose(message, file, line, error_rank())),
      message_(std::move(message)),
      file_(file),
      line_(line),
      rank_(error_rank()) {}

void warn_once(const std::string& message) {
  static std::mutex mu;
  static std::set<std::string> seen;
  std::lock_guard<std::mutex> lock(mu);
  if (!seen.insert(message).second) return;
  if (error_rank() > 0) return;
  std::fprintf(stderr, "hpdl: warning: %s\n", message.c_str());
}

}  // namespace hpdl
