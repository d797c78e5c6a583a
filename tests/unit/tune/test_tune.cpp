// The search file, the sampled trials, the rung plan and successive halving's
// selection, with a made-up objective in place of training (the CLI test
// trains for real).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "hpdl/core/error.h"
#include "hpdl/tune/tune.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

// A search file next to a minimal training config, in a fresh directory.
struct SearchDir {
  std::filesystem::path dir;
  explicit SearchDir(const std::string& name) : dir(test::temp_dir(name)) {
    test::write_text(dir / "train.toml", "[model]\nname = \"mlp\"\n[train]\nepochs = 4\n[data]\nvalidation = 100\n");
  }
  tune::SearchConfig parse(const std::string& body, const std::vector<std::string>& overrides = {}) const {
    return tune::parse_search("config = \"train.toml\"\n" + body, dir / "search.toml", overrides);
  }
};

const char* kSpace = R"(
[space]
"optimizer.lr" = { log_uniform = [0.001, 1.0] }
"optimizer.momentum" = { uniform = [0.5, 0.9] }
"data.batch_size" = { int_uniform = [16, 19] }
"optimizer.name" = { choice = ["sgd", "adamw"] }
)";

double value_of(const std::vector<std::string>& overrides, const std::string& key) {
  for (const auto& o : overrides)
    if (o.rfind(key + "=", 0) == 0) return std::stod(o.substr(key.size() + 1));
  ADD_FAILURE() << "no " << key;
  return 0;
}

TEST(TuneTest, SamplesAreInTheirRangesAndFollowTheSeed) {
  SearchDir d("tune_samples");
  auto s = d.parse("trials = 400\nseed = 5\n" + std::string(kSpace));
  EXPECT_EQ(s.config, d.dir / "train.toml");
  EXPECT_EQ(s.max_resource, 4) << "the full budget defaults to the training config's epochs";
  auto trials = tune::trial_overrides(s);
  ASSERT_EQ(trials.size(), 400u);
  int below_geometric_mid = 0;
  std::set<int64_t> batches;
  std::map<std::string, int> names;
  for (const auto& t : trials) {
    const double lr = value_of(t, "optimizer.lr"), m = value_of(t, "optimizer.momentum");
    EXPECT_GE(lr, 0.001);
    EXPECT_LE(lr, 1.0);
    EXPECT_GE(m, 0.5);
    EXPECT_LE(m, 0.9);
    below_geometric_mid += lr < std::sqrt(0.001);
    batches.insert(static_cast<int64_t>(value_of(t, "data.batch_size")));
    for (const auto& o : t)
      if (o.rfind("optimizer.name=", 0) == 0) names[o]++;
  }
  // Log-uniform: half the samples below the geometric middle (a uniform draw would put 3% there).
  EXPECT_NEAR(below_geometric_mid, 200, 40);
  EXPECT_EQ(batches, (std::set<int64_t>{16, 17, 18, 19})) << "int_uniform includes both ends";
  EXPECT_EQ(names.size(), 2u);
  EXPECT_EQ(names["optimizer.name=\"sgd\""] + names["optimizer.name=\"adamw\""], 400);

  EXPECT_EQ(tune::trial_overrides(s), trials) << "the same seed gives the same trials";
  auto other = d.parse("trials = 400\nseed = 6\n" + std::string(kSpace));
  EXPECT_NE(tune::trial_overrides(other), trials);
}

TEST(TuneTest, GridIsTheProductOfTheChoices) {
  SearchDir d("tune_grid");
  auto s = d.parse("method = \"grid\"\n[space]\n\"optimizer.lr\" = { choice = [0.1, 0.01] }\n"
                   "\"data.batch_size\" = { choice = [32, 64, 128] }\n");
  auto trials = tune::trial_overrides(s);
  ASSERT_EQ(trials.size(), 6u);
  std::set<std::vector<std::string>> unique(trials.begin(), trials.end());
  EXPECT_EQ(unique.size(), 6u);
  EXPECT_EQ(tune::rungs(s, 6).size(), 1u);
  EXPECT_EQ(tune::rungs(s, 6)[0].budget, 4);
}

