// After MPI is up and the communicator thread runs, every thread but the main
// one must block SIGTERM, SIGUSR1 and SIGUSR2 (they are for the Trainer's
// sigwait thread; a handler run inside MPI's or the communicator's work is what
// hpdl keeps out), and the main thread must not (outside a run, SIGTERM still
// ends the program). Read from /proc/self/task/*/status, field SigBlk.
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "hpdl/core/tensor.h"
#include "hpdl/dist/communicator.h"

namespace {

uint64_t blocked_mask(const std::filesystem::path& status) {
  std::ifstream in(status);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("SigBlk:", 0) == 0) return std::stoull(line.substr(7), nullptr, 16);
  return 0;
}

bool blocks_job_signals(uint64_t mask) {
  for (int sig : {SIGTERM, SIGUSR1, SIGUSR2})
    if (!(mask >> (sig - 1) & 1)) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  hpdl::dist::init(&argc, &argv);
  auto& w = hpdl::dist::Communicator::world();
  hpdl::Tensor t = hpdl::Tensor::ones({4});
  w.allreduce_async(t, hpdl::dist::ReduceKind::sum)->wait();  // starts the communicator thread

  const long self = syscall(SYS_gettid);
  int others = 0;
  int bad = 0;
  bool main_blocks = true;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    const long tid = std::stol(task.path().filename().string());
    const uint64_t mask = blocked_mask(task.path() / "status");
    if (tid == self) {
      main_blocks = (mask >> (SIGTERM - 1) & 1) != 0;
      continue;
    }
    ++others;
    if (!blocks_job_signals(mask)) {
      std::printf("rank %d: thread %ld does not block the job signals (SigBlk %016llx)\n", w.rank(), tid,
                  static_cast<unsigned long long>(mask));
      ++bad;
    }
  }
  std::printf("rank %d: %d other threads, %d without the block; main thread blocks SIGTERM: %s\n", w.rank(), others,
              bad, main_blocks ? "yes" : "no");
  const bool ok = others >= 1 && bad == 0 && !main_blocks;
  int all_ok = ok ? 1 : 0;
  hpdl::Tensor flag = hpdl::Tensor::full({1}, static_cast<double>(all_ok));
  w.allreduce(flag, hpdl::dist::ReduceKind::min);
  if (w.rank() == 0 && flag.item() == 1.0) std::puts("PASS [job_signals]");
  return ok ? 0 : 1;
}
