// The HTML run report: reading the run directory, nice axis ticks, SVG line
// plots, the trace's time per phase, and the page itself. Everything is
// written by hand as text (no templating, no plotting library) so the output is
// a pure function of the inputs: fixed number formats, sorted maps, no clock.
#include "hpdl/train/report.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "hpdl/core/error.h"
#include "hpdl/io/file.h"
#include "hpdl/train/trace.h"

namespace hpdl::train {
namespace fs = std::filesystem;
using nlohmann::json;

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// ---------------------------------------------------------------- axes

namespace {

// Heckbert's nice number: a number 1, 2 or 5 (or 10) times a power of ten close
// to x; with `round` the nearest such, otherwise the smallest one >= x.
double nice_number(double x, bool round) {
  const double e = std::floor(std::log10(x));
  const double f = x / std::pow(10.0, e);  // in [1, 10)
  const double tol = 1e-9;                 // 0.05 / 0.01 may come out a hair above 5
  double nf;
  if (round) nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  else nf = f <= 1 + tol ? 1 : f <= 2 + tol ? 2 : f <= 5 + tol ? 5 : 10;
  return nf * std::pow(10.0, e);
}

}  // namespace

std::string Axis::label(double tick) const {
  if (log) return fmt::format("{:g}", tick);
  return fmt::format("{:.{}f}", tick, decimals);
}

Axis nice_axis(double lo, double hi, int target) {
  HPDL_CHECK(std::isfinite(lo) && std::isfinite(hi), "nice_axis: bounds must be finite, got [{}, {}]", lo, hi);
  HPDL_CHECK(target >= 2, "nice_axis: at least 2 ticks, got {}", target);
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) {
    const double pad = lo == 0 ? 1.0 : 0.1 * std::abs(lo);
    lo -= pad, hi += pad;
  }
  const double range = nice_number(hi - lo, false);
  const double step = nice_number(range / (target - 1), true);
  // Whole steps, as integers times the step, so no rounding error accumulates.
  // (The 1e-9 keeps a bound that is a whole step, like 1 / 0.2, from gaining a step to rounding.)
  const double first = std::floor(lo / step + 1e-9), last = std::ceil(hi / step - 1e-9);
  Axis a;
  a.lo = first * step, a.hi = last * step;
  for (double k = first; k <= last + 0.5; k += 1) {
    double t = k * step;
    if (std::abs(t) < step * 1e-9) t = 0;  // never "-0.0"
    a.ticks.push_back(t);
  }
  a.decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  return a;
}

Axis log_axis(double lo, double hi) {
  HPDL_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo > 0 && hi >= lo,
             "log_axis: needs 0 < lo <= hi (finite), got [{}, {}]", lo, hi);
  double e0 = std::floor(std::log10(lo) + 1e-12), e1 = std::ceil(std::log10(hi) - 1e-12);
  if (e1 <= e0) e1 = e0 + 1;
  Axis a;
  a.log = true;
  a.lo = std::pow(10.0, e0), a.hi = std::pow(10.0, e1);
  for (double e = e0; e <= e1 + 0.5; e += 1) a.ticks.push_back(std::pow(10.0, e));
  return a;
}

// ---------------------------------------------------------------- plots

namespace {

double axis_fraction(const Axis& a, double v) {
  if (a.log) return (std::log10(v) - std::log10(a.lo)) / (std::log10(a.hi) - std::log10(a.lo));
  return (v - a.lo) / (a.hi - a.lo);
}

// Colour-blind-safe palette (Okabe and Ito, "Color Universal Design", 2002).
const char* kColors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"};

std::string coord(double v) { return fmt::format("{:.2f}", v); }

bool usable(const LinePlot& plot, double x, double y) {
  return std::isfinite(x) && std::isfinite(y) && (!plot.log_y || y > 0);
}

// A long series (a step record every few steps of a long run) drawn point by
// point would make the page megabytes of coordinates no screen can show. Per
// pixel column keep the first, lowest, highest and last point, in their
// order: the line drawn is the same at the canvas's resolution.
std::vector<std::pair<double, double>> thin_to_pixel_columns(const std::vector<std::pair<double, double>>& px) {
  constexpr size_t kPerColumn = 4;
  if (px.size() <= kPerColumn * static_cast<size_t>(PlotFrame::kRight - PlotFrame::kLeft + 1)) return px;
  std::vector<std::pair<double, double>> out;
  for (size_t begin = 0; begin < px.size();) {
    const double column = std::floor(px[begin].first);
    size_t end = begin, lo = begin, hi = begin;
    for (; end < px.size() && std::floor(px[end].first) == column; ++end) {
      if (px[end].second < px[lo].second) lo = end;
      if (px[end].second > px[hi].second) hi = end;
    }
    std::vector<size_t> keep = {begin, lo, hi, end - 1};
    std::sort(keep.begin(), keep.end());
    keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
    for (size_t k : keep) out.push_back(px[k]);
    begin = end;
  }
  return out;
}

}  // namespace

