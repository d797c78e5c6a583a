// CheckpointManager (keeps the last k, falls back past a corrupt or truncated
// newest checkpoint, treats a missing sidecar as no checkpoint), the metrics
// writer and the progress line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "hpdl/core/error.h"
#include "hpdl/train/checkpoint.h"
#include "hpdl/train/metrics.h"
#include "hpdl/train/progress.h"
#include "tests/unit/test_util.h"

namespace fs = std::filesystem;
using namespace hpdl::test;
using namespace hpdl;
using namespace hpdl::train;

namespace {

std::map<std::string, Tensor> state(float v) {
  return {{"model.w", Tensor::full({3, 4}, v)}, {"optim.w.momentum", Tensor::full({3, 4}, -v)},
          {"optim.step", Tensor::from_vector<int64_t>({static_cast<int64_t>(v)}, {1})}};
}

CheckpointMeta meta(int64_t step) {
  CheckpointMeta m;
  m.step = step;
  m.epoch = step / 10;
  m.sampler_position = step * 32;
  m.rng = {{"init", 42, static_cast<uint64_t>(step) * 100}, {"dropout", 7, 3}};
  m.config = {{"train", {{"seed", 42}}}};
  return m;
}

void mangle(const fs::path& p, bool truncate) {
  std::string bytes;
  {
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  if (truncate) bytes.resize(bytes.size() / 2);
  else bytes[bytes.size() - 3] ^= 0x01;
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace

TEST(Checkpoint, SaveLoadAndSidecarFields) {
  fs::path run = temp_dir("ck");
  CheckpointManager m(run, 3);
  m.save(meta(10), state(1));
  auto best = m.latest_valid();
  ASSERT_TRUE(best.has_value());
  EXPECT_EQ(best->meta.step, 10);
  EXPECT_EQ(best->meta.epoch, 1);
  EXPECT_EQ(best->meta.sampler_position, 320);
  ASSERT_EQ(best->meta.rng.size(), 2u);
  EXPECT_EQ(best->meta.rng[0].name, "init");
  EXPECT_EQ(best->meta.rng[0].offset, 1000u);
  EXPECT_EQ(best->meta.config["train"]["seed"], 42);
  auto t = m.load(*best);
  EXPECT_EQ(t.at("model.w").to_vector<float>(), std::vector<float>(12, 1.0f));
  EXPECT_EQ(t.at("optim.step").to_vector<int64_t>(), std::vector<int64_t>{1});
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-0000000010.json"));
  fs::remove_all(run);
}

TEST(Checkpoint, KeepsTheLastK) {
  fs::path run = temp_dir("keep");
  CheckpointManager m(run, 2);
  for (int64_t s : {5, 10, 15, 20}) m.save(meta(s), state(static_cast<float>(s)));
  EXPECT_EQ(m.steps(), (std::vector<int64_t>{20, 15}));
  int files = 0;
  for (auto& e : fs::directory_iterator(run / "checkpoints")) files += e.is_regular_file();
  EXPECT_EQ(files, 4);  // two pairs
  fs::remove_all(run);
}

TEST(Checkpoint, FallsBackPastCorruptAndTruncatedNewest) {
  fs::path run = temp_dir("fallback");
  CheckpointManager m(run, 5);
  for (int64_t s : {1, 2, 3}) m.save(meta(s), state(static_cast<float>(s)));
  mangle(run / "checkpoints" / "step-0000000003.safetensors", /*truncate=*/false);
  std::vector<std::string> problems;
  auto best = m.latest_valid(&problems);
  ASSERT_TRUE(best.has_value());
  EXPECT_EQ(best->meta.step, 2);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("step-0000000003.safetensors"), std::string::npos) << problems[0];
  EXPECT_EQ(m.load(*best).at("model.w").to_vector<float>()[0], 2.0f);

  mangle(run / "checkpoints" / "step-0000000002.safetensors", /*truncate=*/true);
  mangle(run / "checkpoints" / "step-0000000001.json", /*truncate=*/true);  // torn sidecar
  problems.clear();
  EXPECT_FALSE(m.latest_valid(&problems).has_value());
  EXPECT_EQ(problems.size(), 3u);
  fs::remove_all(run);
}

TEST(Checkpoint, TensorsWithoutSidecarAreNotACheckpoint) {
  fs::path run = temp_dir("orphan");
  CheckpointManager m(run, 3);
  m.save(meta(4), state(4));
  m.save(meta(8), state(8));
  fs::remove(run / "checkpoints" / "step-0000000008.json");  // killed before the commit marker
  auto best = m.latest_valid();
  ASSERT_TRUE(best.has_value());
  EXPECT_EQ(best->meta.step, 4);
  fs::remove_all(run);
}

// train.checkpoint_async: save() returns with the write still going; the checkpoint holds the
// values at save() even though the caller changes its tensors at once (a snapshot), pruning still
// keeps the newest K, and wait() hands back the last one written.
TEST(Checkpoint, AsyncWriterSnapshotsAndWritesInTheBackground) {
  fs::path run = temp_dir("async");
  CheckpointManager m(run, 2);
  AsyncCheckpointWriter w(m);
  std::map<std::string, Tensor> live = state(1);
  for (int64_t s : {5, 10, 15}) {
    for (auto& [k, t] : state(static_cast<float>(s))) live.at(k).copy_(t);
    w.save(meta(s), live);
    live.at("model.w").fill_(-99.0);  // training goes on at once
    live.at("optim.w.momentum").fill_(-99.0);
  }
  auto last = w.wait();
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->meta.step, 15);
  EXPECT_EQ(m.steps(), (std::vector<int64_t>{15, 10}));
  for (int64_t s : {10, 15}) {
    auto info = CheckpointManager::read_sidecar(run / "checkpoints" / fmt::format("step-{:010d}.json", s));
    auto t = m.load(info);
    EXPECT_EQ(t.at("model.w").to_vector<float>(), std::vector<float>(12, static_cast<float>(s))) << "step " << s;
    EXPECT_EQ(t.at("optim.w.momentum").to_vector<float>(), std::vector<float>(12, -static_cast<float>(s)));
    EXPECT_EQ(t.at("optim.step").to_vector<int64_t>(), std::vector<int64_t>{s});
  }
  EXPECT_GT(w.blocked_seconds(), 0.0);
  fs::remove_all(run);
}

// A background write that fails (the checkpoints folder replaced by a file, which fails even as
// root) is raised, naming the file, by the next save() (which then writes nothing) or by wait();
// the checkpoint written before it stays the newest valid one, and the writer goes on once the
// folder is back.
TEST(Checkpoint, AsyncWriterRaisesABackgroundFailureAndKeepsTheGoodCheckpoint) {
  fs::path run = temp_dir("async_fail");
  CheckpointManager m(run, 3);
  AsyncCheckpointWriter w(m);
  w.save(meta(1), state(1));
  w.wait();
  fs::rename(run / "checkpoints", run / "moved");
  std::ofstream(run / "checkpoints") << "not a folder";
  w.save(meta(2), state(2));  // returns: the write fails on the thread
  try {
    w.wait();
    FAIL() << "expected the background write's error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step-0000000002"), std::string::npos) << e.what();
  }
  w.save(meta(3), state(3));  // the error was raised once; this write fails on the thread as well
  EXPECT_THROW(w.save(meta(4), state(4)), Error);  // raises step 3's error and writes nothing
  fs::remove(run / "checkpoints");
  fs::rename(run / "moved", run / "checkpoints");
  EXPECT_EQ(m.latest_valid()->meta.step, 1);
  w.save(meta(5), state(5));
  EXPECT_EQ(w.wait()->meta.step, 5);
  EXPECT_EQ(m.steps(), (std::vector<int64_t>{5, 1}));
  fs::remove_all(run);
}

