// Data-parallel GAN training (design decision 79) across real ranks: a one-rank communicator
// changes nothing; D's gradient after a D step is the mean of the ranks' own gradients; after
// whole steps every rank holds bitwise the same networks, optimizer states and averages; a
// checkpoint written at two ranks resumes bitwise, and a failed write stops every rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "hpdl/autograd/engine.h"
#include "hpdl/gan/dcgan.h"
#include "hpdl/gan/wgan_gp.h"
#include "hpdl/ops/ops.h"
#include "tests/mpi/mpi_test_util.h"
#include "tests/unit/gan/patterns.h"

namespace hpdl::gan {
namespace {

using test::four_patterns;
using test::same_bytes;
using test::tiny_gan_options;

dist::Communicator& W() { return dist::Communicator::world(); }

// Everything a GAN's training state holds, by name (what a checkpoint holds, plus the step).
template <typename Gan>
std::map<std::string, Tensor> everything(Gan& gan, nn::Module& d, optim::ModelEma* ema) {
  std::map<std::string, Tensor> out = train::prefixed(gan.generator().state_dict(), "g.");
  out.merge(train::prefixed(d.state_dict(), "d."));
  if (ema) out.merge(train::prefixed(ema->state_dict(), "g_ema."));
  return out;
}

// Every tensor of `mine` byte-equal to rank 0's.
void expect_same_as_rank0(const std::map<std::string, Tensor>& mine, const std::string& what) {
  for (const auto& [name, t] : mine) {
    Tensor root = t.contiguous().clone();
    W().broadcast_bytes(root.raw_data(), static_cast<int64_t>(root.nbytes()), 0);
    EXPECT_TRUE(same_bytes(t, root)) << what << ": " << name << " on rank " << W().rank() << " differs from rank 0's";
  }
}

void expect_same_value_as_rank0(double v, const std::string& what) {
  double root = v;
  W().broadcast_bytes(&root, sizeof root, 0);
  EXPECT_EQ(v, root) << what << " on rank " << W().rank();
}

TEST(GanDataParallel, OneRankCommunicatorIsThePlainRun) {
  test::OneThread one;
  std::unique_ptr<dist::Communicator> self = W().split(W().rank(), 0);  // this rank alone
  ASSERT_EQ(self->size(), 1);
  const Tensor images = four_patterns();
  auto o = tiny_gan_options<DcganOptions>(3);
  o.g_ema_decay = 0.9;
  Dcgan plain(o), with_comm(o, self.get());
  const DcganStepStats a = train_dcgan(plain, images, 5), b = train_dcgan(with_comm, images, 5);
  EXPECT_EQ(a.d_loss, b.d_loss);
  EXPECT_EQ(a.g_loss, b.g_loss);
  EXPECT_EQ(a.d_accuracy, b.d_accuracy);
  const auto pa = everything(plain, plain.discriminator(), plain.generator_ema());
  const auto pb = everything(with_comm, with_comm.discriminator(), with_comm.generator_ema());
  for (const auto& [name, t] : pa) EXPECT_TRUE(same_bytes(t, pb.at(name))) << name;

  auto w = tiny_gan_options<WganGpOptions>(4);
  w.n_critic = 2;
  w.critic_norm = "layer";
  WganGp wplain(w), wcomm(w, self.get());
  EXPECT_EQ(train_wgan_gp(wplain, images, 3).critic_loss, train_wgan_gp(wcomm, images, 3).critic_loss);
  const auto qa = everything(wplain, wplain.critic(), nullptr), qb = everything(wcomm, wcomm.critic(), nullptr);
  for (const auto& [name, t] : qa) EXPECT_TRUE(same_bytes(t, qb.at(name))) << name;
}

// Rank k's real and fake images for the D step, the same tensors on every rank.
std::pair<Tensor, Tensor> pair_of_rank(int k, const DcganOptions& o) {
  Generator g(1000 + k);
  const Shape s{o.batch_size, o.channels, o.image_size, o.image_size};
  return {Tensor::rand(s, g, -1.0, 1.0), Tensor::rand(s, g, -1.0, 1.0)};
}

TEST(GanDataParallel, DiscriminatorGradientIsTheMeanOverRanks) {
  test::OneThread one;
  const auto o = tiny_gan_options<DcganOptions>(5);
  Dcgan gan(o, &W()), reference(o);
  auto [real, fake] = pair_of_rank(W().rank(), o);
  gan.discriminator_step(real, fake);

  // The reference: each rank's gradient of its own loss, from the same initial D, averaged.
  const std::vector<Tensor> params = reference.discriminator().parameters();
  std::vector<std::vector<double>> mean(params.size());
  for (int k = 0; k < W().size(); ++k) {
    auto [rk, fk] = pair_of_rank(k, o);
    const std::vector<Tensor> g = grad({reference.discriminator_loss(rk, fk)}, params);
    for (size_t i = 0; i < params.size(); ++i) {
      const std::vector<double> v = g[i].to_vector<double>();
      mean[i].resize(v.size(), 0.0);
      for (size_t j = 0; j < v.size(); ++j) mean[i][j] += v[j] / W().size();
    }
  }
  const std::vector<Tensor> trained = gan.discriminator().parameters();
  double largest = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::vector<double> got = trained[i].grad().to_vector<double>();
    ASSERT_EQ(got.size(), mean[i].size());
    for (size_t j = 0; j < got.size(); ++j) {
      ASSERT_NEAR(got[j], mean[i][j], 1e-5 * (1 + std::abs(mean[i][j]))) << "parameter " << i << "[" << j << "]";
      largest = std::max(largest, std::abs(mean[i][j]));
    }
  }
  EXPECT_GT(largest, 1e-3) << "the gradients compared are not all (near) zero";
  // The step that followed it left every rank with the same D.
  expect_same_as_rank0(gan.discriminator().state_dict(), "D after one step");
}

TEST(GanDataParallel, ReplicasStayBitwiseEqualAndSeeTheirOwnBatches) {
  test::OneThread one;
  const Tensor images = four_patterns();
  auto o = tiny_gan_options<DcganOptions>(6);
  o.g_ema_decay = 0.9;
  Dcgan gan(o, &W());
  const DcganStepStats st = train_dcgan(gan, images, 6);
  expect_same_as_rank0(everything(gan, gan.discriminator(), gan.generator_ema()), "DCGAN after 6 steps");
  // The buckets are all-reduced from inside backward, while it goes on, not all after it (64
  // features: G and D of ~140,000 parameters, several buckets each).
  auto wide_options = tiny_gan_options<DcganOptions>(6);
  wide_options.g_features = wide_options.d_features = 64;
  Dcgan wide(wide_options, &W());
  train_dcgan(wide, images, 1);
  const detail::Replicas::Overlap overlap = wide.replicas().overlap();
  EXPECT_GT(overlap.g_buckets, 1);
  EXPECT_GT(overlap.d_buckets, 1);
  EXPECT_GE(overlap.g_launched, overlap.g_buckets - 1) << "of G's " << overlap.g_buckets << " buckets";
  EXPECT_GE(overlap.d_launched, overlap.d_buckets - 1) << "of D's " << overlap.d_buckets << " buckets";
  expect_same_value_as_rank0(st.d_loss, "the reported D loss");
  expect_same_value_as_rank0(st.g_loss, "the reported G loss");
  // 256 images, 32 per rank per step: the order moved by the ranks' batches together.
  const int64_t per_step = 32 * W().size();
  const int64_t steps_per_order = 256 / per_step;  // then it reshuffles
  EXPECT_EQ(gan.minibatches().position(), ((6 - 1) % steps_per_order + 1) * per_step);

  auto w = tiny_gan_options<WganGpOptions>(7);
  w.n_critic = 2;
  w.critic_norm = "group";
  w.critic_groups = 4;
  w.g_ema_decay = 0.5;
  WganGp wgan(w, &W());
  const WganGpStepStats ws = train_wgan_gp(wgan, images, 3);
  expect_same_as_rank0(everything(wgan, wgan.critic(), wgan.generator_ema()), "WGAN-GP after 3 steps");
  expect_same_value_as_rank0(ws.critic_loss, "the reported critic loss");

  // The ranks' batches differ: each rank's first batch of a fresh order, gathered, is one batch of 32 * ranks.
  detail::ShuffledBatches batches(32, 11);
  const Tensor mine = batches.next(Tensor::arange(256).reshape({256, 1, 1, 1}), W().rank(), W().size());
  const Tensor all = W().allgather(mine.reshape({32}));
  std::vector<double> ids = all.to_vector<double>();
  ASSERT_EQ(ids.size(), static_cast<size_t>(per_step));
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::unique(ids.begin(), ids.end()), ids.end()) << "two ranks drew the same image";
  // And their latents: each takes its own rows of what every rank drew alike.
  const Tensor rows = gan.replicas().mine(Tensor::arange(4 * W().size()).reshape({W().size(), 4}));
  EXPECT_EQ(rows.to_vector<double>(), add(Tensor::arange(4), 4.0 * W().rank()).to_vector<double>());
}

