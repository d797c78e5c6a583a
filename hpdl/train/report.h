// The HTML run report (RUN_DIR/report.html): one self-contained page, no
// scripts and no network, drawn from what the run directory holds:
// metrics.jsonl (loss, accuracy, learning rate and samples/s as inline SVG line
// plots, the summary record as a table), config.toml, trace.json (time per
// phase as a horizontal bar) and checkpoints/ (names and sizes). The same
// inputs always give the same bytes. The Trainer writes it at the end of a run;
// `hpdl report RUN_DIR` writes it again on demand.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hpdl/train/metrics.h"

namespace hpdl::train {

// `s` with & < > " ' replaced by their character references, for element text and attribute values.
std::string html_escape(std::string_view s);

// ---- axes ----

// A plot axis: the domain [lo, hi] it covers and the tick values on it.
struct Axis {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  int decimals = 0;    // digits after the point in tick labels (linear axes)
  bool log = false;    // log10 axis: lo, hi and ticks are values, not exponents
  std::string label(double tick) const;
};

// A linear axis covering [lo, hi] with about `target` ticks at "nice" steps
// (1, 2 or 5 times a power of ten), the domain widened to whole steps
// (Heckbert, "Nice numbers for graph labels", Graphics Gems, 1990). lo == hi is
// widened by 10% of |lo| (or 1 at zero) each way. Non-finite bounds throw.
Axis nice_axis(double lo, double hi, int target = 5);
// A log10 axis from the power of ten at or below lo to the one at or above hi,
// a tick at each power. Needs 0 < lo <= hi; throws otherwise.
Axis log_axis(double lo, double hi);

// ---- line plots ----

struct PlotSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are left out
};

struct LinePlot {
  std::string title, x_label, y_label;
  std::vector<PlotSeries> series;
  bool log_y = false;  // log10 y axis (points with y <= 0 are left out)
};

// The SVG canvas every plot is drawn on and its plot area, in pixels.
struct PlotFrame {
  static constexpr double kWidth = 640, kHeight = 300;
  static constexpr double kLeft = 72, kRight = 624, kTop = 34, kBottom = 254;
  Axis x, y;
  double px(double vx) const;  // x value -> pixel column
  double py(double vy) const;  // y value -> pixel row (top is 0)
};

// The frame (axes chosen with nice_axis / log_axis over every series' points)
// LinePlot would be drawn in; false when there is no point to draw.
bool plot_frame(const LinePlot& plot, PlotFrame& frame);
// An <svg> element: frame, grid, tick labels, axis labels, one
// <polyline class="series" data-series="NAME" points="x,y x,y ..."> a series
// (coordinates with two decimals; a series of more points than 4 a pixel
// column keeps each column's first, lowest, highest and last), markers where a
// series has few points, a legend. A plot without points becomes a short <p> saying so.
std::string svg_line_plot(const LinePlot& plot);

// ---- trace summary ----

struct PhaseTime {
  std::string name;          // forward, backward, allreduce_wait, optimizer, data_wait, allreduce, ...
  double seconds = 0;        // summed over spans and ranks, divided by the number of ranks
  int64_t spans = 0;         // spans over all ranks
  bool overlapped = false;   // runs beside the training thread (allreduce buckets), not in sequence with it
};

struct TraceSummary {
  int ranks = 0;                   // distinct pids with complete ("X") events
  std::vector<PhaseTime> phases;   // the known phases in training order, then the others by name
  double allreduce_hidden_fraction = -1;  // as allreduce_hidden_fraction() in trace.h
};

// Time per phase of a Chrome trace (a merged {"traceEvents": [...]} or one
// rank's array). Spans are grouped by name, except those of category
// "allreduce" (one a bucket), which form the phase "allreduce". Throws naming
// the file when it is missing or not a trace.
TraceSummary summarize_trace(const std::filesystem::path& trace_file);

// ---- the report ----

// Everything the report is drawn from. load_report_inputs() fills it from a run
// directory: metrics.jsonl must exist and parse (errors name the file and line;
// a torn last line of a killed run is skipped); config.toml, trace.json,
// summary.json and checkpoints/ are optional, but a present config.toml or
// trace.json that does not parse throws naming the file.
struct ReportInputs {
  std::string title;  // the run directory as given
  std::string metrics_file;            // named in errors as FILE:LINE
  std::vector<MetricsRecord> metrics;  // every complete record, with its line
  std::vector<std::pair<std::string, std::string>> config;  // flattened "section.key" -> value text
  bool has_config = false;
  nlohmann::json summary;  // the last summary record (or summary.json); null when none
  bool has_trace = false;
  TraceSummary trace;
  std::vector<std::pair<std::string, uint64_t>> checkpoints;  // file name, bytes; sorted by name
};

ReportInputs load_report_inputs(const std::filesystem::path& run_dir);

// config.toml's values as ("section.key", text) rows in file order of tables,
// keys sorted; arrays of tables as "model.layers[0].type". Throws naming the file.
std::vector<std::pair<std::string, std::string>> flatten_config(const std::filesystem::path& config_toml);

// The HTML page. Throws naming FILE:LINE when a metrics record is malformed
// (not an object, no "type", a "step"/"epoch" that is not a number, a metric
// that is neither a number nor null).
std::string render_report(const ReportInputs& inputs);

// load_report_inputs + render_report, written atomically to `out` (default
// RUN_DIR/report.html). Returns the path written.
std::filesystem::path write_report(const std::filesystem::path& run_dir, const std::filesystem::path& out = {});

}  // namespace hpdl::train