TEST(TuneTest, SuccessiveHalvingRungs) {
  SearchDir d("tune_rungs");
  auto s = d.parse("method = \"sha\"\nmin_resource = 1\nmax_resource = 9\neta = 3\n" + std::string(kSpace));
  auto r = tune::rungs(s, 9);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].budget, 1);
  EXPECT_EQ(r[0].trials, 9);
  EXPECT_EQ(r[1].budget, 3);
  EXPECT_EQ(r[1].trials, 3);
  EXPECT_EQ(r[2].budget, 9);
  EXPECT_EQ(r[2].trials, 1);
  auto s2 = d.parse("method = \"sha\"\nresource = \"steps\"\nmin_resource = 20\nmax_resource = 50\neta = 2\n" +
                    std::string(kSpace));
  auto r2 = tune::rungs(s2, 5);
  ASSERT_EQ(r2.size(), 3u);
  EXPECT_EQ(r2[1].budget, 40);
  EXPECT_EQ(r2[1].trials, 2);
  EXPECT_EQ(r2[2].budget, 50) << "the last rung is capped at max_resource";
  EXPECT_EQ(r2[2].trials, 1);
}

// The objective peaks at lr = 0.03 and grows with the budget: successive
// halving must end with the trial nearest the peak, having trained only the
// promoted trials further, each resumed.
TEST(TuneTest, SuccessiveHalvingKeepsTheBestAndResumesThem) {
  SearchDir d("tune_sha");
  auto s = d.parse("method = \"sha\"\ntrials = 9\nseed = 2\nmin_resource = 1\nmax_resource = 9\neta = 3\n" +
                   std::string(kSpace));
  const auto trials = tune::trial_overrides(s);
  auto distance = [&](int64_t t) { return std::abs(std::log(value_of(trials[t], "optimizer.lr") / 0.03)); };
  int64_t nearest = 0;
  for (int64_t t = 1; t < 9; ++t)
    if (distance(t) < distance(nearest)) nearest = t;
  std::map<int64_t, std::vector<std::pair<int64_t, bool>>> calls;  // trial -> (budget, resume)
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>& o, int64_t budget, bool resume,
                                 dist::Communicator& group) {
    EXPECT_EQ(group.size(), 1);
    EXPECT_EQ(o, trials[trial]);
    calls[trial].push_back({budget, resume});
    tune::Outcome out;
    out.val_accuracy = 1.0 - 0.1 * distance(trial) - 0.5 / static_cast<double>(budget);
    out.test_accuracy = out.val_accuracy - 0.01;
    return out;
  };
  std::vector<tune::Record> seen;
  auto result = tune::run_search(s, runner, dist::Communicator::world(), [&](const tune::Record& r) { seen.push_back(r); });
  EXPECT_EQ(result.best_trial, nearest);
  EXPECT_EQ(result.records.size(), 9u + 3u + 1u);
  EXPECT_EQ(seen.size(), result.records.size());
  ASSERT_EQ(calls[nearest].size(), 3u);
  EXPECT_EQ(calls[nearest][0], std::make_pair(int64_t{1}, false));
  EXPECT_EQ(calls[nearest][1], std::make_pair(int64_t{3}, true));
  EXPECT_EQ(calls[nearest][2], std::make_pair(int64_t{9}, true));
  int promoted = 0;
  for (const auto& [t, c] : calls) promoted += c.size() >= 2;
  EXPECT_EQ(promoted, 3);
  // Records of a rung come best first.
  for (size_t i = 1; i < 9; ++i) EXPECT_GE(result.records[i - 1].metric, result.records[i].metric);
}

TEST(TuneTest, FailedTrialsRankLastAndAreNotPromoted) {
  SearchDir d("tune_failed");
  auto s = d.parse("method = \"sha\"\ntrials = 4\nmin_resource = 1\nmax_resource = 2\neta = 2\nmetric = \"val_loss\"\n" +
                   std::string(kSpace));
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>&, int64_t, bool, dist::Communicator&) {
    tune::Outcome out;
    out.val_loss = 0.1 * static_cast<double>(trial);  // trial 0 is the best (lowest loss) ...
    if (trial == 0) out.ok = false, out.error = "diverged";  // ... but it fails
    return out;
  };
  auto result = tune::run_search(s, runner, dist::Communicator::world());
  ASSERT_EQ(result.records.size(), 4u + 2u);
  EXPECT_EQ(result.records[3].trial, 0);
  EXPECT_FALSE(result.records[3].outcome.ok);
  EXPECT_EQ(result.records[3].outcome.error, "diverged");
  EXPECT_TRUE(std::isnan(result.records[3].metric));
  EXPECT_EQ(result.records[4].trial, 1) << "the lowest loss among the trials that worked";
  EXPECT_EQ(result.records[5].trial, 2);
  EXPECT_EQ(result.best_trial, 1);
}