// With synchronized batch norm, R ranks of batch B are one process of batch R * B: the same
// images (one order), the same latents (one stream), statistics over the union, gradients
// averaged. The step statistics and the networks agree to float rounding.
TEST(GanDataParallel, SyncBatchNormTrainsAsOneProcessOfTheGlobalBatch) {
  test::OneThread one;
  const Tensor images = four_patterns();
  auto o = tiny_gan_options<DcganOptions>(12);
  o.batch_size = 16;
  auto whole = o;
  whole.batch_size = 16 * W().size();
  ReplicaOptions sync;
  sync.sync_batchnorm = true;
  Dcgan ranks(o, &W(), sync), one_process(whole);
  std::vector<DcganStepStats> a, b;
  train_dcgan(ranks, images, 4, [&](int64_t, const DcganStepStats& st) { a.push_back(st); });
  train_dcgan(one_process, images, 4, [&](int64_t, const DcganStepStats& st) { b.push_back(st); });
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i].d_loss, b[i].d_loss, 1e-5) << "step " << i + 1;
    EXPECT_NEAR(a[i].g_loss, b[i].g_loss, 1e-5) << "step " << i + 1;
    EXPECT_NEAR(a[i].d_real, b[i].d_real, 1e-6) << "step " << i + 1;
    EXPECT_NEAR(a[i].d_fake, b[i].d_fake, 1e-6) << "step " << i + 1;
    EXPECT_EQ(a[i].d_accuracy, b[i].d_accuracy) << "step " << i + 1;
  }
  const auto pa = everything(ranks, ranks.discriminator(), nullptr);
  const auto pb = everything(one_process, one_process.discriminator(), nullptr);
  // A bias right before a batch norm (and so that norm's running mean, which follows it) has an
  // exact gradient of zero: what it gets is rounding noise, which Adam's first steps turn into
  // steps of +-lr whatever its size. Those may differ by 2 lr a step; everything else agrees.
  const std::set<std::string> before_bn = {"g.project.bias", "g.up1.bias", "d.conv2.bias", "g.bn0.running_mean",
                                           "g.bn1.running_mean", "d.bn2.running_mean"};
  double largest = 0;
  for (const auto& [name, t] : pa) {
    if (!dtype_is_float(t.dtype())) continue;
    const std::vector<double> x = t.to_vector<double>(), y = pb.at(name).to_vector<double>();
    double here = 0;
    for (size_t j = 0; j < x.size(); ++j) here = std::max(here, std::abs(x[j] - y[j]));
    if (before_bn.count(name))
      EXPECT_LE(here, 2 * o.lr * 4 * 1.01) << name;
    else
      largest = std::max(largest, here);
  }
  EXPECT_LT(largest, 1e-5) << "largest difference of the other parameters and running statistics";
  expect_same_as_rank0(pa, "sync batch norm, after 4 steps");
  // Without it the statistics are per rank: the same run differs from the one process beyond rounding.
  Dcgan per_rank(o, &W());
  std::vector<DcganStepStats> c;
  train_dcgan(per_rank, images, 4, [&](int64_t, const DcganStepStats& st) { c.push_back(st); });
  EXPECT_GT(std::abs(c.back().d_loss - b.back().d_loss), 1e-4);
}

