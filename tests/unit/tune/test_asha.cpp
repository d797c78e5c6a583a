// Asynchronous successive halving: the decision rule against a promotion
// table derived by hand from Li et al. 2020 (Algorithm 2), a simulation of
// several groups with uneven trial costs on a virtual clock (no group idles
// while configurations are left to start, and the best one is found), and a
// whole search through run_search on this process's one group.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <vector>

#include "hpdl/tune/tune.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using Job = tune::AshaScheduler::Job;
using Kind = Job::Kind;

tune::SearchConfig asha_search(int64_t trials, int64_t eta, int64_t min_resource, int64_t max_resource) {
  tune::SearchConfig s;
  s.method = "asha";
  s.trials = trials;
  s.eta = eta;
  s.seed = 7;
  s.min_resource = min_resource;
  s.max_resource = max_resource;
  tune::Param lr;
  lr.key = "optimizer.lr";
  lr.kind = tune::Param::Kind::log_uniform;
  lr.low = 1e-3, lr.high = 1.0;
  tune::Param batch;
  batch.key = "data.batch_size";
  batch.kind = tune::Param::Kind::choice;
  batch.choices = {"16", "32", "64", "128"};
  s.space = {lr, batch};
  return s;
}

tune::Outcome with_accuracy(double a) {
  tune::Outcome o;
  o.val_accuracy = a;
  return o;
}

// "trial@rung", or "wait" / "done": a job in one short word, for readable expectations.
std::string word(const Job& j) {
  if (j.kind == Kind::wait) return "wait";
  if (j.kind == Kind::done) return "done";
  return std::to_string(j.trial) + "@" + std::to_string(j.rung);
}

// One worker, 9 trials, eta 3, rungs at 1, 3, 9. Rung-0 accuracies by trial:
//   t0 .5, t1 .9, t2 .3, t3 .7, t4 .8, t5 .1, t6 .6, t7 .95, t8 .2
// and a promoted trial scores its rung-0 value + 0.01 per rung. The paper's
// rule (promote the best not-yet-promoted of the top floor(n/eta) at the
// highest rung that has one, else start a new trial) gives, by hand:
//   t0, t1, t2 -> rung 0 holds 3: top 1 = t1 -> 1@1
//   1@1 done: rung 1 holds 1 (quota 0); rung 0 top 1 = t1, promoted -> t3
//   t3 (4 results, quota 1) -> t4;  t4 (5, quota 1) -> t5
//   t5 (6 results, quota 2: t1, t4) -> 4@1;  4@1 -> rung 0 quota 2 used -> t6
//   t6 (7, quota 2) -> t7;  t7 (8, quota 2: t7 .95, t1 .9) -> 7@1
//   7@1 (rung 1 holds 3: top 1 = t7 .96) -> 7@2;  7@2 (top rung) -> t8
//   t8 (9, quota 3: t7, t1, t4, all promoted); nothing running -> done
TEST(AshaTest, DecisionRuleFollowsThePaperOnOneWorker) {
  tune::AshaScheduler sched(asha_search(9, 3, 1, 9));
  EXPECT_EQ(sched.budgets(), (std::vector<int64_t>{1, 3, 9}));
  const double rung0[9] = {0.5, 0.9, 0.3, 0.7, 0.8, 0.1, 0.6, 0.95, 0.2};
  std::vector<std::string> jobs;
  for (;;) {
    const Job j = sched.next();
    jobs.push_back(word(j));
    ASSERT_NE(j.kind, Kind::wait) << "one worker: nothing else runs";
    if (j.kind == Kind::done) break;
    EXPECT_EQ(j.budget, sched.budgets()[static_cast<size_t>(j.rung)]);
    sched.report(j, with_accuracy(rung0[j.trial] + 0.01 * static_cast<double>(j.rung)));
    ASSERT_LT(jobs.size(), 40u);
  }
  EXPECT_EQ(jobs, (std::vector<std::string>{"0@0", "1@0", "2@0", "1@1", "3@0", "4@0", "5@0", "4@1", "6@0", "7@0",
                                            "7@1", "7@2", "8@0", "done"}));
  ASSERT_TRUE(sched.best().has_value());
  EXPECT_EQ(sched.best()->trial, 7);
  EXPECT_EQ(sched.best()->rung, 2);
  EXPECT_EQ(sched.records().size(), 13u);
  EXPECT_EQ(sched.next().kind, Kind::done) << "done stays done";
}