// Hyperband's brackets for max/min = 9, eta = 3 (Li et al.'s table for R = 9):
// 9 trials from 1 epoch, 5 from 3, 3 at 9.
TEST(TuneTest, HyperbandBracketsFollowThePaper) {
  SearchDir d("tune_hyperband_plan");
  auto s = d.parse("method = \"hyperband\"\nmin_resource = 1\nmax_resource = 9\neta = 3\n" + std::string(kSpace),
                   {"train.epochs=9"});
  const auto b = tune::brackets(s);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0].first_trial, 0);
  EXPECT_EQ(b[0].trials, 9);
  ASSERT_EQ(b[0].rungs.size(), 3u);
  EXPECT_EQ(b[0].rungs[0].budget, 1);
  EXPECT_EQ(b[0].rungs[1].budget, 3);
  EXPECT_EQ(b[0].rungs[1].trials, 3);
  EXPECT_EQ(b[0].rungs[2].budget, 9);
  EXPECT_EQ(b[0].rungs[2].trials, 1);
  EXPECT_EQ(b[1].first_trial, 9);
  EXPECT_EQ(b[1].trials, 5);
  ASSERT_EQ(b[1].rungs.size(), 2u);
  EXPECT_EQ(b[1].rungs[0].budget, 3);
  EXPECT_EQ(b[1].rungs[1].budget, 9);
  EXPECT_EQ(b[1].rungs[1].trials, 1);
  EXPECT_EQ(b[2].first_trial, 14);
  EXPECT_EQ(b[2].trials, 3);
  ASSERT_EQ(b[2].rungs.size(), 1u);
  EXPECT_EQ(b[2].rungs[0].budget, 9);
  EXPECT_EQ(tune::trial_overrides(s).size(), 17u) << "distinct samples for every bracket's trials";
  // A ratio that is no power of eta: s_max = floor(log_3(10)) = 2, the last rung of each is max.
  auto s2 = d.parse("method = \"hyperband\"\nmin_resource = 1\nmax_resource = 10\neta = 3\n" + std::string(kSpace),
                    {"train.epochs=10"});
  const auto b2 = tune::brackets(s2);
  ASSERT_EQ(b2.size(), 3u);
  for (const auto& br : b2) EXPECT_EQ(br.rungs.back().budget, 10);
  EXPECT_EQ(b2[1].rungs[0].budget, 3) << "10 / 3 epochs, rounded down";
}

// Every bracket runs its own trials from scratch, halving within the bracket;
// the best is taken over the brackets' last rungs.
TEST(TuneTest, HyperbandRunsEveryBracket) {
  SearchDir d("tune_hyperband_run");
  auto s = d.parse("method = \"hyperband\"\nseed = 3\nmin_resource = 1\nmax_resource = 9\neta = 3\n" +
                   std::string(kSpace), {"train.epochs=9"});
  const auto trials = tune::trial_overrides(s);
  auto distance = [&](int64_t t) { return std::abs(std::log(value_of(trials[t], "optimizer.lr") / 0.03)); };
  std::map<int64_t, std::vector<std::pair<int64_t, bool>>> calls;
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>&, int64_t budget, bool resume,
                                 dist::Communicator&) {
    calls[trial].push_back({budget, resume});
    tune::Outcome out;
    out.val_accuracy = 1.0 - 0.1 * distance(trial) - 0.5 / static_cast<double>(budget);
    return out;
  };
  auto result = tune::run_search(s, runner, dist::Communicator::world());
  EXPECT_EQ(result.records.size(), (9u + 3u + 1u) + (5u + 1u) + 3u);
  EXPECT_EQ(calls.size(), 17u) << "every trial of every bracket trained";
  for (const auto& [t, c] : calls) {
    EXPECT_FALSE(c.front().second) << "trial " << t << " starts from scratch";
    const int64_t first_budget = t < 9 ? 1 : t < 14 ? 3 : 9;
    EXPECT_EQ(c.front().first, first_budget) << "trial " << t;
    for (size_t i = 1; i < c.size(); ++i) EXPECT_TRUE(c[i].second) << "promotions resume";
  }
  for (const auto& r : result.records) EXPECT_EQ(r.bracket, r.trial < 9 ? 0 : r.trial < 14 ? 1 : 2);
  // The best: the finalist (at 9 epochs) nearest lr = 0.03 among the brackets' winners.
  std::vector<int64_t> finalists;
  for (const auto& r : result.records)
    if (r.budget == 9) finalists.push_back(r.trial);
  ASSERT_EQ(finalists.size(), 1u + 1u + 3u);
  int64_t best = finalists[0];
  for (int64_t t : finalists)
    if (distance(t) < distance(best)) best = t;
  EXPECT_EQ(result.best_trial, best);
}

