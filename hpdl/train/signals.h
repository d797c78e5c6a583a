// The job signals of a long run under a batch system (docs/jobs.md): SIGTERM asks for a
// checkpoint and a stop, SIGUSR1 for a checkpoint and going on. While a JobSignals lives, a
// thread of its own takes them (sigwait) and the thread that built it, and every thread it
// starts afterwards (OpenMP's, a data loader's), blocks them, so a signal never interrupts
// compute code: one landing on the training thread was followed by heap corruption in 3-5 of 8
// runs of `hpdl train` (docs/jobs.md). MPI's threads and the communicator thread block them
// from their start (dist::init); other threads started before may still take them through a
// handler that only sets the flags. The run polls the flags between steps and, data parallel,
// agrees on them over the ranks (one signalled rank is enough). Used by train::Trainer and the
// GAN example; one at a time.
#pragma once

#include <signal.h>

#include <atomic>
#include <thread>

namespace hpdl::train {

class JobSignals {
 public:
  // Clears both flags, installs the flag-setting handler, blocks the signals here, starts the thread.
  JobSignals();
  // Wakes the thread with a directed SIGUSR2, joins it and restores this thread's signal mask.
  ~JobSignals();
  JobSignals(const JobSignals&) = delete;
  JobSignals& operator=(const JobSignals&) = delete;

  bool stop_requested() const;        // a SIGTERM came (it stays set)
  bool checkpoint_requested() const;  // a SIGUSR1 came since the last clear_checkpoint_request()
  void clear_checkpoint_request();

 private:
  sigset_t set_{}, old_{};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace hpdl::train
