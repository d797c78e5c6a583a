// Progress line. Rates are exponential moving averages (weight 0.1 per step)
// so the ETA settles after a few dozen steps yet follows real slowdowns; the
// live line is redrawn at most 10 times a second to keep the terminal cheap.
#include "hpdl/train/progress.h"

#include <unistd.h>

#include <chrono>
#include <cmath>

#include <fmt/format.h>

namespace hpdl::train {
namespace {

double clock_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Progress::Progress(std::FILE* out, int64_t log_every, Mode mode)
    : out_(out), log_every_(log_every > 0 ? log_every : 1) {
  live_ = mode == Mode::live || (mode == Mode::automatic && out && ::isatty(::fileno(out)));
}

std::string Progress::format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(std::llround(s));
  if (t < 60) return fmt::format("{}s", t);
  if (t < 3600) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
}

std::string Progress::format(const ProgressUpdate& u) const {
  // A regression loss is often far below 1e-4: it gets significant digits, not decimals.
  std::string s = u.rmse >= 0 ? fmt::format("epoch {}/{}  step {}/{}  loss {:.4g}", u.epoch + 1, u.epochs,
                                            u.step_in_epoch, u.steps_per_epoch, u.loss)
                              : fmt::format("epoch {}/{}  step {}/{}  loss {:.4f}", u.epoch + 1, u.epochs,
                                            u.step_in_epoch, u.steps_per_epoch, u.loss);
  if (u.accuracy >= 0) s += fmt::format("  acc {:.2f}%", 100 * u.accuracy);
  if (u.rmse >= 0) s += fmt::format("  rmse {:.4g}", u.rmse);
  if (rate_ > 0) s += fmt::format("  {:.0f} samples/s", rate_);
  if (u.data_wait_s >= 0 && step_time_ > 0) s += fmt::format("  data {:.0f}%", 100 * std::min(1.0, u.data_wait_s / step_time_));
  if (step_time_ > 0 && u.total_steps > 0)
    s += "  ETA " + format_duration(step_time_ * static_cast<double>(u.total_steps - u.global_step));
  return s;
}

void Progress::update(const ProgressUpdate& u, double now) {
  if (now < 0) now = clock_s();
  if (last_time_ >= 0 && now > last_time_) {
    const double dt = now - last_time_;
    const double a = step_time_ == 0 ? 1.0 : 0.1;
    step_time_ = a * dt + (1 - a) * step_time_;
    rate_ = a * (static_cast<double>(u.samples) / dt) + (1 - a) * rate_;
  }
  last_time_ = now;
  if (!out_) return;
  if (live_) {
    const bool last = u.steps_per_epoch > 0 && u.step_in_epoch == u.steps_per_epoch;
    if (now - last_draw_ < 0.1 && !last) return;
    last_draw_ = now;
    fmt::print(out_, "\r\033[K{}", format(u));
    std::fflush(out_);
    line_open_ = true;
  } else if (u.global_step % log_every_ == 0) {
    fmt::print(out_, "{}\n", format(u));
    std::fflush(out_);
  }
}

void Progress::message(const std::string& line) {
  if (!out_) return;
  if (line_open_) fmt::print(out_, "\r\033[K");
  fmt::print(out_, "{}\n", line);
  std::fflush(out_);
  line_open_ = false;
  last_draw_ = -1e9;  // redraw the live line at the next update
}

void Progress::finish() {
  if (out_ && line_open_) {
    fmt::print(out_, "\n");
    std::fflush(out_);
  }
  line_open_ = false;
}

}  // namespace hpdl::train