double PlotFrame::px(double vx) const { return kLeft + axis_fraction(x, vx) * (kRight - kLeft); }
double PlotFrame::py(double vy) const { return kBottom - axis_fraction(y, vy) * (kBottom - kTop); }

bool plot_frame(const LinePlot& plot, PlotFrame& frame) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : plot.series)
    for (auto [x, y] : s.points)
      if (usable(plot, x, y)) x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x0 > x1) return false;
  frame.x = nice_axis(x0, x1);
  frame.y = plot.log_y ? log_axis(y0, y1) : nice_axis(y0, y1);
  return true;
}

std::string svg_line_plot(const LinePlot& plot) {
  PlotFrame f;
  if (!plot_frame(plot, f))
    return fmt::format("<p class=\"empty\">{}: no data in this run.</p>\n", html_escape(plot.title));
  using F = PlotFrame;
  std::string o = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "role=\"img\" aria-label=\"{2}\">\n<title>{2}</title>\n",
      F::kWidth, F::kHeight, html_escape(plot.title));
  o += fmt::format("<text class=\"title\" x=\"{}\" y=\"20\" text-anchor=\"middle\">{}</text>\n",
                   coord((F::kLeft + F::kRight) / 2), html_escape(plot.title));
  o += fmt::format("<rect class=\"area\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>\n", coord(F::kLeft),
                   coord(F::kTop), coord(F::kRight - F::kLeft), coord(F::kBottom - F::kTop));
  // Grid lines and tick labels.
  for (double t : f.x.ticks) {
    const std::string px = coord(f.px(t));
    o += fmt::format("<line class=\"grid\" x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\"/>"
                     "<text class=\"tick x\" x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
                     px, coord(F::kTop), coord(F::kBottom + 4), coord(F::kBottom + 18), html_escape(f.x.label(t)));
  }
  for (double t : f.y.ticks) {
    const std::string py = coord(f.py(t));
    o += fmt::format("<line class=\"grid\" x1=\"{1}\" y1=\"{0}\" x2=\"{2}\" y2=\"{0}\"/>"
                     "<text class=\"tick y\" x=\"{3}\" y=\"{0}\" dy=\"4\" text-anchor=\"end\">{4}</text>\n",
                     py, coord(F::kLeft - 4), coord(F::kRight), coord(F::kLeft - 7), html_escape(f.y.label(t)));
  }
  o += fmt::format("<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                   coord((F::kLeft + F::kRight) / 2), coord(F::kHeight - 8), html_escape(plot.x_label));
  o += fmt::format("<text class=\"label\" x=\"14\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {0})\">"
                   "{1}{2}</text>\n",
                   coord((F::kTop + F::kBottom) / 2), html_escape(plot.y_label), plot.log_y ? " (log scale)" : "");
  // The series, then a legend in the top-right corner of the plot area.
  int shown = 0;
  for (size_t i = 0; i < plot.series.size(); ++i) {
    const PlotSeries& s = plot.series[i];
    const char* color = kColors[i % std::size(kColors)];
    std::vector<std::pair<double, double>> px;  // the usable points, in pixels
    for (auto [x, y] : s.points)
      if (usable(plot, x, y)) px.emplace_back(f.px(x), f.py(y));
    const size_t n = px.size();
    if (n == 0) continue;
    std::string points;
    for (auto [x, y] : thin_to_pixel_columns(px)) {
      if (!points.empty()) points += ' ';
      points += coord(x) + "," + coord(y);
    }
    o += fmt::format("<polyline class=\"series\" data-series=\"{}\" stroke=\"{}\" points=\"{}\"/>\n",
                     html_escape(s.name), color, points);
    if (n <= 60)  // few points (epochs): mark each, so a single point shows too
      for (auto [x, y] : s.points)
        if (usable(plot, x, y))
          o += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>", coord(f.px(x)), coord(f.py(y)), color);
    if (n <= 60) o += "\n";
    const double ly = F::kTop + 14 + 16 * shown++;
    o += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"2\"/>"
                     "<text class=\"legend\" x=\"{4}\" y=\"{5}\" text-anchor=\"end\">{6}</text>\n",
                     coord(F::kRight - 26), coord(ly), coord(F::kRight - 8), color, coord(F::kRight - 30),
                     coord(ly + 4), html_escape(s.name));
  }
  o += "</svg>\n";
  return o;
}