// Several workers: while every configuration has started but jobs run, a
// request waits; a completion that fills a rung's quota then promotes.
TEST(AshaTest, WaitsOnlyForRunningJobsThenPromotes) {
  tune::AshaScheduler sched(asha_search(3, 3, 1, 3));
  const Job a = sched.next(), b = sched.next(), c = sched.next();
  EXPECT_EQ(word(a) + " " + word(b) + " " + word(c), "0@0 1@0 2@0");
  EXPECT_EQ(word(sched.next()), "wait") << "3 trials started, 3 running";
  sched.report(b, with_accuracy(0.9));
  EXPECT_EQ(word(sched.next()), "wait") << "1 result at rung 0: quota floor(1/3) = 0";
  sched.report(a, with_accuracy(0.2));
  EXPECT_EQ(word(sched.next()), "wait");
  sched.report(c, with_accuracy(0.5));
  const Job p = sched.next();
  EXPECT_EQ(word(p), "1@1") << "3 results: the best (t1) goes on";
  EXPECT_EQ(p.budget, 3);
  EXPECT_EQ(word(sched.next()), "wait");
  sched.report(p, with_accuracy(0.95));
  EXPECT_EQ(word(sched.next()), "done");
  EXPECT_THROW(sched.report(p, with_accuracy(0.95)), Error) << "a job reported twice";
}

// Too few trials to fill a quota (2 < eta): at the drain's end the best
// successful trial is promoted rung by rung, so one reaches the full budget;
// a failed trial is never promoted, even when it is the only one left.
TEST(AshaTest, DrainPromotesTheBestSoOneTrialReachesTheTop) {
  tune::AshaScheduler sched(asha_search(2, 3, 1, 9));
  Job a = sched.next(), b = sched.next();
  sched.report(a, with_accuracy(0.4));
  sched.report(b, with_accuracy(0.6));
  EXPECT_EQ(word(sched.next()), "1@1");
  sched.report({Kind::run, 1, 1, 3}, with_accuracy(0.7));
  EXPECT_EQ(word(sched.next()), "1@2");
  sched.report({Kind::run, 1, 2, 9}, with_accuracy(0.8));
  EXPECT_EQ(word(sched.next()), "done");
  EXPECT_EQ(sched.best()->trial, 1);
  EXPECT_EQ(sched.best()->budget, 9);

  tune::AshaScheduler failing(asha_search(2, 3, 1, 9));
  a = failing.next(), b = failing.next();
  tune::Outcome bad;
  bad.ok = false;
  failing.report(a, bad);
  failing.report(b, with_accuracy(0.6));
  EXPECT_EQ(word(failing.next()), "1@1");
  failing.report({Kind::run, 1, 1, 3}, bad);
  // Trial 1 failed at rung 1 and trial 0 at rung 0: no successful trial is
  // left to promote, so the search ends rather than promote a failure.
  EXPECT_EQ(word(failing.next()), "done");
}

// Uneven costs on a virtual clock: G groups, each job costs budget x the
// trial's batch size / 16 time units. A group that asks and gets "wait"
// idles until the next completion. The objective is best at lr = 0.03 and
// grows with the budget (the same ranking at every budget).
struct Sim {
  int64_t jobs = 0, waits_before_all_started = 0;
  std::vector<int64_t> jobs_per_group;
  std::vector<double> busy;
  double makespan = 0;
};

double cost_of(const std::vector<std::string>& o) {
  for (const auto& x : o)
    if (x.rfind("data.batch_size=", 0) == 0) return std::stod(x.substr(16)) / 16.0;
  return 1;
}
double lr_of(const std::vector<std::string>& o) {
  for (const auto& x : o)
    if (x.rfind("optimizer.lr=", 0) == 0) return std::stod(x.substr(13));
  return 0;
}
double objective(const std::vector<std::string>& o, int64_t budget) {
  return 1.0 - 0.1 * std::abs(std::log(lr_of(o) / 0.03)) - 0.5 / static_cast<double>(budget);
}

