// Checkpoint/restart of the GAN trainers (design decision 77): N steps straight against k
// steps, a checkpoint, a fresh GAN restored from it and N - k more, compared bitwise (G, D and
// their buffers, G's average, the losses of every step, the next latents and minibatch), for
// DCGAN and WGAN-GP, with and without generator averaging; checkpoints of other options or
// another GAN refused by name; a corrupt newest checkpoint skipped for the one before.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "hpdl/gan/dcgan.h"
#include "hpdl/gan/wgan_gp.h"
#include "hpdl/train/checkpoint.h"
#include "tests/unit/gan/patterns.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

namespace fs = std::filesystem;
using test::contains;
using test::error_of;
using test::four_patterns;
using test::OneThread;
using test::Snapshot;
using test::values_of;

gan::DcganOptions dcgan_options(double g_ema_decay = 0) {
  gan::DcganOptions o = test::tiny_gan_options<gan::DcganOptions>(5);  // 8 batches an epoch of the 256 patterns
  o.g_ema_decay = g_ema_decay;
  return o;
}

gan::WganGpOptions wgan_options(double g_ema_decay = 0, const std::string& critic_norm = "none") {
  gan::WganGpOptions o = test::tiny_gan_options<gan::WganGpOptions>(5);
  o.n_critic = 3;  // a generator step draws 3 batches: epochs end inside generator steps
  o.g_ema_decay = g_ema_decay;
  o.critic_norm = critic_norm;
  return o;
}

nn::Module& critic_of(gan::Dcgan& gan) { return gan.discriminator(); }
nn::Module& critic_of(gan::WganGp& gan) { return gan.critic(); }

// `steps` more steps; every step's losses appended to `losses`.
void train(gan::Dcgan& gan, const Tensor& images, int64_t steps, std::vector<double>& losses) {
  gan::train_dcgan(gan, images, steps, [&](int64_t, const gan::DcganStepStats& st) {
    losses.push_back(st.d_loss), losses.push_back(st.g_loss);
  });
}
void train(gan::WganGp& gan, const Tensor& images, int64_t steps, std::vector<double>& losses) {
  gan::train_wgan_gp(gan, images, steps, [&](int64_t, const gan::WganGpStepStats& st) {
    losses.push_back(st.critic_loss), losses.push_back(st.penalty), losses.push_back(st.g_loss);
  });
}

// What the run's future depends on, as exact values: G and D (parameters and buffers), G's
// average, the step count, and what the GAN draws next (latents, a minibatch).
template <typename Gan>
Snapshot final_state(Gan& gan, const Tensor& images) {
  Snapshot s = values_of(train::prefixed(gan.generator().state_dict(), "g."));
  for (auto& [k, v] : values_of(train::prefixed(critic_of(gan).state_dict(), "d."))) s[k] = v;
  if (gan.generator_ema())
    for (auto& [k, v] : values_of(train::prefixed(gan.generator_ema()->state_dict(), "g_ema."))) s[k] = v;
  s["steps"] = {static_cast<double>(gan.steps())};
  s["next_latents"] = gan.sample_latent(4).template to_vector<double>();
  s["next_batch"] = gan.minibatches().next(images).template to_vector<double>();
  return s;
}

// Bitwise: every value's bytes (a float widened to double keeps its bits).
void expect_bitwise_equal(const Snapshot& a, const Snapshot& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, v] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    ASSERT_EQ(v.size(), it->second.size()) << name;
    EXPECT_EQ(std::memcmp(v.data(), it->second.data(), v.size() * sizeof(double)), 0) << name << " differs";
  }
}

// N straight steps against k steps, a checkpoint, a fresh GAN restored from the newest valid
// one and N - k steps; also k + (N - k) steps in two calls on one GAN (the order continues).
template <typename Gan, typename Options>
void expect_bitwise_resume(const Options& o, int64_t n, int64_t k, const std::string& name) {
  OneThread one_thread;
  const Tensor data = four_patterns();
  Gan straight(o);
  std::vector<double> straight_losses;
  train(straight, data, n, straight_losses);
  const Snapshot expected = final_state(straight, data);

  const fs::path dir = test::temp_dir(name);
  std::vector<double> first_losses, resumed_losses;
  Gan first(o);
  train(first, data, k, first_losses);
  train::CheckpointManager checkpoints(dir, 2);
  const train::CheckpointInfo saved = first.save_checkpoint(checkpoints);
  EXPECT_EQ(saved.meta.step, k);
  resumed_losses = first_losses;
  train(first, data, n - k, first_losses);
  EXPECT_EQ(first_losses, straight_losses) << "two calls on one GAN";
  expect_bitwise_equal(final_state(first, data), expected);

  Gan resumed(o);
  const auto info = train::CheckpointManager(dir, 2).latest_valid();
  ASSERT_TRUE(info.has_value());
  resumed.load_checkpoint(checkpoints, *info);
  EXPECT_EQ(resumed.steps(), k);
  train(resumed, data, n - k, resumed_losses);
  EXPECT_EQ(resumed_losses, straight_losses);
  expect_bitwise_equal(final_state(resumed, data), expected);
}