TEST(TuneTest, PerturbMovesEachKindWithinItsBounds) {
  SearchDir d("tune_perturb");
  auto s = d.parse("method = \"pbt\"\ntrials = 4\nperturb = 1.25\nresample = 0\n" + std::string(kSpace));
  const std::vector<std::string> o = {"optimizer.lr=0.1", "optimizer.momentum=0.8", "data.batch_size=17",
                                      "optimizer.name=\"sgd\"", "train.seed=5"};
  int lr_up = 0, lr_down = 0;
  for (uint64_t seed = 0; seed < 64; ++seed) {
    const auto p = tune::perturb_overrides(s, o, seed);
    ASSERT_EQ(p.size(), o.size());
    EXPECT_EQ(p, tune::perturb_overrides(s, o, seed)) << "deterministic in the seed";
    const double lr = value_of(p, "optimizer.lr");
    EXPECT_TRUE(std::abs(lr - 0.125) < 1e-12 || std::abs(lr - 0.08) < 1e-12) << lr;
    lr_up += lr > 0.1, lr_down += lr < 0.1;
    const double m = value_of(p, "optimizer.momentum");
    EXPECT_TRUE(std::abs(m - 0.9) < 1e-12 || std::abs(m - 0.64) < 1e-12) << "0.8 x 1.25 = 1.0 is capped at 0.9: " << m;
    const double b = value_of(p, "data.batch_size");
    EXPECT_TRUE(b == 19 || b == 16) << "17 x 1.25 = 21 capped at 19, or 17 / 1.25 = 14 raised to 16: " << b;
    EXPECT_EQ(p[3], "optimizer.name=\"adamw\"") << "the only neighbour of the first choice";
    EXPECT_EQ(p[4], "train.seed=5") << "a key outside [space] is left alone";
  }
  EXPECT_GT(lr_up, 10);
  EXPECT_GT(lr_down, 10);
  // A factor too small to change an integer still moves it by one.
  auto fine = d.parse("method = \"pbt\"\ntrials = 4\nperturb = 1.01\nresample = 0\n" + std::string(kSpace));
  for (uint64_t seed = 0; seed < 8; ++seed) {
    const double b = value_of(tune::perturb_overrides(fine, o, seed), "data.batch_size");
    EXPECT_TRUE(b == 18 || b == 16) << b;
  }
  // resample = 1: every value is a fresh draw from its range, not a multiple of the old one.
  auto fresh = d.parse("method = \"pbt\"\ntrials = 4\nresample = 1\n" + std::string(kSpace));
  std::set<std::string> lrs;
  for (uint64_t seed = 0; seed < 32; ++seed) {
    const auto p = tune::perturb_overrides(fresh, o, seed);
    const double lr = value_of(p, "optimizer.lr");
    EXPECT_TRUE(lr >= 0.001 && lr <= 1.0) << lr;
    lrs.insert(p[0]);
    EXPECT_EQ(p[4], "train.seed=5");
  }
  EXPECT_GT(lrs.size(), 25u) << "fresh draws, not two multiples of 0.1";
}

