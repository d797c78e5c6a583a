// The search file, the sampled trials, the rung plan and successive halving's
// selection, with a made-up objective in place of training (the CLI test
// trains for real).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

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

}  // namespace
}  // namespace hpdl
