// The job-signal thread (signals.h), moved out of the trainer so other long runs share it.
#include "hpdl/train/signals.h"

#include <pthread.h>

#include <csignal>

namespace hpdl::train {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;  // SIGTERM: checkpoint and stop
volatile std::sig_atomic_t g_ckpt_signal = 0;  // SIGUSR1: checkpoint and go on

extern "C" void on_job_signal(int sig) {
  if (sig == SIGUSR1) g_ckpt_signal = 1;
  else g_stop_signal = 1;
}

}  // namespace

JobSignals::JobSignals() {
  std::signal(SIGTERM, on_job_signal);
  std::signal(SIGUSR1, on_job_signal);
  g_stop_signal = 0;
  g_ckpt_signal = 0;
  sigemptyset(&set_);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGUSR1);
  sigaddset(&set_, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &set_, &old_);
  thread_ = std::thread([this] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set_, &sig) != 0) continue;
      if (sig == SIGUSR2 && done_.load()) return;
      if (sig == SIGUSR1) g_ckpt_signal = 1;
      if (sig == SIGTERM) g_stop_signal = 1;
    }
  });
}

JobSignals::~JobSignals() {
  done_ = true;
  pthread_kill(thread_.native_handle(), SIGUSR2);
  thread_.join();
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

bool JobSignals::stop_requested() const { return g_stop_signal != 0; }
bool JobSignals::checkpoint_requested() const { return g_ckpt_signal != 0; }
void JobSignals::clear_checkpoint_request() { g_ckpt_signal = 0; }

}  // namespace hpdl::train