TEST(Metrics, JsonLinesFlushedAndTornLastLineTolerated) {
  fs::path d = temp_dir("metrics");
  {
    MetricsWriter w(d / "metrics.jsonl");
    w.write({{"step", 1}, {"loss", 2.5}});
    // Visible before the writer closes (flushed per line).
    EXPECT_EQ(read_metrics(d / "metrics.jsonl").size(), 1u);
    w.write({{"step", 2}, {"loss", std::nan("")}});
    EXPECT_THROW(w.write(nlohmann::json::array()), Error);
  }
  std::ofstream(d / "metrics.jsonl", std::ios::app) << "{\"step\": 3, \"lo";
  auto r = read_metrics(d / "metrics.jsonl");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1]["step"], 2);
  EXPECT_TRUE(r[1]["loss"].is_null());
  fs::remove_all(d);
}

TEST(Progress, PlainLinesEveryLogEveryStepsWithRateAndEta) {
  fs::path d = temp_dir("progress");
  std::FILE* f = std::fopen((d / "log.txt").c_str(), "w+");
  Progress p(f, 2, Progress::Mode::automatic);  // a file is not a TTY: plain mode
  EXPECT_FALSE(p.live());
  for (int64_t s = 1; s <= 4; ++s) {
    ProgressUpdate u;
    u.epoch = 0, u.epochs = 2, u.step_in_epoch = s, u.steps_per_epoch = 10, u.global_step = s, u.total_steps = 20;
    u.loss = 1.0 / static_cast<double>(s), u.accuracy = 0.5, u.samples = 100;
    p.update(u, 0.5 * static_cast<double>(s));  // 0.5 s per step of 100 samples
  }
  p.finish();
  std::fclose(f);
  std::ifstream in(d / "log.txt");
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 2u);  // steps 2 and 4
  EXPECT_NE(lines[1].find("epoch 1/2  step 4/10  loss 0.2500  acc 50.00%  200 samples/s"), std::string::npos)
      << lines[1];
  EXPECT_NE(lines[1].find("ETA 8s"), std::string::npos) << lines[1];  // 16 steps * 0.5 s
  EXPECT_EQ(Progress::format_duration(192), "3m12s");
  EXPECT_EQ(Progress::format_duration(7500), "2h05m");
  fs::remove_all(d);
}

TEST(Progress, LiveModeRewritesOneLine) {
  fs::path d = temp_dir("live");
  std::FILE* f = std::fopen((d / "tty.txt").c_str(), "w+");
  Progress p(f, 1, Progress::Mode::live);
  ProgressUpdate u;
  u.steps_per_epoch = 2, u.total_steps = 2;
  u.step_in_epoch = u.global_step = 1;
  p.update(u, 1.0);
  p.message("epoch 1 done");
  u.step_in_epoch = u.global_step = 2;
  p.update(u, 1.05);  // the last step of an epoch is always drawn
  p.finish();
  std::fclose(f);
  std::ifstream in(d / "tty.txt");
  std::string all(std::istreambuf_iterator<char>(in), {});
  EXPECT_EQ(all.find('\n'), all.find("epoch 1 done") + 12) << all;
  EXPECT_NE(all.find("\r\033[Kepoch 1/1  step 2/2"), std::string::npos) << all;
  EXPECT_EQ(all.back(), '\n');
  fs::remove_all(d);
}