// PBT with a made-up, stateful objective: each generation a member gains more
// the nearer its lr is to 0.03, and its score accumulates (its "weights").
// The worst quarter must take over the state of one of the best quarter
// (the cloner is called with exactly those) and continue with a perturbed lr;
// the population must end better than the same members left alone.
TEST(TuneTest, PopulationBasedTrainingExploitsAndExplores) {
  SearchDir d("tune_pbt");
  auto s = d.parse("method = \"pbt\"\ntrials = 8\nseed = 4\ninterval = 1\nmax_resource = 6\nquantile = 0.25\nresample = 0\n"
                   "resource = \"steps\"\n[space]\n\"optimizer.lr\" = { log_uniform = [0.001, 1.0] }\n");
  const auto initial = tune::trial_overrides(s);
  ASSERT_EQ(initial.size(), 8u);
  auto gain = [](const std::vector<std::string>& o) { return 1.0 - 0.2 * std::abs(std::log(value_of(o, "optimizer.lr") / 0.03)); };
  std::map<int64_t, double> score;  // the members' state
  std::map<int64_t, std::vector<std::string>> current;
  std::vector<std::pair<int64_t, int64_t>> clones;  // (from, to) per generation, in order
  std::vector<size_t> clones_after_generation;
  int generation_calls = 0;
  tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>& o, int64_t budget, bool resume,
                                 dist::Communicator&) {
    EXPECT_EQ(resume, budget > 1) << "every generation after the first resumes";
    current[trial] = o;
    score[trial] += gain(o);
    ++generation_calls;
    tune::Outcome out;
    out.val_accuracy = score[trial];
    return out;
  };
  std::vector<tune::Record> records;
  int fallbacks = 0;
  tune::TrialCloner cloner = [&](int64_t from, int64_t to, const std::vector<std::string>& o) {
    clones.push_back({from, to});
    score[to] = score[from];
    const double x = value_of(current[from], "optimizer.lr"), ratio = value_of(o, "optimizer.lr") / x;
    const bool multiplied = std::abs(ratio - 1.2) < 1e-4 || std::abs(ratio - 1 / 1.2) < 1e-4;
    // Otherwise both neighbours must be in use by members (then a fresh draw keeps the values distinct).
    auto in_use = [&](double v) {
      const std::string text = fmt::format("optimizer.lr={:.6g}", std::clamp(v, 0.001, 1.0));
      for (const auto& [t, ov] : current)
        if (ov[0] == text) return true;
      return false;
    };
    EXPECT_TRUE(multiplied || (in_use(x * 1.2) && in_use(x / 1.2)))
        << "explore multiplies the donor's lr by 1.2 or 1/1.2 while one of them is free: " << ratio;
    fallbacks += !multiplied;
    current[to] = o;  // what `to` trains with from now on
  };
  auto result = tune::run_search(s, runner, dist::Communicator::world(),
                                 [&](const tune::Record& r) { records.push_back(r); }, cloner);
  EXPECT_EQ(generation_calls, 8 * 6);
  ASSERT_EQ(records.size(), 48u);
  EXPECT_EQ(clones.size(), 2u * 5u) << "the worst 2 of 8 after each of the first 5 generations";
  EXPECT_LE(fallbacks, 5) << "most takeovers continue with a multiplied value";
  for (int g = 0; g < 6; ++g) {
    std::set<std::vector<std::string>> distinct;
    for (int i = 0; i < 8; ++i) distinct.insert(records[static_cast<size_t>(8 * g + i)].overrides);
    EXPECT_EQ(distinct.size(), 8u) << "generation " << g << ": two members train with the same values";
  }
  // Each generation's clones go from its best two to its worst two, and the next generation's
  // records name the donor as parent.
  for (int g = 0; g < 5; ++g) {
    std::vector<tune::Record> gen(records.begin() + 8 * g, records.begin() + 8 * (g + 1));
    for (int c = 0; c < 2; ++c) {
      const auto [from, to] = clones[static_cast<size_t>(2 * g + c)];
      EXPECT_TRUE(from == gen[0].trial || from == gen[1].trial) << "generation " << g;
      EXPECT_TRUE(to == gen[6].trial || to == gen[7].trial) << "generation " << g;
      int parents = 0;
      for (int i = 0; i < 8; ++i) {
        const auto& r = records[static_cast<size_t>(8 * (g + 1) + i)];
        if (r.trial == to) {
          EXPECT_EQ(r.parent, from);
          ++parents;
        }
      }
      EXPECT_EQ(parents, 1);
    }
  }
  // Left alone, each member would have 6 x its initial gain.
  double alone_best = -1e9, alone_mean = 0, pbt_mean = 0;
  for (int64_t t = 0; t < 8; ++t) {
    alone_best = std::max(alone_best, 6 * gain(initial[t]));
    alone_mean += 6 * gain(initial[t]) / 8;
    pbt_mean += score[t] / 8;
  }
  EXPECT_GT(pbt_mean, alone_mean + 0.1) << "exploiting the best members lifts the population";
  EXPECT_GE(result.best.metric, alone_best - 1e-9);
  EXPECT_EQ(result.best.rung, 5);
  // Without a cloner PBT is refused.
  EXPECT_NE(test::error_of([&] { tune::run_search(s, runner, dist::Communicator::world()); }).find("needs a TrialCloner"),
            std::string::npos);
}

