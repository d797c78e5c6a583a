#include "hpdl/tune/tune.h"

#include <toml++/toml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <random>
#include <thread>
#include <type_traits>

#include <fmt/format.h>

#include "hpdl/core/error.h"
#include "hpdl/io/file.h"
#include "hpdl/train/checkpoint.h"
#include "hpdl/train/config.h"
#include "hpdl/train/early_stopping.h"
#include "hpdl/train/objective.h"
#include "hpdl/train/trainer.h"

namespace hpdl::tune {
namespace {

const std::vector<std::string> kSearchKeys = {"config", "set",           "method",         "trials",
                                              "seed",   "metric",        "resource",       "min_resource",
                                              "max_resource", "eta",     "ranks_per_trial", "run_dir",
                                              "space",  "interval",      "quantile",       "perturb",
                                              "resample", "direction"};

std::string value_text(const toml::node& v, const std::string& where) {
  if (auto i = v.as_integer()) return std::to_string(i->get());
  if (auto f = v.as_floating_point()) return fmt::format("{:.17g}", f->get());
  if (auto b = v.as_boolean()) return b->get() ? "true" : "false";
  if (auto s = v.as_string()) return "\"" + s->get() + "\"";
  HPDL_FAIL("{}: choices must be numbers, strings or booleans", where);
}

Param parse_param(const std::string& key, const toml::node& node, const std::string& src) {
  const std::string where = fmt::format("{}: space.\"{}\"", src, key);
  const toml::table* t = node.as_table();
  HPDL_CHECK(t && t->size() == 1,
             "{}: write one of {{ uniform = [lo, hi] }}, {{ log_uniform = [lo, hi] }}, {{ int_uniform = [lo, hi] }} or "
             "{{ choice = [a, b, ...] }}",
             where);
  // Keep the iterator alive: toml++ iterators hand out references into themselves.
  const auto it = t->begin();
  const std::string kind(it->first.str());
  const toml::node& value = it->second;
  const toml::array* a = value.as_array();
  HPDL_CHECK(a && !a->empty(), "{}.{}: expected a non-empty array", where, kind);
  Param p;
  p.key = key;
  if (kind == "choice") {
    p.kind = Param::Kind::choice;
    for (const auto& v : *a) p.choices.push_back(value_text(v, where));
    return p;
  }
  HPDL_CHECK(a->size() == 2, "{}.{}: expected [low, high]", where, kind);
  auto num = [&](const toml::node& v) {
    if (auto i = v.as_integer()) return static_cast<double>(i->get());
    if (auto f = v.as_floating_point()) return f->get();
    HPDL_FAIL("{}.{}: bounds must be numbers", where, kind);
  };
  p.low = num(*a->get(0));
  p.high = num(*a->get(1));
  if (kind == "uniform") {
    p.kind = Param::Kind::uniform;
  } else if (kind == "log_uniform") {
    p.kind = Param::Kind::log_uniform;
    HPDL_CHECK(p.low > 0, "{}.log_uniform: the low bound must be > 0, got {}", where, p.low);
  } else if (kind == "int_uniform") {
    p.kind = Param::Kind::int_uniform;
    HPDL_CHECK(p.low == std::floor(p.low) && p.high == std::floor(p.high), "{}.int_uniform: bounds must be integers",
               where);
  } else {
    HPDL_FAIL("{}: unknown distribution '{}' (uniform, log_uniform, int_uniform, choice)", where, kind);
  }
  HPDL_CHECK(p.low < p.high, "{}.{}: low ({}) must be below high ({})", where, kind, p.low, p.high);
  return p;
}

// Uniform doubles in [0, 1) from a fixed generator: the same trials everywhere.
struct Sampler {
  std::mt19937_64 gen;
  explicit Sampler(uint64_t seed) : gen(seed) {}
  double next() { return static_cast<double>(gen() >> 11) * 0x1.0p-53; }
};

std::string sample_value(const Param& p, Sampler& s) {
  const double u = s.next();
  switch (p.kind) {
    case Param::Kind::uniform:
      return fmt::format("{:.6g}", p.low + u * (p.high - p.low));
    case Param::Kind::log_uniform:
      return fmt::format("{:.6g}", std::exp(std::log(p.low) + u * (std::log(p.high) - std::log(p.low))));
    case Param::Kind::int_uniform:
      return std::to_string(static_cast<int64_t>(p.low) +
                            std::min(static_cast<int64_t>(u * (p.high - p.low + 1)), static_cast<int64_t>(p.high - p.low)));
    case Param::Kind::choice:
      return p.choices[std::min(static_cast<size_t>(u * static_cast<double>(p.choices.size())), p.choices.size() - 1)];
  }
  return {};
}

int64_t grid_size(const SearchConfig& s) {
  int64_t n = 1;
  for (const auto& p : s.space) n *= static_cast<int64_t>(p.choices.size());
  return n;
}

// Where a trial's training runs and logs.
std::filesystem::path trial_dir(const SearchConfig& s, int64_t trial) {
  return s.run_dir / fmt::format("trial-{:03d}", trial);
}

// Whether a ranks before b: better metric first, a failed (NaN) trial last, ties by id.
bool ranks_before(bool lower_better, double am, int64_t at, double bm, int64_t bt) {
  const bool an = std::isnan(am), bn = std::isnan(bm);
  if (an != bn) return bn;
  if (!an && am != bm) return lower_better ? am < bm : am > bm;
  return at < bt;
}

}  // namespace

bool metric_is_loss(const std::string& metric) { return train::metric_lower_is_better(metric); }

bool lower_is_better(const SearchConfig& s) {
  return s.direction.empty() ? metric_is_loss(s.metric) : s.direction == "minimize";
}

double metric_value(const SearchConfig& s, const Outcome& o) {
  if (!o.ok) return std::numeric_limits<double>::quiet_NaN();
  const std::pair<const char*, double> values[] = {
      {"val_accuracy", o.val_accuracy}, {"val_loss", o.val_loss},   {"test_accuracy", o.test_accuracy},
      {"test_loss", o.test_loss},       {"val_rmse", o.val_rmse},   {"val_mae", o.val_mae},
      {"val_r2", o.val_r2},             {"test_rmse", o.test_rmse}, {"test_mae", o.test_mae},
      {"test_r2", o.test_r2}};
  for (const auto& [name, v] : values)
    if (s.metric == name) return v;
  return std::numeric_limits<double>::quiet_NaN();
}

SearchConfig parse_search(const std::string& text, const std::filesystem::path& source,
                          const std::vector<std::string>& overrides) {
  const std::string src = source.string();
  toml::table root;
  try {
    root = toml::parse(text, src);
  } catch (const toml::parse_error& e) {
    HPDL_FAIL("{}:{}:{}: {}", src, e.source().begin.line, e.source().begin.column, e.description());
  }
  SearchConfig s;
  s.metric.clear();  // not given: chosen below from the training config's objective
  for (const auto& [k, v] : root) {
    const std::string key(k.str());
    if (std::find(kSearchKeys.begin(), kSearchKeys.end(), key) == kSearchKeys.end()) {
      std::string best;
      size_t best_d = 99;
      for (const auto& c : kSearchKeys)
        if (size_t d = train::edit_distance(key, c); d < best_d) best_d = d, best = c;
      HPDL_FAIL("{}: unknown key '{}'{}", src, key, best_d <= 2 ? fmt::format(" (did you mean '{}'?)", best) : "");
    }
  }
  auto str = [&](const char* key, std::string& out) {
    if (auto n = root.get(key)) {
      HPDL_CHECK(n->is_string(), "{}: {} must be a string", src, key);
      out = n->as_string()->get();
    }
  };
  auto integer = [&](const char* key, int64_t& out) {
    if (auto n = root.get(key)) {
      HPDL_CHECK(n->is_integer(), "{}: {} must be an integer", src, key);
      out = n->as_integer()->get();
    }
  };
  auto number = [&](const char* key, double& out) {
    if (auto n = root.get(key)) {
      HPDL_CHECK(n->is_number(), "{}: {} must be a number", src, key);
      out = n->is_integer() ? static_cast<double>(n->as_integer()->get()) : n->as_floating_point()->get();
    }
  };
  std::string config, run_dir = s.run_dir.string();
  str("config", config);
  str("method", s.method);
  str("metric", s.metric);
  str("direction", s.direction);
  str("resource", s.resource);
  str("run_dir", run_dir);
  integer("trials", s.trials);
  int64_t seed = 0;
  integer("seed", seed);
  s.seed = static_cast<uint64_t>(seed);
  integer("min_resource", s.min_resource);
  integer("max_resource", s.max_resource);
  integer("eta", s.eta);
  integer("ranks_per_trial", s.ranks_per_trial);
  integer("interval", s.interval);
  number("quantile", s.quantile);
  number("perturb", s.perturb);
  number("resample", s.resample);
  if (auto n = root.get("set")) {
    const toml::array* a = n->as_array();
    HPDL_CHECK(a, "{}: set must be an array of \"key=value\" strings", src);
    for (const auto& v : *a) {
      HPDL_CHECK(v.is_string(), "{}: set must be an array of \"key=value\" strings", src);
      s.set.push_back(v.as_string()->get());
    }
  }
  if (auto n = root.get("space")) {
    const toml::table* t = n->as_table();
    HPDL_CHECK(t, "{}: [space] must be a table of key = {{ distribution = [...] }}", src);
    for (const auto& [k, v] : *t) s.space.push_back(parse_param(std::string(k.str()), v, src));
  }
  for (const auto& o : overrides) {
    const size_t eq = o.find('=');
    HPDL_CHECK(eq != std::string::npos, "--set {}: expected KEY=VALUE", o);
    const std::string key = o.substr(0, eq), value = o.substr(eq + 1);
    try {
      if (key == "method") s.method = value;
      else if (key == "metric") s.metric = value;
      else if (key == "direction") s.direction = value;
      else if (key == "resource") s.resource = value;
      else if (key == "run_dir") run_dir = value;
      else if (key == "trials") s.trials = std::stoll(value);
      else if (key == "seed") s.seed = std::stoull(value);
      else if (key == "min_resource") s.min_resource = std::stoll(value);
      else if (key == "max_resource") s.max_resource = std::stoll(value);
      else if (key == "eta") s.eta = std::stoll(value);
      else if (key == "ranks_per_trial") s.ranks_per_trial = std::stoll(value);
      else if (key == "interval") s.interval = std::stoll(value);
      else if (key == "quantile") s.quantile = std::stod(value);
      else if (key == "perturb") s.perturb = std::stod(value);
      else if (key == "resample") s.resample = std::stod(value);
      else s.set.push_back(o);  // a training config key, for every trial
    } catch (const std::logic_error&) {
      HPDL_FAIL("--set {}: '{}' is not a number", o, value);
    }
  }
  s.run_dir = run_dir;
  HPDL_CHECK(!config.empty(), "{}: config (the training config file) is missing", src);
  s.config = std::filesystem::path(config).is_absolute() ? std::filesystem::path(config)
                                                         : source.parent_path() / config;

  auto one_of = [&](const char* key, const std::string& v, std::initializer_list<const char*> allowed) {
    std::string list;
    for (const char* a : allowed) {
      if (v == a) return;
      list += fmt::format("{}{}", list.empty() ? "" : ", ", a);
    }
    HPDL_FAIL("{}: {} = \"{}\" is not one of {}", src, key, v, list);
  };
  one_of("method", s.method, {"random", "grid", "sha", "asha", "hyperband", "pbt"});
  if (!s.direction.empty()) one_of("direction", s.direction, {"minimize", "maximize"});
  one_of("resource", s.resource, {"epochs", "steps"});
  HPDL_CHECK(s.trials >= 1, "{}: trials must be at least 1, got {}", src, s.trials);
  HPDL_CHECK(s.eta >= 2, "{}: eta must be at least 2, got {}", src, s.eta);
  HPDL_CHECK(s.ranks_per_trial >= 1, "{}: ranks_per_trial must be at least 1, got {}", src, s.ranks_per_trial);
  HPDL_CHECK(!s.space.empty(), "{}: [space] names no key to search", src);

  // The training config with every override and each parameter's values: an
  // unknown key or a bad value is reported now, not in the middle of the search.
  train::Config base = train::load_config(s.config, s.set);
  // The metric follows the objective: accuracy for classification, the regression metrics otherwise.
  const bool regression = train::Objective(base).regression();
  if (s.metric.empty()) s.metric = regression ? "val_rmse" : "val_accuracy";
  if (regression) {
    HPDL_CHECK(s.metric.find("accuracy") == std::string::npos,
               "{}: metric = \"{}\": the training config's train.loss = \"{}\" is a regression loss, which has no "
               "accuracy; choose val_rmse, val_mae, val_r2 or val_loss (or their test_ forms)",
               src, s.metric, base.train.loss);
    one_of("metric", s.metric,
           {"val_loss", "val_rmse", "val_mae", "val_r2", "test_loss", "test_rmse", "test_mae", "test_r2"});
  } else {
    HPDL_CHECK(s.metric.find("rmse") == std::string::npos && s.metric.find("mae") == std::string::npos &&
                   s.metric.find("r2") == std::string::npos,
               "{}: metric = \"{}\" is a regression metric, but the training config's train.loss = \"{}\" is a "
               "classification loss; choose val_accuracy or val_loss (or their test_ forms)",
               src, s.metric, base.train.loss);
    one_of("metric", s.metric, {"val_accuracy", "val_loss", "test_accuracy", "test_loss"});
  }
  if (s.direction.empty()) s.direction = metric_is_loss(s.metric) ? "minimize" : "maximize";
  HPDL_CHECK(s.metric.rfind("val_", 0) != 0 || base.data.validation > 0,
             "{}: metric = \"{}\" needs a validation set: add \"data.validation=N\" to set (N training samples "
             "held out), or select on a test_ metric knowingly",
             src, s.metric);
  if (s.max_resource <= 0) {
    HPDL_CHECK(s.resource == "epochs", "{}: max_resource is required with resource = \"steps\"", src);
    s.max_resource = base.train.epochs;
  }
  HPDL_CHECK(s.min_resource >= 1 && s.min_resource <= s.max_resource,
             "{}: min_resource ({}) must be between 1 and max_resource ({})", src, s.min_resource, s.max_resource);
  if (s.method == "pbt") {
    HPDL_CHECK(s.trials >= 2, "{}: method = \"pbt\" needs a population of trials >= 2, got {}", src, s.trials);
    HPDL_CHECK(s.interval >= 1 && s.interval <= s.max_resource,
               "{}: interval ({}) must be between 1 and max_resource ({})", src, s.interval, s.max_resource);
    HPDL_CHECK(s.quantile > 0 && s.quantile <= 0.5, "{}: quantile must be in (0, 0.5], got {}", src, s.quantile);
    HPDL_CHECK(s.perturb > 1, "{}: perturb must be > 1 (a value is multiplied by it or by its inverse), got {}", src,
               s.perturb);
    HPDL_CHECK(s.resample >= 0 && s.resample <= 1, "{}: resample must be a probability in [0, 1], got {}", src,
               s.resample);
  }
  for (const auto& p : s.space) {
    std::vector<std::string> values = p.choices;
    if (p.kind != Param::Kind::choice)
      values = {p.kind == Param::Kind::int_uniform ? std::to_string(static_cast<int64_t>(p.low))
                                                   : fmt::format("{:.17g}", p.low)};
    for (const auto& v : values) {
      train::Config c = base;
      try {
        train::apply_override(c, p.key + "=" + v);
        train::validate(c, src);
      } catch (const Error& e) {
        HPDL_FAIL("{}: space.\"{}\": {}", src, p.key, e.what());
      }
    }
  }
  if (s.method == "grid")
    for (const auto& p : s.space)
      HPDL_CHECK(p.kind == Param::Kind::choice, "{}: method = \"grid\" needs a choice list for every key; space.\"{}\" is a "
                 "distribution",
                 src, p.key);
  return s;
}

SearchConfig load_search(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  HPDL_CHECK(std::filesystem::is_regular_file(path, ec), "{}: search file not found (see examples/tune/)",
             path.string());
  auto bytes = io::read_file(path);
  return parse_search(std::string(bytes.begin(), bytes.end()), path, overrides);
}

std::vector<std::vector<std::string>> trial_overrides(const SearchConfig& s) {
  std::vector<std::vector<std::string>> out;
  if (s.method == "grid") {
    out.push_back({});
    for (const auto& p : s.space) {
      std::vector<std::vector<std::string>> next;
      for (const auto& prefix : out)
        for (const auto& c : p.choices) {
          auto o = prefix;
          o.push_back(p.key + "=" + c);
          next.push_back(std::move(o));
        }
      out = std::move(next);
    }
    return out;
  }
  int64_t total = 0;
  for (const auto& b : brackets(s)) total += b.trials;
  Sampler sampler(s.seed);
  for (int64_t t = 0; t < total; ++t) {
    std::vector<std::string> o;
    for (const auto& p : s.space) o.push_back(p.key + "=" + sample_value(p, sampler));
    out.push_back(std::move(o));
  }
  return out;
}

std::vector<Rung> rungs(const SearchConfig& s, int64_t trials) {
  if (s.method == "pbt") {
    std::vector<Rung> out;
    for (int64_t b = s.interval;; b += s.interval) {
      out.push_back({std::min(b, s.max_resource), trials});
      if (b >= s.max_resource) break;
    }
    return out;
  }
  if (s.method != "sha" && s.method != "asha") return {{s.max_resource, trials}};
  std::vector<Rung> out;
  int64_t budget = s.min_resource, n = trials;
  while (true) {
    out.push_back({std::min(budget, s.max_resource), n});
    if (budget >= s.max_resource) break;
    budget *= s.eta;
    n = std::max<int64_t>(1, n / s.eta);
  }
  return out;
}

std::vector<Bracket> brackets(const SearchConfig& s) {
  if (s.method != "hyperband") {
    const int64_t n = s.method == "grid" ? grid_size(s) : s.trials;
    return {{0, n, rungs(s, n)}};
  }
  int64_t s_max = 0;
  for (int64_t r = s.min_resource; r * s.eta <= s.max_resource; r *= s.eta) ++s_max;
  std::vector<Bracket> out;
  int64_t first = 0;
  for (int64_t k = s_max; k >= 0; --k) {
    int64_t eta_k = 1;
    for (int64_t i = 0; i < k; ++i) eta_k *= s.eta;
    const int64_t n = ((s_max + 1) * eta_k + k) / (k + 1);  // ceil((s_max + 1) * eta^k / (k + 1))
    SearchConfig sha = s;
    sha.method = "sha";
    sha.min_resource = std::max(s.min_resource, s.max_resource / eta_k);
    out.push_back({first, n, rungs(sha, n)});
    first += n;
  }
  return out;
}

std::vector<std::string> perturb_overrides(const SearchConfig& s, const std::vector<std::string>& overrides,
                                           uint64_t seed) {
  Sampler gen(seed);
  std::vector<std::string> out = overrides;
  for (auto& o : out) {
    const size_t eq = o.find('=');
    const std::string key = o.substr(0, eq), value = o.substr(eq + 1);
    const auto p = std::find_if(s.space.begin(), s.space.end(), [&](const Param& q) { return q.key == key; });
    if (eq == std::string::npos || p == s.space.end()) continue;
    if (gen.next() < s.resample) {  // a fresh draw from the space keeps the population diverse
      o = key + "=" + sample_value(*p, gen);
      continue;
    }
    const bool up = gen.next() < 0.5;
    std::string next;
    try {
      switch (p->kind) {
        case Param::Kind::uniform:
        case Param::Kind::log_uniform: {
          const double v = std::stod(value);
          next = fmt::format("{:.6g}", std::clamp(up ? v * s.perturb : v / s.perturb, p->low, p->high));
          break;
        }
        case Param::Kind::int_uniform: {
          const int64_t v = std::stoll(value);
          int64_t w = std::llround(up ? static_cast<double>(v) * s.perturb : static_cast<double>(v) / s.perturb);
          if (w == v) w = up ? v + 1 : v - 1;  // small integers: still move
          next = std::to_string(std::clamp(w, static_cast<int64_t>(p->low), static_cast<int64_t>(p->high)));
          break;
        }
        case Param::Kind::choice: {
          const auto it = std::find(p->choices.begin(), p->choices.end(), value);
          const int64_t n = static_cast<int64_t>(p->choices.size());
          int64_t i = it == p->choices.end() ? 0 : it - p->choices.begin();
          int64_t j = i + (up ? 1 : -1);
          if (j < 0 || j >= n) j = i - (up ? 1 : -1);  // at an end: the only neighbour
          next = p->choices[static_cast<size_t>(std::clamp<int64_t>(j, 0, n - 1))];
          break;
        }
      }
    } catch (const std::logic_error&) {
      HPDL_FAIL("hpdl tune: pbt: cannot perturb {} (not a number for space.\"{}\")", o, key);
    }
    o = key + "=" + next;
  }
  return out;
}

// ---- asha ----------------------------------------------------------------

AshaScheduler::AshaScheduler(const SearchConfig& search) : search_(search) {
  HPDL_CHECK(search.method == "asha", "AshaScheduler: the search's method is \"{}\", not \"asha\"", search.method);
  overrides_ = trial_overrides(search);
  for (const Rung& r : rungs(search, search.trials)) budgets_.push_back(r.budget);
  results_.resize(budgets_.size());
  promoted_.resize(budgets_.size());
}

std::vector<AshaScheduler::Result> AshaScheduler::ranked(size_t k) const {
  std::vector<Result> out;
  for (const Result& r : results_[k])
    if (!std::isnan(r.metric)) out.push_back(r);
  const bool lower_better = lower_is_better(search_);
  std::sort(out.begin(), out.end(), [&](const Result& a, const Result& b) {
    return ranks_before(lower_better, a.metric, a.trial, b.metric, b.trial);
  });
  return out;
}

AshaScheduler::Job AshaScheduler::run(int64_t trial, size_t rung) {
  if (rung > 0) promoted_[rung - 1].insert(trial);
  running_.insert({trial, static_cast<int64_t>(rung)});
  Job j;
  j.kind = Job::Kind::run;
  j.trial = trial;
  j.rung = static_cast<int64_t>(rung);
  j.budget = budgets_[rung];
  return j;
}

AshaScheduler::Job AshaScheduler::next() {
  const size_t top = budgets_.size() - 1;
  // 1. A promotion, looked for from the highest rung down: finishing a
  //    promising trial is worth more than starting a new one.
  for (size_t k = top; k-- > 0;) {
    const auto best = ranked(k);
    // floor(n_k / eta) counts every result at the rung, failed ones too: a
    // failure is evidence, and the paper's |rung k| is every trial there.
    const size_t quota = results_[k].size() / static_cast<size_t>(search_.eta);
    for (size_t i = 0; i < quota && i < best.size(); ++i)
      if (!promoted_[k].count(best[i].trial)) return run(best[i].trial, k + 1);
  }
  // 2. A new configuration at the bottom rung.
  if (started_ < search_.trials) return run(started_++, 0);
  // 3. Running jobs may still make a promotion.
  if (!running_.empty()) return Job{Job::Kind::wait};
  // 4. The drain's end: one successful trial must reach the top rung.
  if (ranked(top).empty())
    for (size_t k = top; k-- > 0;)
      for (const Result& r : ranked(k))
        if (!promoted_[k].count(r.trial)) return run(r.trial, k + 1);
  return Job{Job::Kind::done};
}

Record AshaScheduler::report(const Job& job, const Outcome& outcome, int64_t group) {
  HPDL_CHECK(job.kind == Job::Kind::run && running_.erase({job.trial, job.rung}) == 1,
             "AshaScheduler::report: trial {} at rung {} is not running", job.trial, job.rung);
  Record rec;
  rec.trial = job.trial;
  rec.rung = job.rung;
  rec.budget = job.budget;
  rec.group = group;
  rec.overrides = overrides_[static_cast<size_t>(job.trial)];
  rec.outcome = outcome;
  if (!rec.outcome.ok && rec.outcome.error.empty()) rec.outcome.error = "failed (see its train.log)";
  rec.metric = metric_value(search_, outcome);
  results_[static_cast<size_t>(job.rung)].push_back({job.trial, rec.metric});
  records_.push_back(rec);
  return rec;
}

std::optional<Record> AshaScheduler::best() const {
  std::optional<Record> out;
  const bool lower_better = lower_is_better(search_);
  for (const Record& r : records_) {
    if (!out || r.rung > out->rung ||
        (r.rung == out->rung && ranks_before(lower_better, r.metric, r.trial, out->metric, out->trial)))
      out = r;
  }
  return out;
}

namespace {

// The scheduler's messages: little-endian-agnostic, since every rank of a job
// runs the same binary on the same kind of machine; sizes and strings are
// length-prefixed, and a reader checks every length against what is left.
struct ByteWriter {
  std::vector<uint8_t> bytes;
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void put(const std::string& s) {
    put<int64_t>(static_cast<int64_t>(s.size()));
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
};

struct ByteReader {
  const std::vector<uint8_t>& bytes;
  size_t at = 0;
  template <typename T>
  T get() {
    HPDL_CHECK(at + sizeof(T) <= bytes.size(), "hpdl tune: asha: a scheduler message of {} bytes ends early", bytes.size());
    T v;
    std::memcpy(&v, bytes.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  std::string get_string() {
    const auto n = get<int64_t>();
    HPDL_CHECK(n >= 0 && at + static_cast<size_t>(n) <= bytes.size(),
               "hpdl tune: asha: a scheduler message of {} bytes ends early", bytes.size());
    std::string s(bytes.begin() + static_cast<std::ptrdiff_t>(at), bytes.begin() + static_cast<std::ptrdiff_t>(at + n));
    at += static_cast<size_t>(n);
    return s;
  }
};

void put_job(ByteWriter& w, const AshaScheduler::Job& j) {
  w.put<int64_t>(static_cast<int64_t>(j.kind));
  w.put(j.trial), w.put(j.rung), w.put(j.budget);
}
AshaScheduler::Job get_job(ByteReader& r) {
  AshaScheduler::Job j;
  j.kind = static_cast<AshaScheduler::Job::Kind>(r.get<int64_t>());
  j.trial = r.get<int64_t>(), j.rung = r.get<int64_t>(), j.budget = r.get<int64_t>();
  return j;
}
void put_outcome(ByteWriter& w, const Outcome& o) {
  w.put<int64_t>(o.ok ? 1 : 0);
  w.put(o.seconds), w.put(o.val_accuracy), w.put(o.val_loss), w.put(o.test_accuracy), w.put(o.test_loss);
  w.put(o.val_rmse), w.put(o.val_mae), w.put(o.val_r2), w.put(o.test_rmse), w.put(o.test_mae), w.put(o.test_r2);
  w.put(o.error);
}
Outcome get_outcome(ByteReader& r) {
  Outcome o;
  o.ok = r.get<int64_t>() != 0;
  o.seconds = r.get<double>(), o.val_accuracy = r.get<double>(), o.val_loss = r.get<double>();
  o.test_accuracy = r.get<double>(), o.test_loss = r.get<double>();
  o.val_rmse = r.get<double>(), o.val_mae = r.get<double>(), o.val_r2 = r.get<double>();
  o.test_rmse = r.get<double>(), o.test_mae = r.get<double>(), o.test_r2 = r.get<double>();
  o.error = r.get_string();
  return o;
}
void put_record(ByteWriter& w, const Record& rec) {
  w.put(rec.trial), w.put(rec.rung), w.put(rec.budget), w.put(rec.bracket), w.put(rec.parent), w.put(rec.group);
  w.put(rec.metric);
  put_outcome(w, rec.outcome);
  w.put<int64_t>(static_cast<int64_t>(rec.overrides.size()));
  for (const auto& o : rec.overrides) w.put(o);
}
Record get_record(ByteReader& r) {
  Record rec;
  rec.trial = r.get<int64_t>(), rec.rung = r.get<int64_t>(), rec.budget = r.get<int64_t>();
  rec.bracket = r.get<int64_t>(), rec.parent = r.get<int64_t>(), rec.group = r.get<int64_t>();
  rec.metric = r.get<double>();
  rec.outcome = get_outcome(r);
  const auto n = r.get<int64_t>();
  for (int64_t i = 0; i < n; ++i) rec.overrides.push_back(r.get_string());
  return rec;
}

// Tags on the scheduler's own communicator.
constexpr int kTagRequest = 1;  // group root -> scheduler: the last job's outcome (if any), and a request for the next
constexpr int kTagReply = 2;    // scheduler -> group root: the next job, or done
constexpr int kTagJob = 3;      // group root -> the rest of its group (on the group's communicator)

// World rank 0's scheduler thread: answers every group root's requests until
// each has been told "done". A request that finds no job (only running
// ones could still make a promotion) waits in `idle` and is answered, in
// order of arrival, when a later completion makes one. It never blocks on
// anything but the next request, and a request is all a waiting group sends,
// so it cannot deadlock; "done" goes out only when nothing is running, so
// every group is then waiting for it.
void serve_asha(AshaScheduler& sched, dist::Communicator& comm, int groups, int64_t ranks_per_trial,
                const std::function<void(const Record&)>& on_record) {
  std::deque<int> idle;
  int told_done = 0;
  while (told_done < groups) {
    int from = -1;
    const auto msg = comm.recv_bytes(dist::Communicator::kAnySource, kTagRequest, &from);
    ByteReader r{msg};
    if (r.get<int64_t>() != 0) {
      const auto job = get_job(r);
      const auto rec = sched.report(job, get_outcome(r), from / ranks_per_trial);
      if (on_record) on_record(rec);
    }
    idle.push_back(from);
    while (!idle.empty()) {
      const auto job = sched.next();
      if (job.kind == AshaScheduler::Job::Kind::wait) break;
      ByteWriter w;
      put_job(w, job);
      comm.send_bytes(w.bytes.data(), static_cast<int64_t>(w.bytes.size()), idle.front(), kTagReply);
      idle.pop_front();
      told_done += job.kind == AshaScheduler::Job::Kind::done;
    }
  }
}

SearchResult run_asha(const SearchConfig& s, const TrialRunner& runner, dist::Communicator& world,
                      const std::function<void(const Record&)>& on_record) {
  using Kind = AshaScheduler::Job::Kind;
  const int groups = world.size() / static_cast<int>(s.ranks_per_trial);
  const int group = world.rank() / static_cast<int>(s.ranks_per_trial);
  std::unique_ptr<dist::Communicator> group_comm = world.split(group, world.rank());
  // The scheduler talks on a copy of the world: its messages can never match another's receive.
  std::unique_ptr<dist::Communicator> sched_comm = world.split(0, world.rank());
  const bool group_root = group_comm->rank() == 0;
  const auto overrides = trial_overrides(s);

  AshaScheduler sched(s);  // consulted on world rank 0 only
  std::thread server;
  if (world.rank() == 0 && groups > 1) {
    HPDL_CHECK(world.thread_level() >= MPI_THREAD_SERIALIZED,
               "hpdl tune: method = \"asha\" with {} groups needs MPI_THREAD_SERIALIZED or above (world rank 0 trains "
               "and schedules at once); this MPI granted level {}. Use another MPI build, or method = \"sha\"",
               groups, world.thread_level());
    server = std::thread([&] {
      try {
        serve_asha(sched, *sched_comm, groups, s.ranks_per_trial, on_record);
      } catch (const std::exception& e) {
        world.abort(fmt::format("hpdl tune: asha scheduler: {}", e.what()));
      }
    });
  }
  try {
    // This group's loop: its root reports the last job and gets the next
    // one (from the scheduler thread, or straight from the scheduler when
    // there is one group), then hands it to the rest of the group.
    std::optional<std::pair<AshaScheduler::Job, Outcome>> last;
    for (;;) {
      AshaScheduler::Job job;
      if (group_root) {
        if (groups == 1) {
          if (last) {
            const auto rec = sched.report(last->first, last->second, 0);
            if (on_record) on_record(rec);
          }
          job = sched.next();  // never "wait": the one group's last job has been reported
        } else {
          ByteWriter w;
          w.put<int64_t>(last ? 1 : 0);
          if (last) put_job(w, last->first), put_outcome(w, last->second);
          sched_comm->send_bytes(w.bytes.data(), static_cast<int64_t>(w.bytes.size()), 0, kTagRequest);
          const auto reply = sched_comm->recv_bytes(0, kTagReply);
          ByteReader r{reply};
          job = get_job(r);
        }
        ByteWriter w;
        put_job(w, job);
        for (int m = 1; m < group_comm->size(); ++m)
          group_comm->send_bytes(w.bytes.data(), static_cast<int64_t>(w.bytes.size()), m, kTagJob);
      } else {
        const auto msg = group_comm->recv_bytes(0, kTagJob);
        ByteReader r{msg};
        job = get_job(r);
      }
      HPDL_CHECK(job.kind != Kind::wait, "hpdl tune: asha: the scheduler answered 'wait' to a request");
      if (job.kind == Kind::done) break;
      Outcome o = runner(job.trial, overrides[static_cast<size_t>(job.trial)], job.budget, job.rung > 0, *group_comm);
      last.emplace(job, std::move(o));
    }
  } catch (const std::exception& e) {
    // The scheduler thread would wait for this group forever: end the job.
    if (server.joinable()) world.abort(fmt::format("hpdl tune: asha: {}", e.what()));
    throw;
  }
  if (server.joinable()) server.join();

  // Rank 0 holds every record: every rank gets them, and the same best.
  ByteWriter w;
  if (world.rank() == 0) {
    w.put<int64_t>(static_cast<int64_t>(sched.records().size()));
    for (const auto& rec : sched.records()) put_record(w, rec);
    const auto best = sched.best();
    w.put<int64_t>(best ? 1 : 0);
    if (best) put_record(w, *best);
  }
  int64_t nbytes = static_cast<int64_t>(w.bytes.size());
  world.broadcast_bytes(&nbytes, sizeof(nbytes));
  w.bytes.resize(static_cast<size_t>(nbytes));
  world.broadcast_bytes(w.bytes.data(), nbytes);
  ByteReader r{w.bytes};
  SearchResult result;
  const auto n = r.get<int64_t>();
  for (int64_t i = 0; i < n; ++i) result.records.push_back(get_record(r));
  if (r.get<int64_t>() != 0) result.best = get_record(r);
  result.best_trial = result.best.trial;
  return result;
}

}  // namespace

SearchResult run_search(const SearchConfig& s, const TrialRunner& runner, dist::Communicator& world,
                        const std::function<void(const Record&)>& on_record, const TrialCloner& clone) {
  HPDL_CHECK(world.size() % s.ranks_per_trial == 0, "hpdl tune: {} ranks do not split into groups of ranks_per_trial = {}",
             world.size(), s.ranks_per_trial);
  HPDL_CHECK(s.method != "pbt" || clone, "hpdl tune: method = \"pbt\" needs a TrialCloner");
  if (s.method == "asha") return run_asha(s, runner, world, on_record);
  const int groups = world.size() / static_cast<int>(s.ranks_per_trial);
  const int group = world.rank() / static_cast<int>(s.ranks_per_trial);
  std::unique_ptr<dist::Communicator> group_comm = world.split(group, world.rank());
  const bool group_root = group_comm->rank() == 0;

  std::vector<std::vector<std::string>> all = trial_overrides(s);  // pbt rewrites them between generations
  std::vector<int64_t> parent(all.size(), -1);
  const auto plan = brackets(s);
  const bool lower_better = lower_is_better(s);
  auto better = [&](const Record& a, const Record& b) {
    return ranks_before(lower_better, a.metric, a.trial, b.metric, b.trial);
  };

  SearchResult result;
  bool have_best = false;
  for (size_t b = 0; b < plan.size(); ++b) {
    const Bracket& bracket = plan[b];
    std::vector<int64_t> alive(static_cast<size_t>(bracket.trials));
    for (size_t i = 0; i < alive.size(); ++i) alive[i] = bracket.first_trial + static_cast<int64_t>(i);
    for (size_t r = 0; r < bracket.rungs.size(); ++r) {
      // This group's share of the rung: trials i, i + groups, ... of the alive list.
      // ok, seconds, val accuracy, val loss, test accuracy, test loss, val rmse, mae, r2, test rmse, mae, r2
      constexpr int kFields = 12;
      std::vector<double> table(alive.size() * kFields, 0.0);
      std::vector<std::string> errors(alive.size());
      for (size_t i = static_cast<size_t>(group); i < alive.size(); i += static_cast<size_t>(groups)) {
        const int64_t id = alive[i];
        Outcome o = runner(id, all[id], bracket.rungs[r].budget, r > 0, *group_comm);
        if (group_root) {
          double* row = table.data() + i * kFields;
          row[0] = o.ok ? 1 : 0;
          row[1] = o.seconds;
          row[2] = o.val_accuracy, row[3] = o.val_loss, row[4] = o.test_accuracy, row[5] = o.test_loss;
          row[6] = o.val_rmse, row[7] = o.val_mae, row[8] = o.val_r2;
          row[9] = o.test_rmse, row[10] = o.test_mae, row[11] = o.test_r2;
          errors[i] = o.error;
        }
      }
      // Each row is filled by exactly one rank (its group's first): a sum gathers them.
      world.allreduce(table.data(), static_cast<int64_t>(table.size()), DType::f64);
      std::vector<Record> rung_records;
      for (size_t i = 0; i < alive.size(); ++i) {
        const double* row = table.data() + i * kFields;
        Record rec;
        rec.trial = alive[i];
        rec.rung = static_cast<int64_t>(r);
        rec.bracket = static_cast<int64_t>(b);
        rec.parent = parent[alive[i]];
        rec.budget = bracket.rungs[r].budget;
        rec.overrides = all[alive[i]];
        rec.outcome.ok = row[0] > 0.5;
        rec.outcome.seconds = row[1];
        rec.outcome.val_accuracy = row[2], rec.outcome.val_loss = row[3];
        rec.outcome.test_accuracy = row[4], rec.outcome.test_loss = row[5];
        rec.outcome.val_rmse = row[6], rec.outcome.val_mae = row[7], rec.outcome.val_r2 = row[8];
        rec.outcome.test_rmse = row[9], rec.outcome.test_mae = row[10], rec.outcome.test_r2 = row[11];
        if (!rec.outcome.ok) rec.outcome.error = errors[i].empty() ? "failed (see its train.log)" : errors[i];
        rec.metric = metric_value(s, rec.outcome);
        rung_records.push_back(rec);
        parent[alive[i]] = -1;
      }
      std::sort(rung_records.begin(), rung_records.end(), better);
      for (const auto& rec : rung_records) {
        if (world.rank() == 0 && on_record) on_record(rec);
        result.records.push_back(rec);
      }
      if (r + 1 == bracket.rungs.size()) {
        if (!have_best || better(rung_records.front(), result.best)) result.best = rung_records.front();
        have_best = true;
      } else if (s.method == "pbt") {
        // Exploit and explore: the worst k take over a random one of the best k and perturb its
        // hyperparameters. The generator is seeded alike everywhere, so every rank decides the same.
        const int64_t n = static_cast<int64_t>(rung_records.size());
        const int64_t k = std::min(n / 2, std::max<int64_t>(1, static_cast<int64_t>(s.quantile * static_cast<double>(n))));
        std::mt19937_64 gen(s.seed * 0x9E3779B97F4A7C15ULL + r + 1);
        auto taken = [&](const std::vector<std::string>& o) {  // another member already trains with exactly these
          for (const auto& rec : rung_records)
            if (all[rec.trial] == o) return true;
          return false;
        };
        for (int64_t i = n - k; i < n; ++i) {
          const Record& donor = rung_records[static_cast<size_t>(gen() % static_cast<uint64_t>(k))];
          const int64_t loser = rung_records[static_cast<size_t>(i)].trial;
          const uint64_t explore_seed = gen();
          if (!donor.outcome.ok) continue;  // nothing good to copy
          // Two members continuing one donor with the same values would waste one: draw again (a few times).
          std::vector<std::string> next = perturb_overrides(s, all[donor.trial], explore_seed);
          for (uint64_t attempt = 1; attempt < 16 && taken(next); ++attempt)
            next = perturb_overrides(s, all[donor.trial], explore_seed + attempt);
          if (taken(next)) {  // every nearby value is in use (a small space): draw afresh instead
            SearchConfig fresh = s;
            fresh.resample = 1;
            for (uint64_t attempt = 16; attempt < 64 && taken(next); ++attempt)
              next = perturb_overrides(fresh, all[donor.trial], explore_seed + attempt);
          }
          all[loser] = std::move(next);
          parent[loser] = donor.trial;
          if (world.rank() == 0) clone(donor.trial, loser, all[loser]);
        }
        world.barrier();  // the copies are in place before any group resumes from them
      } else {
        alive.clear();
        for (int64_t k = 0; k < bracket.rungs[r + 1].trials && k < static_cast<int64_t>(rung_records.size()); ++k)
          alive.push_back(rung_records[k].trial);
        std::sort(alive.begin(), alive.end());
      }
    }
  }
  result.best_trial = result.best.trial;
  return result;
}

TrialRunner training_runner(const SearchConfig& search) {
  return [search](int64_t trial, const std::vector<std::string>& overrides, int64_t budget, bool resume,
                  dist::Communicator& group) {
    Outcome o;
    const auto t0 = std::chrono::steady_clock::now();
    const auto dir = trial_dir(search, trial);
    std::FILE* log = nullptr;
    try {
      std::vector<std::string> all = search.set;
      all.insert(all.end(), overrides.begin(), overrides.end());
      all.push_back("train.run_dir=" + dir.string());
      all.push_back("train.eval_every_epochs=0");
      // The whole budget's schedule, stopped early: a resumed trial continues the run it began.
      if (search.resource == "epochs") {
        all.push_back(fmt::format("train.epochs={}", search.max_resource));
        all.push_back(fmt::format("train.stop_after_epoch={}", budget < search.max_resource ? budget : 0));
      } else {
        all.push_back(fmt::format("train.max_steps={}", budget));
      }
      train::Config cfg = train::load_config(search.config, all);
      if (group.rank() == 0) {
        std::filesystem::create_directories(dir);
        log = std::fopen((dir / "train.log").c_str(), "a");
      }
      train::TrainerOptions opts;
      opts.comm = &group;
      opts.log = log ? log : stderr;
      train::Trainer trainer(cfg, opts);
      auto summary = trainer.run(resume);
      // Judge the final weights (the checkpoint the run just wrote).
      const train::Objective objective(cfg);
      auto ds = train::load_datasets(cfg.data, objective.targets());
      auto model = train::build_model(cfg, train::make_pipeline(cfg.data, false).output_shape(ds.test->sample_shape()));
      train::load_model_weights(*model, dir);
      // Regression: RMSE, MAE and R^2 beside the loss (accuracy stays -1, absent).
      auto regression_metrics = [&](const train::EvalResult& r, double& rmse, double& mae, double& r2) {
        if (!objective.regression()) return;
        rmse = r.metrics.at("rmse"), mae = r.metrics.at("mae"), r2 = r.metrics.at("r2");
      };
      if (ds.validation) {
        auto v = train::evaluate(*model, ds.validation, cfg.data, &group, &objective);
        o.val_accuracy = v.accuracy, o.val_loss = v.loss;
        regression_metrics(v, o.val_rmse, o.val_mae, o.val_r2);
      }
      // Selecting on validation, the test set is read only at the full budget: a partial
      // trial's test score would inform nothing and costs an evaluation.
      bool finite = std::isfinite(summary.final_train_loss);
      const bool selects_on_validation = search.metric.rfind("val_", 0) == 0 && ds.validation;
      if (!selects_on_validation || budget >= search.max_resource) {
        auto t = train::evaluate(*model, ds.test, cfg.data, &group, &objective);
        o.test_accuracy = t.accuracy, o.test_loss = t.loss;
        regression_metrics(t, o.test_rmse, o.test_mae, o.test_r2);
        finite = finite && std::isfinite(t.loss);
      } else {
        finite = finite && std::isfinite(o.val_loss);
      }
      if (!finite) {
        o.ok = false;
        o.error = fmt::format("diverged (final training loss {})", summary.final_train_loss);
      }
    } catch (const std::exception& e) {
      o.ok = false;
      o.error = e.what();
      if (log) std::fprintf(log, "hpdl tune: trial %lld failed: %s\n", static_cast<long long>(trial), e.what());
    }
    if (log) std::fclose(log);
    o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return o;
  };
}

}  // namespace hpdl::tune

namespace hpdl::tune {

TrialCloner checkpoint_cloner(const SearchConfig& search) {
  return [search](int64_t from, int64_t to, const std::vector<std::string>& new_overrides) {
    namespace fs = std::filesystem;
    const fs::path src_dir = trial_dir(search, from), dst_dir = trial_dir(search, to);
    train::CheckpointManager src(src_dir);
    const auto info = src.latest_valid();
    HPDL_CHECK(info.has_value(), "hpdl tune: pbt: trial {} has no valid checkpoint in {} for trial {} to take over",
               from, (src_dir / "checkpoints").string(), to);
    const fs::path dst = dst_dir / "checkpoints";
    fs::create_directories(dst);
    // Sidecars first: a tensors file without its sidecar is no checkpoint, so
    // an interruption here leaves trial `to` with fewer checkpoints, never a mixed one.
    std::vector<fs::path> sidecars, others;
    for (const auto& e : fs::directory_iterator(dst)) (e.path().extension() == ".json" ? sidecars : others).push_back(e.path());
    for (const auto& p : sidecars) fs::remove(p);
    for (const auto& p : others) fs::remove(p);
    for (const fs::path& p : {info->tensors_path, info->sidecar_path}) {
      const auto bytes = io::read_file(p);
      io::write_file_atomic(dst / p.filename(), bytes.data(), bytes.size());
    }
    if (std::FILE* log = std::fopen((dst_dir / "train.log").c_str(), "a")) {
      std::string o;
      for (const auto& x : new_overrides) o += " " + x;
      std::fprintf(log, "hpdl tune: pbt: took over trial %lld's checkpoint %s; continuing with%s\n",
                   static_cast<long long>(from), info->sidecar_path.filename().c_str(), o.c_str());
      std::fclose(log);
    }
  };
}

}  // namespace hpdl::tune