// ---------------------------------------------------------------- trace

TraceSummary summarize_trace(const fs::path& trace_file) {
  std::ifstream in(trace_file);
  HPDL_CHECK(in.good(), "{}: cannot read the trace file", trace_file.string());
  json j;
  try {
    in >> j;
  } catch (const json::exception& e) {
    HPDL_FAIL("{}: not valid JSON: {} (a trace from an interrupted run? delete it or rerun with train.trace = true)",
              trace_file.string(), e.what());
  }
  const json* events = j.is_array() ? &j : (j.is_object() && j.contains("traceEvents") ? &j["traceEvents"] : nullptr);
  HPDL_CHECK(events != nullptr && events->is_array(),
             "{}: not a Chrome trace: expected an array of events or an object with \"traceEvents\"",
             trace_file.string());
  std::map<std::string, PhaseTime> by_name;
  std::map<std::string, int64_t> us;  // summed microseconds per phase, over ranks
  std::set<int64_t> pids;
  for (size_t i = 0; i < events->size(); ++i) {
    const json& e = (*events)[i];
    try {
      if (!e.is_object() || e.value("ph", std::string()) != "X") continue;
      const bool comm = e.value("cat", std::string()) == "allreduce";
      const std::string name = comm ? "allreduce" : e.value("name", std::string("unnamed"));
      PhaseTime& p = by_name[name];
      p.name = name, p.overlapped = comm, ++p.spans;
      us[name] += e.value("dur", int64_t{0});
      pids.insert(e.value("pid", int64_t{0}));
    } catch (const json::exception& ex) {
      HPDL_FAIL("{}: event {} is malformed: {}", trace_file.string(), i, ex.what());
    }
  }
  TraceSummary s;
  s.ranks = static_cast<int>(pids.size());
  const std::vector<std::string> order = {"data_wait", "forward", "backward", "allreduce_wait", "optimizer", "allreduce"};
  auto take = [&](const std::string& name) {
    auto it = by_name.find(name);
    if (it == by_name.end()) return;
    it->second.seconds = static_cast<double>(us[name]) / 1e6 / std::max(1, s.ranks);
    s.phases.push_back(it->second);
    by_name.erase(it);
  };
  for (const auto& n : order) take(n);
  while (!by_name.empty()) take(by_name.begin()->first);  // the rest, by name
  if (std::any_of(s.phases.begin(), s.phases.end(), [](const PhaseTime& p) { return p.overlapped; }))
    s.allreduce_hidden_fraction = allreduce_hidden_fraction(trace_file);
  return s;
}

// ---------------------------------------------------------------- inputs

namespace {

std::string toml_text(const toml::node& n) {
  if (auto s = n.as_string()) return s->get();
  if (auto a = n.as_array()) {
    std::string out = "[";
    for (size_t i = 0; i < a->size(); ++i) out += (i ? ", " : "") + toml_text(*a->get(i));
    return out + "]";
  }
  if (auto d = n.as_floating_point()) return fmt::format("{}", d->get());
  std::ostringstream o;
  n.visit([&](const auto& v) { o << v; });
  return o.str();
}

void flatten_table(const toml::table& t, const std::string& prefix, std::vector<std::pair<std::string, std::string>>& out) {
  for (const auto& [key, node] : t) {
    const std::string path = prefix + std::string(key.str());
    if (auto sub = node.as_table()) {
      flatten_table(*sub, path + ".", out);
    } else if (node.is_array_of_tables()) {
      const toml::array& a = *node.as_array();
      for (size_t i = 0; i < a.size(); ++i) flatten_table(*a.get(i)->as_table(), fmt::format("{}[{}].", path, i), out);
    } else {
      out.emplace_back(path, toml_text(node));
    }
  }
}

}  // namespace