TEST(TuneTest, BadSearchFilesAreNamed) {
  SearchDir d("tune_bad");
  auto err = [&](const std::string& body, const std::vector<std::string>& o = {}) {
    return test::error_of([&] { d.parse(body, o); });
  };
  std::string e = err("trails = 4\n" + std::string(kSpace));
  EXPECT_NE(e.find("unknown key 'trails' (did you mean 'trials'?)"), std::string::npos) << e;
  EXPECT_NE(e.find("search.toml"), std::string::npos) << e;
  e = err("[space]\n\"optimizer.lrr\" = { uniform = [0.1, 0.2] }\n");
  EXPECT_NE(e.find("space.\"optimizer.lrr\""), std::string::npos) << e;
  EXPECT_NE(e.find("optimizer.lr"), std::string::npos) << "a did-you-mean from the config's keys: " << e;
  e = err("[space]\n\"optimizer.lr\" = { log_uniform = [0.0, 0.2] }\n");
  EXPECT_NE(e.find("low bound must be > 0"), std::string::npos) << e;
  e = err("[space]\n\"optimizer.lr\" = { normal = [0.1, 0.2] }\n");
  EXPECT_NE(e.find("unknown distribution 'normal'"), std::string::npos) << e;
  e = err("[space]\n\"optimizer.lr\" = { uniform = [0.3, 0.2] }\n");
  EXPECT_NE(e.find("low (0.3) must be below high (0.2)"), std::string::npos) << e;
  e = err("[space]\n\"data.batch_size\" = { choice = [32, -1] }\n");
  EXPECT_NE(e.find("space.\"data.batch_size\""), std::string::npos) << "a bad choice is found before training: " << e;
  e = err("method = \"grid\"\n" + std::string(kSpace));
  EXPECT_NE(e.find("needs a choice list for every key"), std::string::npos) << e;
  e = err("method = \"sha\"\nmin_resource = 5\n" + std::string(kSpace));
  EXPECT_NE(e.find("min_resource (5) must be between 1 and max_resource (4)"), std::string::npos) << e;
  e = err("resource = \"steps\"\n" + std::string(kSpace));
  EXPECT_NE(e.find("max_resource is required"), std::string::npos) << e;
  e = err("method = \"bayes\"\n" + std::string(kSpace));
  EXPECT_NE(e.find("method = \"bayes\" is not one of random, grid, sha"), std::string::npos) << e;
  e = err("method = \"pbt\"\ntrials = 1\n" + std::string(kSpace));
  EXPECT_NE(e.find("population of trials >= 2"), std::string::npos) << e;
  e = err("method = \"pbt\"\nquantile = 0.7\n" + std::string(kSpace));
  EXPECT_NE(e.find("quantile must be in (0, 0.5]"), std::string::npos) << e;
  e = err("method = \"pbt\"\nperturb = 1\n" + std::string(kSpace));
  EXPECT_NE(e.find("perturb must be > 1"), std::string::npos) << e;
  e = err("method = \"pbt\"\ninterval = 9\n" + std::string(kSpace));
  EXPECT_NE(e.find("interval (9) must be between 1 and max_resource (4)"), std::string::npos) << e;
  e = err("method = \"pbt\"\nresample = 1.5\n" + std::string(kSpace));
  EXPECT_NE(e.find("resample must be a probability in [0, 1]"), std::string::npos) << e;
  e = err("quantile = \"low\"\n" + std::string(kSpace));
  EXPECT_NE(e.find("quantile must be a number"), std::string::npos) << e;
  e = err(std::string(kSpace), {"trials=many"});
  EXPECT_NE(e.find("'many' is not a number"), std::string::npos) << e;
  e = err("");
  EXPECT_NE(e.find("[space] names no key"), std::string::npos) << e;
  e = err(std::string(kSpace), {"data.validation=0"});
  EXPECT_NE(e.find("metric = \"val_accuracy\" needs a validation set"), std::string::npos) << e;
  EXPECT_NO_THROW(d.parse(std::string(kSpace), {"data.validation=0", "metric=test_accuracy"}));
  // A training key given with --set reaches every trial.
  auto s = d.parse(std::string(kSpace), {"trials=3", "train.threads=1"});
  EXPECT_EQ(s.trials, 3);
  EXPECT_EQ(s.set, std::vector<std::string>{"train.threads=1"});
}