TEST(GanCheckpoint, DcganResumesBitwise) {
  // 6 steps end mid-epoch (6 of 8 batches); the resumed run reshuffles at step 9.
  expect_bitwise_resume<gan::Dcgan>(dcgan_options(), 10, 6, "gan_ckpt_dcgan");
}

TEST(GanCheckpoint, DcganWithGeneratorAverageResumesBitwise) {
  expect_bitwise_resume<gan::Dcgan>(dcgan_options(0.9), 10, 6, "gan_ckpt_dcgan_ema");
}

TEST(GanCheckpoint, WganGpResumesBitwise) {
  // 2 generator steps of 3 critic steps: 6 of 8 batches; the resumed run reshuffles inside step 3.
  expect_bitwise_resume<gan::WganGp>(wgan_options(), 4, 2, "gan_ckpt_wgan");
}

TEST(GanCheckpoint, WganGpWithGeneratorAverageAndLayerNormResumesBitwise) {
  expect_bitwise_resume<gan::WganGp>(wgan_options(0.9, "layer"), 4, 2, "gan_ckpt_wgan_ema");
}

// A GAN trained k steps and checkpointed into `dir`.
template <typename Gan, typename Options>
train::CheckpointInfo checkpoint_after(const Options& o, int64_t k, const fs::path& dir) {
  Gan gan(o);
  std::vector<double> losses;
  train(gan, four_patterns(), k, losses);
  train::CheckpointManager checkpoints(dir, 2);
  return gan.save_checkpoint(checkpoints);
}

TEST(GanCheckpoint, OtherOptionsAreRefusedByName) {
  OneThread one_thread;
  const fs::path dir = test::temp_dir("gan_ckpt_mismatch");
  const train::CheckpointInfo info = checkpoint_after<gan::Dcgan>(dcgan_options(), 2, dir);
  train::CheckpointManager checkpoints(dir, 2);

  gan::DcganOptions other = dcgan_options();
  other.d_features = 8;
  other.batch_size = 16;
  gan::Dcgan narrow(other);
  const Snapshot before = values_of(narrow.generator().state_dict());
  std::string m = error_of([&] { narrow.load_checkpoint(checkpoints, info); });
  EXPECT_TRUE(contains(m, info.sidecar_path.string())) << m;
  EXPECT_TRUE(contains(m, "d_features = 16 in the checkpoint, 8 here")) << m;
  EXPECT_TRUE(contains(m, "batch_size = 32 in the checkpoint, 16 here")) << m;
  EXPECT_FALSE(contains(m, "latent_dim")) << m;  // only the differences
  expect_bitwise_equal(values_of(narrow.generator().state_dict()), before);  // refused before any change
  EXPECT_EQ(narrow.steps(), 0);

  gan::Dcgan averaging(dcgan_options(0.99));
  m = error_of([&] { averaging.load_checkpoint(checkpoints, info); });
  EXPECT_TRUE(contains(m, "g_ema_decay = 0.0 in the checkpoint, 0.99 here")) << m;

  gan::WganGp wgan(wgan_options());
  m = error_of([&] { wgan.load_checkpoint(checkpoints, info); });
  EXPECT_TRUE(contains(m, "a dcgan checkpoint, and this is a wgan-gp run")) << m;
}

TEST(GanCheckpoint, WganGpCriticOptionsAreRefusedByName) {
  OneThread one_thread;
  const fs::path dir = test::temp_dir("gan_ckpt_wgan_mismatch");
  const train::CheckpointInfo info = checkpoint_after<gan::WganGp>(wgan_options(), 1, dir);
  train::CheckpointManager checkpoints(dir, 2);
  gan::WganGpOptions other = wgan_options(0, "layer");
  other.n_critic = 2;
  gan::WganGp gan(other);
  const std::string m = error_of([&] { gan.load_checkpoint(checkpoints, info); });
  EXPECT_TRUE(contains(m, info.sidecar_path.string())) << m;
  EXPECT_TRUE(contains(m, "n_critic = 3 in the checkpoint, 2 here")) << m;
  EXPECT_TRUE(contains(m, "critic_norm = \"none\" in the checkpoint, \"layer\" here")) << m;

  gan::Dcgan dcgan(dcgan_options());
  EXPECT_TRUE(contains(error_of([&] { dcgan.load_checkpoint(checkpoints, info); }),
                       "a wgan-gp checkpoint, and this is a dcgan run"));
}