std::vector<std::pair<std::string, std::string>> flatten_config(const fs::path& config_toml) {
  toml::table t;
  try {
    t = toml::parse_file(config_toml.string());
  } catch (const toml::parse_error& e) {
    HPDL_FAIL("{}:{}:{}: TOML syntax error: {}", config_toml.string(), e.source().begin.line,
              e.source().begin.column, e.description());
  }
  std::vector<std::pair<std::string, std::string>> out;
  flatten_table(t, "", out);
  return out;
}

ReportInputs load_report_inputs(const fs::path& run_dir) {
  HPDL_CHECK(fs::is_directory(run_dir), "report: {} is not a directory (give a run directory: train.run_dir)",
             run_dir.string());
  ReportInputs in;
  in.title = run_dir.string();
  const fs::path metrics = run_dir / "metrics.jsonl";
  in.metrics_file = metrics.string();
  HPDL_CHECK(fs::exists(metrics), "report: {} does not exist: is {} a run directory (train.run_dir)?",
             metrics.string(), run_dir.string());
  in.metrics = read_metrics_records(metrics);
  for (const auto& r : in.metrics)
    if (r.record.is_object() && r.record.value("type", json()) == "summary" && r.record.contains("summary"))
      in.summary = r.record["summary"];
  const fs::path summary_json = run_dir / "summary.json";
  if (in.summary.is_null() && fs::exists(summary_json)) {
    std::ifstream f(summary_json);
    try {
      f >> in.summary;
    } catch (const json::exception& e) {
      HPDL_FAIL("{}: not valid JSON: {}", summary_json.string(), e.what());
    }
  }
  if (fs::exists(run_dir / "config.toml")) {
    in.config = flatten_config(run_dir / "config.toml");
    in.has_config = true;
  }
  if (fs::exists(run_dir / "trace.json")) {
    in.trace = summarize_trace(run_dir / "trace.json");
    in.has_trace = true;
  }
  if (fs::is_directory(run_dir / "checkpoints")) {
    for (const auto& e : fs::directory_iterator(run_dir / "checkpoints"))
      if (e.is_regular_file()) in.checkpoints.emplace_back(e.path().filename().string(), e.file_size());
    std::sort(in.checkpoints.begin(), in.checkpoints.end());
  }
  return in;
}

// ---------------------------------------------------------------- the page

namespace {

std::string value_text(const json& v) {
  if (v.is_number_float()) return fmt::format("{:.6g}", v.get<double>());
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

std::string bytes_text(uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1ull << 30));
  if (b >= (1ull << 20)) return fmt::format("{:.2f} MiB", static_cast<double>(b) / (1ull << 20));
  if (b >= (1ull << 10)) return fmt::format("{:.1f} KiB", static_cast<double>(b) / (1ull << 10));
  return fmt::format("{} B", b);
}

// The step and epoch records, checked, keyed by step / epoch. A resumed run
// logs again from its checkpoint's step: a record at or before the last one
// seen drops the later records, so the plots follow the run that continued.
struct Timeline {
  std::map<int64_t, json> steps, epochs;
};

std::optional<double> metric(const json& rec, const char* key, const std::string& where) {
  auto it = rec.find(key);
  if (it == rec.end() || it->is_null()) return std::nullopt;  // null: a non-finite value was logged
  HPDL_CHECK(it->is_number(), "{}: \"{}\" must be a number, got {} ({})", where, key, it->type_name(), it->dump());
  return it->get<double>();
}

Timeline timeline(const ReportInputs& in) {
  Timeline t;
  for (const auto& r : in.metrics) {
    const std::string where = fmt::format("{}:{}", in.metrics_file, r.line);
    HPDL_CHECK(r.record.is_object(), "{}: a metrics record must be a JSON object, got {}", where,
               r.record.type_name());
    auto type = r.record.find("type");
    HPDL_CHECK(type != r.record.end() && type->is_string(), "{}: the record has no \"type\" string", where);
    const std::string kind = type->get<std::string>();
    if (kind != "step" && kind != "epoch") continue;  // summary and records of later versions
    const char* key = kind == "step" ? "step" : "epoch";
    auto k = metric(r.record, key, where);
    HPDL_CHECK(k.has_value(), "{}: {} record needs a numeric \"{}\"", where, kind == "step" ? "a step" : "an epoch",
               key);
    for (const char* m : {"step", "loss", "accuracy", "lr", "samples_per_s", "train_loss", "train_accuracy",
                          "val_loss", "val_accuracy", "test_loss", "test_accuracy"})
      metric(r.record, m, where);  // type check only
    auto& map = kind == "step" ? t.steps : t.epochs;
    const auto n = static_cast<int64_t>(*k);
    map.erase(map.lower_bound(n), map.end());
    map[n] = r.record;
  }
  return t;
}