Sim simulate_asha(tune::AshaScheduler& sched, const std::vector<std::vector<std::string>>& trials, int groups) {
  Sim sim;
  sim.jobs_per_group.assign(static_cast<size_t>(groups), 0);
  sim.busy.assign(static_cast<size_t>(groups), 0.0);
  struct Running {
    double end;
    int group;
    Job job;
  };
  std::vector<Running> running;
  std::vector<int> idle;
  for (int g = 0; g < groups; ++g) idle.push_back(g);
  double now = 0;
  for (int guard = 0; guard < 10000; ++guard) {
    // Hand out jobs to the idle groups, in order of arrival.
    while (!idle.empty()) {
      const Job j = sched.next();
      if (j.kind == Kind::wait) {
        if (sched.started() < static_cast<int64_t>(trials.size())) ++sim.waits_before_all_started;
        break;
      }
      if (j.kind == Kind::done) return sim;  // done is given only when nothing runs
      // A promoted trial resumes: it trains only from the rung below's budget on.
      const int64_t before = j.rung > 0 ? sched.budgets()[static_cast<size_t>(j.rung - 1)] : 0;
      const double d = static_cast<double>(j.budget - before) * cost_of(trials[static_cast<size_t>(j.trial)]);
      running.push_back({now + d, idle.front(), j});
      sim.busy[static_cast<size_t>(idle.front())] += d;
      ++sim.jobs_per_group[static_cast<size_t>(idle.front())];
      ++sim.jobs;
      idle.erase(idle.begin());
    }
    // The next completion (ties: the lower group first).
    auto it = std::min_element(running.begin(), running.end(), [](const Running& a, const Running& b) {
      return a.end != b.end ? a.end < b.end : a.group < b.group;
    });
    if (it == running.end()) break;
    now = it->end;
    sim.makespan = std::max(sim.makespan, now);
    sched.report(it->job, with_accuracy(objective(trials[static_cast<size_t>(it->job.trial)], it->job.budget)), it->group);
    idle.push_back(it->group);
    running.erase(it);
  }
  ADD_FAILURE() << "the simulation did not end";
  return sim;
}

// Synchronous successive halving on the same clock: rung by rung, trials
// i, i + G, ... of each rung on group i, every group waiting for the rung's
// slowest. Returns the makespan and the groups' busy time.
std::pair<double, double> simulate_sha(const tune::SearchConfig& s, const std::vector<std::vector<std::string>>& trials, int groups) {
  std::vector<int64_t> alive(trials.size());
  for (size_t i = 0; i < alive.size(); ++i) alive[i] = static_cast<int64_t>(i);
  double total = 0, work = 0;
  tune::SearchConfig sha = s;
  sha.method = "sha";
  for (const auto& rung : tune::rungs(sha, static_cast<int64_t>(trials.size()))) {
    std::vector<double> per_group(static_cast<size_t>(groups), 0.0);
    const int64_t before = rung.budget == sha.min_resource ? 0 : rung.budget / sha.eta;  // resumed: only the rest
    for (size_t i = 0; i < alive.size(); ++i)
      per_group[i % static_cast<size_t>(groups)] +=
          static_cast<double>(rung.budget - before) * cost_of(trials[static_cast<size_t>(alive[i])]);
    total += *std::max_element(per_group.begin(), per_group.end());
    for (double w : per_group) work += w;
    std::vector<int64_t> next = alive;
    std::sort(next.begin(), next.end(), [&](int64_t a, int64_t b) {
      return objective(trials[static_cast<size_t>(a)], rung.budget) > objective(trials[static_cast<size_t>(b)], rung.budget);
    });
    next.resize(std::min(next.size(), static_cast<size_t>(std::max<int64_t>(1, rung.trials / sha.eta))));
    alive = next;
  }
  return {total, work};
}

