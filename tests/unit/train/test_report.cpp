// The HTML run report: nice ticks on known ranges, SVG polyline points parsed
// back to the data they came from, HTML escaping, errors naming FILE:LINE for
// malformed metrics, the trace's time per phase, a whole report from a
// synthetic run directory (resumed steps, checkpoints, config), determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <regex>
#include <sstream>

#include "hpdl/core/error.h"
#include "hpdl/train/report.h"
#include "tests/unit/test_util.h"

using namespace hpdl;
using namespace hpdl::train;
namespace fs = std::filesystem;

namespace {

std::vector<double> steps_from(double lo, double step, int n) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(lo + step * i);
  return v;
}

void expect_ticks(const Axis& a, const std::vector<double>& want) {
  ASSERT_EQ(a.ticks.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(a.ticks[i], want[i], 1e-12) << "tick " << i;
  EXPECT_DOUBLE_EQ(a.lo, want.front());
  EXPECT_DOUBLE_EQ(a.hi, want.back());
}

// The (x, y) pairs of the polyline whose data-series is `name` in `svg` (the first one).
std::vector<std::pair<double, double>> polyline_points(const std::string& svg, const std::string& name) {
  // Plain finds, not std::regex: libstdc++'s regex recurses per character and overflows
  // the stack on a long points list.
  const size_t tag = svg.find("<polyline class=\"series\" data-series=\"" + name + "\"");
  if (tag == std::string::npos) return {};
  const size_t begin = svg.find("points=\"", tag), close = svg.find('>', tag);
  if (begin == std::string::npos || begin > close) return {};
  const size_t end = svg.find('"', begin + 8);
  std::vector<std::pair<double, double>> out;
  std::istringstream in(svg.substr(begin + 8, end - begin - 8));
  for (std::string pair; in >> pair;) {
    const auto comma = pair.find(',');
    out.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
  }
  return out;
}

// The i-th <svg ...>...</svg> element of a page.
std::string nth_svg(const std::string& html, int i) {
  size_t pos = 0;
  for (int k = 0; k <= i; ++k) {
    pos = html.find("<svg", k == 0 ? 0 : pos + 1);
    if (pos == std::string::npos) return "";
  }
  return html.substr(pos, html.find("</svg>", pos) - pos);
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

constexpr double kW = PlotFrame::kRight - PlotFrame::kLeft, kH = PlotFrame::kBottom - PlotFrame::kTop;

}  // namespace

TEST(ReportTicks, NiceNumbersOnKnownRanges) {
  expect_ticks(nice_axis(0, 1), steps_from(0, 0.2, 6));
  expect_ticks(nice_axis(10, 100), steps_from(0, 20, 6));
  expect_ticks(nice_axis(0.5, 2.3), steps_from(0.5, 0.5, 5));
  expect_ticks(nice_axis(-3, 7), steps_from(-4, 2, 7));
  expect_ticks(nice_axis(0.000123, 0.000456), steps_from(0.0001, 0.0001, 5));
  expect_ticks(nice_axis(5, 5), steps_from(4.4, 0.2, 7));        // a constant: widened by 10%
  expect_ticks(nice_axis(0, 0), steps_from(-1, 0.5, 5));          // zero: widened by 1
  expect_ticks(nice_axis(1000, 98000), steps_from(0, 20000, 6));
  EXPECT_EQ(nice_axis(0, 1).label(0.4), "0.4");
  EXPECT_EQ(nice_axis(10, 100).label(60), "60");
  EXPECT_EQ(nice_axis(0.000123, 0.000456).label(0.0003), "0.0003");
  EXPECT_EQ(nice_axis(-3, 7).label(0), "0");                       // never "-0"
  expect_ticks(log_axis(0.05, 3), {0.01, 0.1, 1, 10});
  expect_ticks(log_axis(2, 2), {1, 10});
  EXPECT_EQ(log_axis(0.05, 3).label(0.01), "0.01");
  EXPECT_NE(test::error_of([] { nice_axis(0, NAN); }).find("finite"), std::string::npos);
  EXPECT_NE(test::error_of([] { log_axis(0, 1); }).find("0 < lo"), std::string::npos);
}

TEST(ReportPlot, PolylinePointsMapBackToTheData) {
  LinePlot p{"loss", "step", "loss", {}, false};
  PlotSeries s{"train", {}};
  for (int x = 10; x <= 100; x += 10) s.points.emplace_back(x, 0.5 + 0.02 * (x - 10));  // y in [0.5, 2.3]
  s.points.emplace_back(110, NAN);  // a diverged loss (null in metrics.jsonl) is left out
  p.series = {s};
  const std::string svg = svg_line_plot(p);
  const auto pts = polyline_points(svg, "train");
  ASSERT_EQ(pts.size(), 10u);
  // Axes: x ticks 0..100, y ticks 0.5..2.5 (NiceNumbersOnKnownRanges), so pixel = edge + fraction * size.
  for (size_t i = 0; i < pts.size(); ++i) {
    const double x = 10.0 * (i + 1), y = 0.5 + 0.02 * (x - 10);
    EXPECT_NEAR(pts[i].first, PlotFrame::kLeft + x / 100 * kW, 0.006) << i;
    EXPECT_NEAR(pts[i].second, PlotFrame::kBottom - (y - 0.5) / 2.0 * kH, 0.006) << i;
    // And back: pixel -> data.
    EXPECT_NEAR((pts[i].first - PlotFrame::kLeft) / kW * 100, x, 0.02);
    EXPECT_NEAR(0.5 + (PlotFrame::kBottom - pts[i].second) / kH * 2.0, y, 0.0001);
  }
  EXPECT_NEAR(pts.front().first, 72 + 0.1 * 552, 0.006);
  EXPECT_NEAR(pts.back().second, 254 - 0.9 * 220, 0.006);
  for (const char* label : {">0<", ">20<", ">100<", ">0.5<", ">1.5<", ">2.5<", ">step<", ">loss<"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_EQ(count(svg, "<circle"), 10u);  // few points: each marked
}

// 100,000 step records: the polyline keeps at most 4 points a pixel column,
// and the same extremes, ends and envelope per column as the full series.
TEST(ReportPlot, LongSeriesAreThinnedPerPixelColumn) {
  LinePlot p{"loss", "step", "loss", {}, false};
  PlotSeries s{"train", {}};
  for (int i = 0; i < 100000; ++i)
    s.points.emplace_back(i, 1.0 + std::sin(i * 0.001) + 0.3 * ((i * 7919) % 101) / 100.0);
  p.series = {s};
  const std::string svg = svg_line_plot(p);
  const auto pts = polyline_points(svg, "train");
  const size_t columns = static_cast<size_t>(PlotFrame::kRight - PlotFrame::kLeft) + 1;
  EXPECT_LE(pts.size(), 4 * columns);
  EXPECT_GE(pts.size(), 2 * (columns - 1)) << "every column keeps at least its lowest and highest point";
  EXPECT_LT(svg.size(), 120000u) << "the plot is bounded by the canvas, not the run length";
  // The full series in pixels, through the same frame.
  PlotFrame f;
  ASSERT_TRUE(plot_frame(p, f));
  std::map<int, std::pair<double, double>> envelope;  // column -> (min y, max y) in pixels
  for (auto [x, y] : s.points) {
    const int c = static_cast<int>(std::floor(f.px(x)));
    const double py = f.py(y);
    auto it = envelope.find(c);
    if (it == envelope.end()) envelope[c] = {py, py};
    else it->second = {std::min(it->second.first, py), std::max(it->second.second, py)};
  }
  // Each column's lowest and highest pixel row is drawn (at that column, allowing for the
  // two-decimal rounding of the coordinates).
  auto drawn_at = [&](int c, double y) {
    for (auto [px, py] : pts)
      if (px >= c - 0.006 && px < c + 1.006 && std::abs(py - y) < 0.006) return true;
    return false;
  };
  for (auto& [c, mm] : envelope) {
    EXPECT_TRUE(drawn_at(c, mm.first)) << "column " << c << ": the highest point (lowest row) is missing";
    EXPECT_TRUE(drawn_at(c, mm.second)) << "column " << c << ": the lowest point is missing";
  }
  for (auto [px, py] : pts) {  // and nothing outside the envelope
    const auto it = envelope.find(static_cast<int>(std::floor(px + 0.006)));
    const auto jt = envelope.find(static_cast<int>(std::floor(px - 0.006)));
    const bool inside = (it != envelope.end() && py >= it->second.first - 0.006 && py <= it->second.second + 0.006) ||
                        (jt != envelope.end() && py >= jt->second.first - 0.006 && py <= jt->second.second + 0.006);
    EXPECT_TRUE(inside) << px << "," << py;
  }
  EXPECT_NEAR(pts.front().first, f.px(0), 0.006);
  EXPECT_NEAR(pts.back().first, f.px(99999), 0.006);
  EXPECT_EQ(count(svg, "<circle"), 0u);
}

TEST(ReportPlot, LogScaleAndEmptyPlots) {
  LinePlot p{"loss", "step", "loss", {{"train", {{0, 0.1}, {50, 1}, {100, 10}, {120, -1}}}}, true};
  const auto pts = polyline_points(svg_line_plot(p), "train");
  ASSERT_EQ(pts.size(), 3u);  // y <= 0 cannot be drawn on a log axis
  EXPECT_NEAR(pts[0].second, PlotFrame::kBottom, 0.006);
  EXPECT_NEAR(pts[1].second, (PlotFrame::kTop + PlotFrame::kBottom) / 2, 0.006);  // 1 is halfway from 0.1 to 10
  EXPECT_NEAR(pts[2].second, PlotFrame::kTop, 0.006);
  EXPECT_NE(svg_line_plot(p).find("(log scale)"), std::string::npos);
  LinePlot empty{"lr vs step", "step", "lr", {{"lr", {{1, NAN}}}}, false};
  const std::string e = svg_line_plot(empty);
  EXPECT_EQ(e.find("<svg"), std::string::npos);
  EXPECT_NE(e.find("no data"), std::string::npos);
}

TEST(ReportHtml, EscapesText) {
  EXPECT_EQ(html_escape("<&>\"'x"), "&lt;&amp;&gt;&quot;&#39;x");
  EXPECT_EQ(html_escape("plain"), "plain");
  LinePlot p{"a<b", "x&y", "\"y\"", {{"s<1>", {{0, 0}, {1, 1}}}}, false};
  const std::string svg = svg_line_plot(p);
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
  EXPECT_NE(svg.find("a&lt;b"), std::string::npos);
  EXPECT_NE(svg.find("x&amp;y"), std::string::npos);
  EXPECT_NE(svg.find("data-series=\"s&lt;1&gt;\""), std::string::npos);
}

TEST(ReportHtml, ConfigStringsAreEscaped) {
  const fs::path dir = test::temp_dir("report_escape");
  test::write_text(dir / "metrics.jsonl", "{\"type\":\"step\",\"step\":1,\"loss\":2.3,\"lr\":0.1}\n");
  test::write_text(dir / "config.toml", "[data]\npath = \"a<b&c>\\\"d\"\n[train]\nepochs = 3\nrate = 0.25\n"
                                        "flags = [1, 2]\n");
  const ReportInputs in = load_report_inputs(dir);
  ASSERT_EQ(in.config.size(), 4u);
  EXPECT_EQ(in.config[0], std::make_pair(std::string("data.path"), std::string("a<b&c>\"d")));
  const std::string html = render_report(in);
  EXPECT_NE(html.find("<th>data.path</th><td>a&lt;b&amp;c&gt;&quot;d</td>"), std::string::npos);
  EXPECT_EQ(html.find("a<b&c>"), std::string::npos);
  EXPECT_NE(html.find("<th>train.epochs</th><td>3</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>train.rate</th><td>0.25</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>train.flags</th><td>[1, 2]</td>"), std::string::npos);
  // The run directory's own name goes through the escaping too.
  const fs::path odd = test::temp_dir("report_<dir>");
  fs::copy_file(dir / "metrics.jsonl", odd / "metrics.jsonl");
  const std::string h2 = render_report(load_report_inputs(odd));
  EXPECT_EQ(h2.find("<dir>"), std::string::npos);
  EXPECT_NE(h2.find("report_&lt;dir&gt;"), std::string::npos);
  fs::remove_all(dir);
  fs::remove_all(odd);
}

TEST(ReportErrors, MalformedMetricsNameFileAndLine) {
  const fs::path dir = test::temp_dir("report_bad");
  const std::string good = "{\"type\":\"step\",\"step\":1,\"loss\":2.3}\n";
  // Line 3 (after a blank line) is not JSON; line 4 follows, so it is not a torn last line.
  test::write_text(dir / "metrics.jsonl", good + "\n{\"type\":\"step\",\"step\":2,\"lo\n" + good);
  std::string err = test::error_of([&] { load_report_inputs(dir); });
  EXPECT_NE(err.find("metrics.jsonl:3:"), std::string::npos) << err;
  // A torn last line (a killed run) is skipped.
  test::write_text(dir / "metrics.jsonl", good + good + "{\"type\":\"st");
  EXPECT_EQ(load_report_inputs(dir).metrics.size(), 2u);
  // Valid JSON, wrong content: each names its line.
  auto error_for = [&](const std::string& line2) {
    test::write_text(dir / "metrics.jsonl", good + line2 + "\n" + good);
    return test::error_of([&] { render_report(load_report_inputs(dir)); });
  };
  err = error_for("{\"type\":\"step\",\"step\":2,\"loss\":\"abc\"}");
  EXPECT_NE(err.find("metrics.jsonl:2: \"loss\" must be a number"), std::string::npos) << err;
  err = error_for("[1, 2]");
  EXPECT_NE(err.find("metrics.jsonl:2: a metrics record must be a JSON object"), std::string::npos) << err;
  err = error_for("{\"step\":2}");
  EXPECT_NE(err.find("metrics.jsonl:2: the record has no \"type\""), std::string::npos) << err;
  err = error_for("{\"type\":\"epoch\",\"step\":2}");
  EXPECT_NE(err.find("metrics.jsonl:2: an epoch record needs a numeric \"epoch\""), std::string::npos) << err;
  // A null (a non-finite value logged) and an unknown record type are fine.
  EXPECT_EQ(error_for("{\"type\":\"step\",\"step\":2,\"loss\":null}"), "");
  EXPECT_EQ(error_for("{\"type\":\"future_kind\",\"x\":\"y\"}"), "");
  fs::remove(dir / "metrics.jsonl");
  err = test::error_of([&] { load_report_inputs(dir); });
  EXPECT_NE(err.find((dir / "metrics.jsonl").string() + " does not exist"), std::string::npos) << err;
  err = test::error_of([&] { load_report_inputs(dir / "nope"); });
  EXPECT_NE(err.find("is not a directory"), std::string::npos) << err;
  test::write_text(dir / "metrics.jsonl", good);
  test::write_text(dir / "config.toml", "[train\n");
  err = test::error_of([&] { load_report_inputs(dir); });
  EXPECT_NE(err.find("config.toml:1:"), std::string::npos) << err;
  fs::remove_all(dir);
}

TEST(ReportTrace, TimePerPhaseFromASyntheticTrace) {
  const fs::path dir = test::temp_dir("report_trace");
  // Two ranks; rank 1's allreduce bucket lies half inside its backward span.
  test::write_text(dir / "trace.json", R"({"traceEvents": [
    {"name":"process_name","ph":"M","pid":0,"args":{"name":"rank 0"}},
    {"name":"data_wait","cat":"data","ph":"X","ts":0,"dur":100,"pid":0,"tid":2},
    {"name":"forward","cat":"compute","ph":"X","ts":100,"dur":300,"pid":0,"tid":0},
    {"name":"backward","cat":"compute","ph":"X","ts":400,"dur":600,"pid":0,"tid":0},
    {"name":"optimizer","cat":"compute","ph":"X","ts":1000,"dur":200,"pid":0,"tid":0},
    {"name":"data_wait","cat":"data","ph":"X","ts":0,"dur":300,"pid":1,"tid":2},
    {"name":"forward","cat":"compute","ph":"X","ts":300,"dur":500,"pid":1,"tid":0},
    {"name":"backward","cat":"compute","ph":"X","ts":800,"dur":400,"pid":1,"tid":0},
    {"name":"allreduce bucket 0","cat":"allreduce","ph":"X","ts":1000,"dur":400,"pid":1,"tid":1},
    {"name":"allreduce_wait","cat":"compute","ph":"X","ts":1200,"dur":200,"pid":1,"tid":0},
    {"name":"custom","cat":"compute","ph":"X","ts":1400,"dur":1000,"pid":1,"tid":0}
  ], "displayTimeUnit": "ms"})");
  const TraceSummary t = summarize_trace(dir / "trace.json");
  EXPECT_EQ(t.ranks, 2);
  std::vector<std::string> names;
  for (const auto& p : t.phases) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"data_wait", "forward", "backward", "allreduce_wait", "optimizer",
                                             "allreduce", "custom"}));
  auto phase = [&](const std::string& n) { return *std::find_if(t.phases.begin(), t.phases.end(), [&](auto& p) { return p.name == n; }); };
  EXPECT_DOUBLE_EQ(phase("data_wait").seconds, 400e-6 / 2);  // summed over ranks, per rank
  EXPECT_DOUBLE_EQ(phase("forward").seconds, 800e-6 / 2);
  EXPECT_DOUBLE_EQ(phase("backward").seconds, 1000e-6 / 2);
  EXPECT_DOUBLE_EQ(phase("optimizer").seconds, 200e-6 / 2);
  EXPECT_EQ(phase("forward").spans, 2);
  EXPECT_TRUE(phase("allreduce").overlapped);
  EXPECT_FALSE(phase("backward").overlapped);
  EXPECT_DOUBLE_EQ(t.allreduce_hidden_fraction, 0.5);

  // In the report: one bar whose segments are proportional to the sequential phases (not allreduce).
  test::write_text(dir / "metrics.jsonl", "{\"type\":\"step\",\"step\":1,\"loss\":1.0}\n");
  const std::string html = render_report(load_report_inputs(dir));
  const double total = (400 + 800 + 1000 + 200 + 200 + 1000) / 2.0;  // microseconds per rank
  const std::regex rect("data-phase=\"([a-z_]+)\" x=\"([0-9.]+)\" y=\"6\" width=\"([0-9.]+)\"");
  double expect_x = 8;
  int n = 0;
  for (std::sregex_iterator it(html.begin(), html.end(), rect), end; it != end; ++it, ++n) {
    const PhaseTime& p = phase((*it)[1].str());
    EXPECT_FALSE(p.overlapped);
    EXPECT_NEAR(std::stod((*it)[2].str()), expect_x, 0.006);
    EXPECT_NEAR(std::stod((*it)[3].str()), p.seconds * 1e6 / total * 624, 0.006) << p.name;
    expect_x += p.seconds * 1e6 / total * 624;
  }
  EXPECT_EQ(n, 6);
  EXPECT_NE(html.find("50.0% of the allreduce time overlapped backward"), std::string::npos);

  test::write_text(dir / "trace.json", "{\"traceEvents\": 3}");
  EXPECT_NE(test::error_of([&] { summarize_trace(dir / "trace.json"); }).find("not a Chrome trace"), std::string::npos);
  test::write_text(dir / "trace.json", "[{\"ph\":\"X\",\"dur\":\"long\"}]");
  EXPECT_NE(test::error_of([&] { summarize_trace(dir / "trace.json"); }).find("event 0 is malformed"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(ReportPage, WholeReportFromASyntheticRunDirectory) {
  const fs::path dir = test::temp_dir("report_run");
  std::string m;
  // Steps 10..40 at lr 0.1, a resume from step 20 that logs 30 and 40 again with other losses, 2 epochs.
  for (int s : {10, 20, 30, 40})
    m += fmt::format("{{\"type\":\"step\",\"epoch\":1,\"step\":{},\"loss\":{},\"accuracy\":0.5,\"lr\":0.1,"
                     "\"samples_per_s\":{}}}\n", s, 3.0 - 0.01 * s, 1000 + s);
  m += "{\"type\":\"epoch\",\"epoch\":1,\"step\":40,\"train_loss\":2.8,\"train_accuracy\":0.4,\"val_loss\":2.9,"
       "\"val_accuracy\":0.35,\"test_loss\":2.9,\"test_accuracy\":0.3}\n";
  for (int s : {30, 40, 50, 60})
    m += fmt::format("{{\"type\":\"step\",\"epoch\":2,\"step\":{},\"loss\":{},\"accuracy\":0.6,\"lr\":0.05,"
                     "\"samples_per_s\":2000}}\n", s, 2.0 - 0.01 * s);
  m += "{\"type\":\"epoch\",\"epoch\":2,\"step\":60,\"train_loss\":1.5,\"train_accuracy\":0.6,\"val_loss\":1.6,"
       "\"val_accuracy\":0.55,\"test_loss\":1.7,\"test_accuracy\":0.5}\n";
  m += "{\"type\":\"summary\",\"summary\":{\"steps\":60,\"test_accuracy\":0.5,\"device\":\"cpu\"}}\n";
  test::write_text(dir / "metrics.jsonl", m);
  fs::create_directories(dir / "checkpoints");
  test::write_text(dir / "checkpoints" / "step-0000000060.safetensors", std::string(3 << 20, 'x'));
  test::write_text(dir / "checkpoints" / "step-0000000060.json", std::string(1536, 'y'));
  test::write_text(dir / "checkpoints" / "step-0000000040.json", "{}");

  const ReportInputs in = load_report_inputs(dir);
  ASSERT_EQ(in.checkpoints.size(), 3u);
  EXPECT_EQ(in.checkpoints[0].first, "step-0000000040.json");
  const std::string html = render_report(in);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(count(html, "http"), count(html, "<svg"));  // no address but each SVG's namespace
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 4u);  // loss, accuracy, lr, samples/s; no trace, no bar

  // Loss vs step: the resumed run replaced steps 30 and 40: 10, 20 from the first run, 30..60 from the second.
  const std::string loss_svg = nth_svg(html, 0);
  EXPECT_NE(loss_svg.find("loss vs step"), std::string::npos);
  const auto train = polyline_points(loss_svg, "train");
  ASSERT_EQ(train.size(), 6u);
  // Axes: steps 10..60 -> 10..60 (step 10); losses 1.4..2.9 (validation and test included) -> 1.0..3.0 (step 0.5).
  const double want_loss[] = {2.9, 2.8, 1.7, 1.6, 1.5, 1.4};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_NEAR(train[i].first, PlotFrame::kLeft + (10.0 * (i + 1) - 10) / 50 * kW, 0.006) << i;
    EXPECT_NEAR(train[i].second, PlotFrame::kBottom - (want_loss[i] - 1.0) / 2.0 * kH, 0.006) << i;
  }
  EXPECT_EQ(polyline_points(loss_svg, "validation").size(), 2u);
  // Accuracy vs epoch, in percent: epochs 1..2 -> x axis 1.0..2.0 (step 0.2), y 30..60 -> 30..60 (step 10).
  const std::string acc_svg = nth_svg(html, 1);
  const auto test_acc = polyline_points(acc_svg, "test");
  ASSERT_EQ(test_acc.size(), 2u);
  EXPECT_NEAR(test_acc[0].first, PlotFrame::kLeft, 0.006);
  EXPECT_NEAR(test_acc[1].first, PlotFrame::kRight, 0.006);
  EXPECT_NEAR(test_acc[0].second, PlotFrame::kBottom, 0.006);                 // 30%
  EXPECT_NEAR(test_acc[1].second, PlotFrame::kBottom - 20.0 / 30 * kH, 0.006);  // 50%
  EXPECT_EQ(polyline_points(acc_svg, "train").size(), 2u);
  // Learning rate and samples/s vs step.
  const auto lr = polyline_points(nth_svg(html, 2), "lr");
  ASSERT_EQ(lr.size(), 6u);
  EXPECT_NEAR(lr[1].second, lr[0].second, 1e-9);
  EXPECT_NEAR(lr[2].second, PlotFrame::kBottom, 0.006);  // 0.05 is the axis' bottom (0.05..0.10)
  EXPECT_NEAR(lr[0].second, PlotFrame::kTop, 0.006);
  EXPECT_EQ(polyline_points(nth_svg(html, 3), "samples/s").size(), 6u);

  EXPECT_NE(html.find("<th>steps</th><td>60</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>device</th><td>cpu</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>step-0000000060.safetensors</th><td>3.00 MiB</td><td>3145728</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>step-0000000060.json</th><td>1.5 KiB</td><td>1536</td>"), std::string::npos);
  EXPECT_NE(html.find("No trace.json"), std::string::npos);
  EXPECT_NE(html.find("No config.toml"), std::string::npos);

  // Deterministic, and written atomically where asked.
  EXPECT_EQ(render_report(load_report_inputs(dir)), html);
  EXPECT_EQ(write_report(dir), dir / "report.html");
  EXPECT_EQ(test::read_text(dir / "report.html"), html);
  EXPECT_EQ(write_report(dir, dir / "other.html"), dir / "other.html");
  EXPECT_EQ(test::read_text(dir / "other.html"), html);
  fs::remove_all(dir);
}