PlotSeries series_of(const std::map<int64_t, json>& records, const char* name, const char* x_key, const char* y_key,
                     double scale = 1) {
  PlotSeries s{name, {}};
  for (const auto& [k, rec] : records) {
    auto x = rec.find(x_key), y = rec.find(y_key);
    if (x == rec.end() || y == rec.end() || !x->is_number() || !y->is_number()) continue;
    s.points.emplace_back(x->get<double>(), scale * y->get<double>());
  }
  return s;
}

void drop_empty(LinePlot& p) {
  std::erase_if(p.series, [](const PlotSeries& s) { return s.points.empty(); });
}

std::string table(const std::vector<std::pair<std::string, std::string>>& rows, const char* cls) {
  std::string o = fmt::format("<table class=\"{}\">\n", cls);
  for (const auto& [k, v] : rows) o += fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", html_escape(k), html_escape(v));
  return o + "</table>\n";
}

std::string time_breakdown(const TraceSummary& t) {
  double total = 0;
  for (const auto& p : t.phases)
    if (!p.overlapped) total += p.seconds;
  std::string o = fmt::format("<p>From trace.json: {} rank(s); seconds per rank, summed over the traced steps.</p>\n",
                              t.ranks);
  if (total > 0) {
    // One horizontal bar: the phases the training thread runs one after another.
    const double x0 = 8, width = 624;
    o += "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"bar\" width=\"640\" height=\"40\" viewBox=\"0 0 640 40\" "
         "role=\"img\" aria-label=\"time per phase\">\n";
    double x = x0;
    for (size_t i = 0; i < t.phases.size(); ++i) {
      const PhaseTime& p = t.phases[i];
      if (p.overlapped) continue;
      const double w = p.seconds / total * width;
      o += fmt::format("<rect class=\"phase\" data-phase=\"{0}\" x=\"{1}\" y=\"6\" width=\"{2}\" height=\"28\" "
                       "fill=\"{3}\"><title>{0}: {4:.3f} s ({5:.1f}%)</title></rect>\n",
                       html_escape(p.name), coord(x), coord(w), kColors[i % std::size(kColors)], p.seconds,
                       100 * p.seconds / total);
      x += w;
    }
    o += "</svg>\n";
  }
  o += "<table class=\"phases\">\n<tr><th>phase</th><th>seconds per rank</th><th>share</th><th>spans</th></tr>\n";
  for (size_t i = 0; i < t.phases.size(); ++i) {
    const PhaseTime& p = t.phases[i];
    const std::string share = p.overlapped ? std::string("beside the others")
                                           : fmt::format("{:.1f}%", total > 0 ? 100 * p.seconds / total : 0.0);
    const std::string swatch = p.overlapped ? std::string()
                                            : fmt::format("<span class=\"swatch\" style=\"background:{}\"></span>",
                                                          kColors[i % std::size(kColors)]);
    o += fmt::format("<tr><th>{}{}</th><td>{:.3f}</td><td>{}</td><td>{}</td></tr>\n", swatch, html_escape(p.name),
                     p.seconds, share, p.spans);
  }
  o += "</table>\n";
  if (t.allreduce_hidden_fraction >= 0)
    o += fmt::format("<p>{:.1f}% of the allreduce time overlapped backward on the same rank.</p>\n",
                     100 * t.allreduce_hidden_fraction);
  return o;
}