// A regression config (train.loss = mse): the default metric is val_rmse,
// minimized; accuracy is refused by the name of the search key, a regression
// metric on a classifier likewise; `direction` overrides the metric's own.
TEST(TuneTest, RegressionRunsSelectOnRegressionMetrics) {
  SearchDir d("tune_regression_parse");
  test::write_text(d.dir / "reg.toml",
                   "[model]\nname = \"mlp\"\nnum_classes = 2\n[train]\nepochs = 4\nloss = \"mse\"\n"
                   "[data]\nvalidation = 100\n");
  auto parse = [&](const std::string& body) {
    return tune::parse_search("config = \"reg.toml\"\n" + body + kSpace, d.dir / "search.toml");
  };
  auto s = parse("");
  EXPECT_EQ(s.metric, "val_rmse");
  EXPECT_EQ(s.direction, "minimize");
  EXPECT_TRUE(tune::lower_is_better(s));
  auto r2 = parse("metric = \"val_r2\"\n");
  EXPECT_EQ(r2.direction, "maximize");
  EXPECT_FALSE(tune::lower_is_better(r2));
  auto forced = parse("metric = \"test_mae\"\ndirection = \"maximize\"\n");
  EXPECT_EQ(forced.direction, "maximize");
  EXPECT_FALSE(tune::lower_is_better(forced));
  auto classifier = d.parse(std::string(kSpace));
  EXPECT_EQ(classifier.metric, "val_accuracy") << "a classifier keeps its default";
  EXPECT_EQ(classifier.direction, "maximize");

  auto error_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string e = error_of([&] { parse("metric = \"val_accuracy\"\n"); });
  EXPECT_NE(e.find("metric = \"val_accuracy\""), std::string::npos) << e;
  EXPECT_NE(e.find("train.loss = \"mse\""), std::string::npos) << e;
  e = error_of([&] { d.parse("metric = \"val_rmse\"\n" + std::string(kSpace)); });
  EXPECT_NE(e.find("metric = \"val_rmse\" is a regression metric"), std::string::npos) << e;
  e = error_of([&] { parse("direction = \"down\"\n"); });
  EXPECT_NE(e.find("direction = \"down\" is not one of minimize, maximize"), std::string::npos) << e;
  e = error_of([&] { parse("metric = \"val_rsme\"\n"); });
  EXPECT_NE(e.find("metric = \"val_rsme\" is not one of"), std::string::npos) << e;
}

