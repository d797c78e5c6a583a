// Progress: what a person watching `hpdl train` sees. On a terminal, one live
// line rewritten in place (epoch, step, loss, accuracy, samples/s, ETA); in a
// batch job's log file, a plain line every log_every steps, so logs stay
// readable and grep-able.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace hpdl::train {

struct ProgressUpdate {
  int64_t epoch = 0, epochs = 1;                    // epoch is 0-based; shown 1-based
  int64_t step_in_epoch = 0, steps_per_epoch = 0;   // steps done in this epoch
  int64_t global_step = 0, total_steps = 0;         // steps done in the run / planned
  double loss = 0;
  double accuracy = -1;                             // in [0, 1]; < 0: not shown
  double rmse = -1;                                 // regression: root mean squared error; < 0: not shown
  int64_t samples = 0;                              // samples processed in this step (all ranks)
  double data_wait_s = -1;                          // optional: the DataLoader's wait in this step
};

class Progress {
 public:
  enum class Mode { automatic, live, plain };
  // `out` is where lines go (stderr by default); automatic picks live when out is a TTY.
  explicit Progress(std::FILE* out = stderr, int64_t log_every = 50, Mode mode = Mode::automatic);
  // Records a finished step. `now_s` is a monotonic time in seconds (< 0: read the clock).
  void update(const ProgressUpdate& u, double now_s = -1);
  // Prints a whole line (an epoch summary, a warning) without garbling the live line.
  void message(const std::string& line);
  // Ends the live line.
  void finish();

  bool live() const { return live_; }
  double samples_per_second() const { return rate_; }
  // Formats a duration as "45s", "3m12s", "2h05m".
  static std::string format_duration(double seconds);
  // The text of a status line for u (no control characters).
  std::string format(const ProgressUpdate& u) const;

 private:
  std::FILE* out_;
  int64_t log_every_;
  bool live_;
  bool line_open_ = false;
  double last_time_ = -1, last_draw_ = -1e9;
  double rate_ = 0;       // samples/s, exponential moving average
  double step_time_ = 0;  // s/step, exponential moving average
};

}  // namespace hpdl::train