const char* kStyle = R"(body{font-family:sans-serif;margin:2em;color:#222;max-width:1340px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.5em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:.9em}
th{background:#f4f4f4;font-weight:normal}td{font-family:monospace}
.plots{display:flex;flex-wrap:wrap;gap:12px}
svg.plot rect.area{fill:#fff;stroke:#888}svg.plot .grid{stroke:#e4e4e4}
svg.plot polyline{fill:none;stroke-width:1.5}svg text{font-size:11px;fill:#333}svg text.title{font-size:13px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}
)";

}  // namespace

std::string render_report(const ReportInputs& in) {
  const Timeline t = timeline(in);
  std::string o = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  o += fmt::format("<title>hpdl run report: {}</title>\n<style>\n{}</style>\n</head>\n<body>\n", html_escape(in.title),
                   kStyle);
  o += fmt::format("<h1>hpdl run report: {}</h1>\n", html_escape(in.title));
  o += fmt::format("<p>{} records in {} ({} step, {} epoch).</p>\n", in.metrics.size(), html_escape(in.metrics_file),
                   t.steps.size(), t.epochs.size());

  o += "<h2>Summary</h2>\n";
  if (in.summary.is_object()) {
    std::vector<std::pair<std::string, std::string>> rows;
    for (const auto& [k, v] : in.summary.items()) rows.emplace_back(k, value_text(v));
    o += table(rows, "summary");
  } else {
    o += "<p>No summary: the run has not finished (or was killed).</p>\n";
  }

  o += "<h2>Training curves</h2>\n<div class=\"plots\">\n";
  LinePlot loss{"loss vs step", "step", "loss", {}, false};
  loss.series = {series_of(t.steps, "train", "step", "loss"), series_of(t.epochs, "validation", "step", "val_loss"),
                 series_of(t.epochs, "test", "step", "test_loss")};
  drop_empty(loss);
  {
    // Log scale once the loss spans a decade.
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& s : loss.series)
      for (auto [x, y] : s.points)
        if (std::isfinite(y)) lo = std::min(lo, y), hi = std::max(hi, y);
    loss.log_y = lo > 0 && hi / lo >= 10;
  }
  o += svg_line_plot(loss);
  LinePlot acc{"accuracy vs epoch", "epoch", "accuracy (%)", {}, false};
  acc.series = {series_of(t.epochs, "train", "epoch", "train_accuracy", 100),
                series_of(t.epochs, "validation", "epoch", "val_accuracy", 100),
                series_of(t.epochs, "test", "epoch", "test_accuracy", 100)};
  drop_empty(acc);
  // A regression run (train.loss = mse, l1, huber) has RMSE instead of accuracy.
  LinePlot rmse{"RMSE vs epoch", "epoch", "RMSE", {}, false};
  rmse.series = {series_of(t.epochs, "train", "epoch", "train_rmse"),
                 series_of(t.epochs, "validation", "epoch", "val_rmse"),
                 series_of(t.epochs, "test", "epoch", "test_rmse")};
  drop_empty(rmse);
  o += svg_line_plot(rmse.series.empty() ? acc : rmse);
  LinePlot lr{"learning rate vs step", "step", "learning rate", {series_of(t.steps, "lr", "step", "lr")}, false};
  drop_empty(lr);
  o += svg_line_plot(lr);
  LinePlot sps{"samples/s vs step", "step", "samples/s", {series_of(t.steps, "samples/s", "step", "samples_per_s")},
               false};
  drop_empty(sps);
  o += svg_line_plot(sps);
  o += "</div>\n";

  o += "<h2>Time per phase</h2>\n";
  if (in.has_trace) o += time_breakdown(in.trace);
  else o += "<p>No trace.json: run with <code>--set train.trace=true</code> to record one.</p>\n";

  o += "<h2>Checkpoints</h2>\n";
  if (in.checkpoints.empty()) {
    o += "<p>No checkpoints.</p>\n";
  } else {
    o += "<table class=\"checkpoints\">\n<tr><th>file</th><th>size</th><th>bytes</th></tr>\n";
    for (const auto& [name, bytes] : in.checkpoints)
      o += fmt::format("<tr><th>{}</th><td>{}</td><td>{}</td></tr>\n", html_escape(name), bytes_text(bytes), bytes);
    o += "</table>\n";
  }

  o += "<h2>Config</h2>\n";
  o += in.has_config ? table(in.config, "config") : std::string("<p>No config.toml.</p>\n");
  o += "</body>\n</html>\n";
  return o;
}

fs::path write_report(const fs::path& run_dir, const fs::path& out) {
  const fs::path path = out.empty() ? run_dir / "report.html" : out;
  const std::string html = render_report(load_report_inputs(run_dir));
  io::write_file_atomic(path, html.data(), html.size());
  return path;
}

}  // namespace hpdl::train