TEST(GanCheckpoint, CorruptNewestIsSkippedForThePreviousOne) {
  OneThread one_thread;
  const Tensor data = four_patterns();
  gan::Dcgan straight(dcgan_options(0.9));
  std::vector<double> straight_losses;
  train(straight, data, 8, straight_losses);

  const fs::path dir = test::temp_dir("gan_ckpt_corrupt");
  train::CheckpointManager checkpoints(dir, 2);
  std::vector<double> losses;
  {
    gan::Dcgan first(dcgan_options(0.9));
    train(first, data, 3, losses);
    first.save_checkpoint(checkpoints);
    std::vector<double> later;
    train(first, data, 2, later);
    const train::CheckpointInfo newest = first.save_checkpoint(checkpoints);
    // One flipped byte in the newest tensors file (a damaged file system).
    std::string bytes = test::read_text(newest.tensors_path);
    bytes[bytes.size() / 2] ^= 0x10;
    std::ofstream(newest.tensors_path, std::ios::binary | std::ios::trunc) << bytes;
  }
  std::vector<std::string> problems;
  const auto info = checkpoints.latest_valid(&problems);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->meta.step, 3);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_TRUE(contains(problems[0], "step 5")) << problems[0];

  gan::Dcgan resumed(dcgan_options(0.9));
  resumed.load_checkpoint(checkpoints, *info);
  train(resumed, data, 5, losses);
  EXPECT_EQ(losses, straight_losses);
  expect_bitwise_equal(final_state(resumed, data), final_state(straight, data));
}

// Background checkpoints (a train::AsyncCheckpointWriter): the GAN's tensors are snapshotted at
// save_checkpoint, so training on right after does not change what is written (the file equals a
// synchronous save of the same step), a run resumes from them bitwise, and a failed background
// write (the checkpoints folder replaced by a file) is raised by wait_for_checkpoints, naming the step.
TEST(GanCheckpoint, BackgroundWritesHoldTheStateOfTheirStep) {
  OneThread one_thread;
  const Tensor data = four_patterns();
  gan::Dcgan straight(dcgan_options(0.9));
  std::vector<double> straight_losses;
  train(straight, data, 6, straight_losses);

  const fs::path sync_dir = test::temp_dir("gan_ckpt_sync"), dir = test::temp_dir("gan_ckpt_async");
  train::CheckpointManager sync_checkpoints(sync_dir, 2), checkpoints(dir, 2);
  std::vector<double> losses;
  {
    gan::Dcgan first(dcgan_options(0.9));
    train(first, data, 3, losses);
    train::AsyncCheckpointWriter background(checkpoints);
    const train::CheckpointInfo info = first.save_checkpoint(checkpoints, &background);
    EXPECT_EQ(info.meta.step, 3);
    EXPECT_TRUE(info.tensors_path.empty());  // written later, on the writer's thread
    std::vector<double> later;
    train(first, data, 1, later);  // changes every tensor while the write may still run
    first.wait_for_checkpoints(checkpoints, background);
    // The same step written synchronously by a GAN stopped there gives the same bytes.
    gan::Dcgan again(dcgan_options(0.9));
    std::vector<double> unused;
    train(again, data, 3, unused);
    const train::CheckpointInfo sync = again.save_checkpoint(sync_checkpoints);
    EXPECT_EQ(test::read_text(checkpoints.latest_valid()->tensors_path), test::read_text(sync.tensors_path));

    // A failing background write: raised by the wait, naming the step; the good checkpoint stays.
    fs::rename(dir / "checkpoints", dir / "moved");
    std::ofstream(dir / "checkpoints") << "not a folder";
    first.save_checkpoint(checkpoints, &background);  // step 4: returns, the write fails on the thread
    const std::string err = error_of([&] { first.wait_for_checkpoints(checkpoints, background); });
    EXPECT_TRUE(contains(err, "step-0000000004")) << err;
    fs::remove(dir / "checkpoints");
    fs::rename(dir / "moved", dir / "checkpoints");
  }
  const auto info = checkpoints.latest_valid();
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->meta.step, 3);
  gan::Dcgan resumed(dcgan_options(0.9));
  resumed.load_checkpoint(checkpoints, *info);
  train(resumed, data, 3, losses);
  EXPECT_EQ(losses, straight_losses);
  expect_bitwise_equal(final_state(resumed, data), final_state(straight, data));
  fs::remove_all(sync_dir);
  fs::remove_all(dir);
}

TEST(GanCheckpoint, ResumedOrderRefusesAnotherImageSet) {
  OneThread one_thread;
  const fs::path dir = test::temp_dir("gan_ckpt_images");
  const train::CheckpointInfo info = checkpoint_after<gan::Dcgan>(dcgan_options(), 2, dir);
  gan::Dcgan gan(dcgan_options());
  gan.load_checkpoint(train::CheckpointManager(dir, 2), info);
  const std::string m = error_of([&] { gan::train_dcgan(gan, four_patterns().slice(0, 0, 128).contiguous(), 1); });
  EXPECT_TRUE(contains(m, "128 images, but the minibatch order in progress (from an earlier call or a checkpoint) "
                          "covers 256")) << m;
}

}  // namespace
}  // namespace hpdl