TEST(GanDataParallel, CheckpointResumesBitwiseAndAFailedWriteStopsEveryRank) {
  test::OneThread one;
  const Tensor images = four_patterns();
  auto o = tiny_gan_options<DcganOptions>(8);
  o.g_ema_decay = 0.9;
  const auto dir = test::shared_dir("gan_ckpt");
  train::CheckpointManager checkpoints(dir);
  Dcgan straight(o, &W());
  train_dcgan(straight, images, 3);
  straight.save_checkpoint(checkpoints);
  train_dcgan(straight, images, 3);

  W().barrier();  // rank 0's checkpoint is complete before anyone reads it
  Dcgan resumed(o, &W());
  auto info = checkpoints.latest_valid();
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->meta.extra.value("world", 0), W().size());
  resumed.load_checkpoint(checkpoints, *info);
  EXPECT_EQ(resumed.steps(), 3);
  train_dcgan(resumed, images, 3);
  const auto a = everything(straight, straight.discriminator(), straight.generator_ema());
  const auto b = everything(resumed, resumed.discriminator(), resumed.generator_ema());
  for (const auto& [name, t] : a) EXPECT_TRUE(same_bytes(t, b.at(name))) << name;

  // At another rank count (here one process): the same state, and the same minibatch order
  // continued from the checkpoint's position with this run's step of one batch.
  Dcgan alone(o);
  alone.load_checkpoint(checkpoints, *info);
  const int64_t position = alone.minibatches().position();
  const std::vector<int64_t> order = alone.minibatches().order();
  int64_t expected = 256;  // 3 steps of 32 x ranks images from 256, reshuffling when a step does not fit
  for (int k = 0; k < 3; ++k) expected = (expected + 32 * W().size() > 256 ? 0 : expected) + 32 * W().size();
  EXPECT_EQ(position, expected);
  train_dcgan(alone, images, 1);
  if (position + 32 <= 256) {
    EXPECT_EQ(alone.minibatches().position(), position + 32);
    EXPECT_EQ(alone.minibatches().order(), order);
  }

  // Rank 0 cannot write (its checkpoint directory became a file): every rank throws, none hangs.
  W().barrier();
  if (W().rank() == 0) {
    std::filesystem::remove_all(checkpoints.dir());
    std::ofstream(checkpoints.dir()) << "not a directory";
  }
  W().barrier();
  test::expect_error([&] { straight.save_checkpoint(checkpoints); },
                     W().rank() == 0 ? checkpoints.dir().string() : "rank 0 failed to write the GAN checkpoint of step 6");
  W().barrier();
  if (W().rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace hpdl::gan