TEST(AshaTest, UnevenCostsKeepEveryGroupBusyAndFindTheBest) {
  const int groups = 3;
  auto s = asha_search(27, 3, 1, 9);
  const auto trials = tune::trial_overrides(s);
  int64_t nearest = 0;
  for (size_t t = 1; t < trials.size(); ++t)
    if (std::abs(std::log(lr_of(trials[t]) / 0.03)) < std::abs(std::log(lr_of(trials[static_cast<size_t>(nearest)]) / 0.03)))
      nearest = static_cast<int64_t>(t);
  std::map<double, int> costs;
  for (const auto& t : trials) costs[cost_of(t)]++;
  ASSERT_GE(costs.size(), 3u) << "the sample should mix cheap and costly trials";

  tune::AshaScheduler sched(s);
  const Sim sim = simulate_asha(sched, trials, groups);
  // No group ever asked in vain while configurations were left to start.
  EXPECT_EQ(sim.waits_before_all_started, 0);
  EXPECT_EQ(sched.started(), 27);
  for (int g = 0; g < groups; ++g) EXPECT_GT(sim.jobs_per_group[static_cast<size_t>(g)], 5) << "group " << g;
  EXPECT_EQ(sim.jobs, static_cast<int64_t>(sched.records().size()));
  // Each promoted job's trial had finished the rung below first.
  std::map<std::pair<int64_t, int64_t>, bool> seen;
  for (const auto& r : sched.records()) {
    if (r.rung > 0) {
      EXPECT_TRUE(seen.count({r.trial, r.rung - 1})) << "trial " << r.trial << " rung " << r.rung;
    }
    seen[{r.trial, r.rung}] = true;
  }
  ASSERT_TRUE(sched.best().has_value());
  EXPECT_EQ(sched.best()->trial, nearest);
  EXPECT_EQ(sched.best()->budget, 9);
  // Groups stay busier than under synchronous halving on the same clock,
  // whose groups wait at every rung for the slowest. (ASHA trains more in
  // all, promoting early; whether it also ends sooner depends on the costs.)
  const auto [sha_makespan, sha_work] = simulate_sha(s, trials, groups);
  double busy = 0;
  for (double b : sim.busy) busy += b;
  const double asha_use = busy / (groups * sim.makespan), sha_use = sha_work / (groups * sha_makespan);
  std::printf("simulated: asha makespan %.1f, busy %.3f, jobs per group %lld %lld %lld; sha makespan %.1f, busy %.3f\n",
              sim.makespan, asha_use, static_cast<long long>(sim.jobs_per_group[0]),
              static_cast<long long>(sim.jobs_per_group[1]), static_cast<long long>(sim.jobs_per_group[2]), sha_makespan,
              sha_use);
  EXPECT_GT(asha_use, sha_use);
  EXPECT_GT(asha_use, 0.9) << "only the drain's last jobs leave groups idle";
}

// The same search through run_search: this process is one group of one
// rank, the runner a made-up objective. Promoted trials resume; the best is
// the trial nearest the objective's peak, at the full budget.
TEST(AshaTest, RunSearchOnOneGroupFindsTheBestAndResumes) {
  auto s = asha_search(9, 3, 1, 9);
  const auto trials = tune::trial_overrides(s);
  int64_t nearest = 0;
  for (size_t t = 1; t < trials.size(); ++t)
    if (std::abs(std::log(lr_of(trials[t]) / 0.03)) < std::abs(std::log(lr_of(trials[static_cast<size_t>(nearest)]) / 0.03)))
      nearest = static_cast<int64_t>(t);
  std::map<int64_t, std::vector<std::pair<int64_t, bool>>> calls;
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>& o, int64_t budget, bool resume,
                                 dist::Communicator& group) {
    EXPECT_EQ(group.size(), 1);
    EXPECT_EQ(o, trials[static_cast<size_t>(trial)]);
    calls[trial].push_back({budget, resume});
    return with_accuracy(objective(o, budget));
  };
  std::vector<tune::Record> seen;
  auto result = tune::run_search(s, runner, dist::Communicator::world(), [&](const tune::Record& r) { seen.push_back(r); });
  EXPECT_EQ(result.best_trial, nearest);
  EXPECT_EQ(result.best.budget, 9);
  EXPECT_EQ(seen.size(), result.records.size());
  ASSERT_EQ(calls[nearest].size(), 3u);
  EXPECT_EQ(calls[nearest][0], std::make_pair(int64_t{1}, false));
  EXPECT_EQ(calls[nearest][1], std::make_pair(int64_t{3}, true));
  EXPECT_EQ(calls[nearest][2], std::make_pair(int64_t{9}, true));
  EXPECT_EQ(calls.size(), 9u) << "every configuration started";
  for (const auto& r : result.records) EXPECT_EQ(r.group, 0);
}

TEST(AshaTest, SearchFileAcceptsAsha) {
  auto d = test::temp_dir("tune_asha_parse");
  test::write_text(d / "train.toml", "[model]\nname = \"mlp\"\n[train]\nepochs = 4\n[data]\nvalidation = 100\n");
  auto s = tune::parse_search("config = \"train.toml\"\nmethod = \"asha\"\ntrials = 5\nmin_resource = 1\neta = 2\n"
                              "[space]\n\"optimizer.lr\" = { log_uniform = [0.001, 1.0] }\n",
                              d / "search.toml");
  EXPECT_EQ(s.method, "asha");
  auto r = tune::rungs(s, 5);
  ASSERT_EQ(r.size(), 3u) << "sha's rungs: 1, 2, 4";
  EXPECT_EQ(r[2].budget, 4);
  EXPECT_NE(test::error_of([&] { tune::AshaScheduler bad(tune::SearchConfig{}); }).find("not \"asha\""),
            std::string::npos);
}

}  // namespace
}  // namespace hpdl
