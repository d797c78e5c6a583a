// GoogleTest main for multi-rank tests: sets MPI up once, runs the tests on
// every rank, prints results from each rank with its number, and returns a
// non-zero code on every rank if any rank failed. HPDL_TEST_HANG_RANK=r stops
// rank r in a loop at start so a debugger can attach (gdb -p PID).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "hpdl/dist/communicator.h"

namespace {
// A failed assertion on a rank other than 0, with the rank, the test and the message.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  // The test's name is kept here: asking gtest for the current test while it reports a result deadlocks.
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "rank %d: %s: %s:%d: Failure\n%s\n", rank_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string test_;
};
}  // namespace

int main(int argc, char** argv) {
  hpdl::dist::init(&argc, &argv);
  auto& world = hpdl::dist::Communicator::world();
  if (const char* h = std::getenv("HPDL_TEST_HANG_RANK"); h && std::atoi(h) == world.rank()) {
    std::fprintf(stderr, "rank %d (pid %d) waiting for a debugger: set hang=0 in gdb\n", world.rank(), getpid());
    volatile int hang = 1;
    while (hang) sleep(1);
  }
  ::testing::InitGoogleTest(&argc, argv);
  if (world.rank() != 0) {
    // Only rank 0 prints the full report; other ranks print failures only.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(world.rank()));
  }
  int failed = RUN_ALL_TESTS() != 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed) std::fprintf(stderr, "rank %d: tests FAILED\n", world.rank());
  return any_failed;
}