// Successive halving on val_rmse keeps the lowest RMSE at every rung (a
// search that ranked it as an accuracy would keep the worst), and on val_r2
// the highest; the records carry the regression metrics through the
// all-reduce of the results.
TEST(TuneTest, SuccessiveHalvingOnRmsePromotesTheLowest) {
  SearchDir d("tune_regression_sha");
  test::write_text(d.dir / "reg.toml",
                   "[model]\nname = \"mlp\"\nnum_classes = 1\n[train]\nepochs = 4\nloss = \"huber\"\n"
                   "[data]\nvalidation = 100\n");
  for (const char* name : {"val_rmse", "val_r2"}) {
    const std::string metric = name;
    auto s = tune::parse_search("config = \"reg.toml\"\nmethod = \"sha\"\ntrials = 9\nseed = 4\nmin_resource = 1\n"
                                "max_resource = 9\neta = 3\nmetric = \"" + metric + "\"\n" + kSpace,
                                d.dir / "search.toml");
    const auto trials = tune::trial_overrides(s);
    // RMSE grows with the distance from lr = 0.03 and falls with the budget; R^2 = 1 - RMSE^2.
    auto rmse = [&](int64_t t, int64_t budget) {
      return 0.1 + std::abs(std::log(value_of(trials[t], "optimizer.lr") / 0.03)) + 1.0 / static_cast<double>(budget);
    };
    int64_t nearest = 0;
    for (int64_t t = 1; t < 9; ++t)
      if (rmse(t, 1) < rmse(nearest, 1)) nearest = t;
    std::map<int64_t, int64_t> furthest;  // trial -> the largest budget it trained to
    tune::TrialRunner runner = [&](int64_t trial, const std::vector<std::string>&, int64_t budget, bool,
                                   dist::Communicator&) {
      furthest[trial] = std::max(furthest[trial], budget);
      tune::Outcome out;
      out.val_loss = rmse(trial, budget) * rmse(trial, budget);
      out.val_rmse = rmse(trial, budget), out.val_mae = 0.8 * out.val_rmse;
      out.val_r2 = 1 - out.val_loss;
      return out;
    };
    auto result = tune::run_search(s, runner, dist::Communicator::world());
    EXPECT_EQ(result.best_trial, nearest) << metric;
    // Rung 1 holds the 3 lowest-RMSE trials of rung 0.
    std::vector<int64_t> order(9);
    for (int64_t t = 0; t < 9; ++t) order[t] = t;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rmse(a, 1) < rmse(b, 1); });
    for (int64_t k = 0; k < 9; ++k) EXPECT_EQ(furthest[order[k]] >= 3, k < 3) << metric << " trial " << order[k];
    EXPECT_NEAR(result.best.outcome.val_rmse, rmse(nearest, 9), 1e-12);
    EXPECT_NEAR(result.best.outcome.val_mae, 0.8 * rmse(nearest, 9), 1e-12);
    EXPECT_NEAR(result.best.metric, metric == "val_rmse" ? rmse(nearest, 9) : 1 - std::pow(rmse(nearest, 9), 2), 1e-12);
    EXPECT_TRUE(std::isnan(result.best.outcome.test_rmse)) << "no test set was evaluated";
  }
}

// ASHA's promotions follow the direction too: on val_rmse the lowest of the
// top floor(n / eta) is promoted.
TEST(TuneTest, AshaOnRmsePromotesTheLowest) {
  SearchDir d("tune_regression_asha");
  test::write_text(d.dir / "reg.toml",
                   "[model]\nname = \"mlp\"\nnum_classes = 1\n[train]\nepochs = 4\nloss = \"mse\"\n"
                   "[data]\nvalidation = 100\n");
  auto s = tune::parse_search("config = \"reg.toml\"\nmethod = \"asha\"\ntrials = 3\nmin_resource = 1\n"
                              "max_resource = 3\neta = 3\n" + std::string(kSpace), d.dir / "search.toml");
  tune::AshaScheduler sched(s);
  const double rmse[3] = {0.5, 0.2, 0.9};  // trial 1 is the best
  for (int64_t t = 0; t < 3; ++t) {
    const auto job = sched.next();
    ASSERT_EQ(job.kind, tune::AshaScheduler::Job::Kind::run);
    ASSERT_EQ(job.trial, t);
    tune::Outcome o;
    o.val_rmse = rmse[t];
    sched.report(job, o);
  }
  const auto job = sched.next();
  ASSERT_EQ(job.kind, tune::AshaScheduler::Job::Kind::run);
  EXPECT_EQ(job.trial, 1) << "the lowest RMSE is promoted";
  EXPECT_EQ(job.rung, 1);
}

}  // namespace
}  // namespace hpdl
