// Wasserstein GAN with gradient penalty (Gulrajani, Ahmed, Arjovsky, Dumoulin &
// Courville 2017, "Improved training of Wasserstein GANs", NeurIPS), reusing
// the DCGAN generator (gan/dcgan.h). The critic D scores images (no sigmoid):
//
//   critic step (n_critic per generator step), x real, x~ = G(z) detached,
//   eps ~ U[0, 1] per sample, xhat = eps x + (1 - eps) x~:
//     minimise  mean D(x~) - mean D(x) + lambda mean_i (||grad_xhat D(xhat_i)||_2 - 1)^2
//   generator step:  minimise  -mean D(G(z))
//
// with Adam(lr 1e-4, betas 0, 0.9), n_critic 5, lambda 10 (the paper's
// Algorithm 1). The penalty differentiates D's input gradient in D's weights:
// a second derivative through conv2d (hpdl/ops/conv.h). The critic is the
// DCGAN discriminator without batch norm (the penalty is per sample, which
// batch norm would break). critic_norm adds the paper's alternative after the
// second convolution: "layer" is layer norm over each sample's C, H, W with
// per-channel gain and bias (GroupNorm with one group, as the paper's code
// normalizes), "group" GroupNorm with critic_groups groups; both per sample,
// and twice differentiable (hpdl/ops/norm.h).
//   D: x [N, C, S, S] -> conv(4, 2, 1) d -> LeakyReLU(0.2)
//        -> conv(4, 2, 1) 2d [-> norm] -> LeakyReLU(0.2) -> flatten -> Linear -> score [N]
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "hpdl/gan/dcgan.h"

namespace hpdl::gan {

struct WganGpOptions {
  int64_t image_size = 28;   // S: height = width, divisible by 4
  int64_t channels = 1;      // C
  int64_t latent_dim = 64;   // z size
  int64_t g_features = 64;   // the DCGAN generator's g
  int64_t d_features = 64;   // the critic's d
  double lr = 1e-4;          // Adam, both networks
  double beta1 = 0.0, beta2 = 0.9;
  int64_t batch_size = 64;   // real images (and latents) per critic step and per generator step, per rank
  int64_t n_critic = 5;      // critic steps per generator step
  double gp_lambda = 10;     // penalty weight
  uint64_t seed = 0;
  std::string critic_norm = "none";  // "none", "layer" or "group", after the critic's second convolution
  int64_t critic_groups = 4;         // GroupNorm's groups for "group": must divide 2 * d_features
  // Generator weight averaging, as DcganOptions::g_ema_decay: 0 off, else the decay in (0, 1)
  // of a ModelEma of G updated after every generator step (not after critic steps).
  double g_ema_decay = 0;
  bool g_ema_warmup = true;
  // The DCGAN options that build the same generator (sizes, seed; its lr/betas unused, no averaging).
  DcganOptions generator_options() const;
};

// Throws hpdl::Error naming the first bad option: those of check_dcgan_options,
// n_critic < 1, a negative or non-finite gp_lambda, an unknown critic_norm, critic_groups not
// dividing 2 * d_features (for "group"), g_ema_decay outside [0, 1).
void check_wgan_gp_options(const WganGpOptions& options);

// The critic: images [N, C, S, S] -> scores [N] (higher: more real).
class WganCritic : public nn::Module {
 public:
  WganCritic(const WganGpOptions& options, Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "WganCritic"; }
  std::shared_ptr<nn::Conv2d> conv1, conv2;
  std::shared_ptr<nn::Linear> score;
  std::shared_ptr<nn::GroupNorm> norm2;  // null for critic_norm "none"

 private:
  int64_t channels_, side_;
};

// The penalty and what it saw.
struct GradientPenalty {
  Tensor penalty;          // lambda * mean_i (||g_i||_2 - 1)^2, a scalar with a graph into the critic
  Tensor grad_norms;       // ||g_i||_2 [N], detached
};

// The gradient penalty of `critic` (any function of images [N, ...] -> scores
// [N]) on xhat = eps * real + (1 - eps) * fake with eps [N] in [0, 1] (one per
// sample): g_i = d critic(xhat)_i / d xhat_i (create_graph, so the penalty
// can be differentiated in the critic's weights). real and fake are used as
// values (detached). Throws naming the mismatch when real and fake differ in
// shape, eps is not [N], or the critic does not return [N].
GradientPenalty gradient_penalty(const std::function<Tensor(const Tensor&)>& critic, const Tensor& real,
                                 const Tensor& fake, const Tensor& eps, double lambda);

// What one generator step (and the critic steps before it) saw.
struct WganGpStepStats {
  double critic_loss = 0;   // the last critic step's loss (before its update)
  double wasserstein = 0;   // mean D(x) - mean D(x~) on that step: the critic's estimate of W(P_real, P_G)
  double penalty = 0;       // its penalty term (lambda included)
  double grad_norm = 0;     // mean ||grad_xhat D|| on that step (the penalty pulls it to 1)
  double g_loss = 0;        // -mean D(G(z)) before the generator update
};

class WganGp {
 public:
  // Throws as check_wgan_gp_options. With `comm`, data parallel as Dcgan: each rank's critic
  // and generator steps use its own batch (latents and mixing weights drawn for all ranks, this
  // rank's taken), gradients averaged over the ranks, the stats the means over the ranks.
  explicit WganGp(const WganGpOptions& options, dist::Communicator* comm = nullptr, const ReplicaOptions& replica = {});
  ~WganGp();

  const WganGpOptions& options() const { return options_; }
  DcganGenerator& generator() { return *g_; }
  WganCritic& critic() { return *d_; }

  Tensor sample_latent(int64_t n);  // z ~ N(0, 1) [n, latent] from the GAN's random stream
  Tensor generate(const Tensor& z);  // G(z) without autograd, in G's current mode
  // As Dcgan's: G(z) from the averaged weights (throws naming g_ema_decay when off), a
  // standalone averaged G with recomputed batch-norm statistics, and the average itself
  // (null when off).
  Tensor generate_averaged(const Tensor& z);
  std::shared_ptr<DcganGenerator> averaged_generator(int64_t stat_batches = 100);
  optim::ModelEma* generator_ema() { return g_ema_.get(); }

  // One Adam step of the critic on a batch of real images [B, C, S, S] against
  // B fresh samples of G; returns the stats of that step (g_loss unset).
  // Throws naming a non-finite loss.
  WganGpStepStats critic_step(const Tensor& real);
  // One Adam step of G on -mean D(G(z)), z [B, latent] (the critic's parameters frozen),
  // then the averages' update; returns the loss before the step.
  double generator_step(int64_t batch);
  // n_critic critic steps, each on the next batch from `next_batch`, then a generator step.
  WganGpStepStats train_step(const std::function<Tensor()>& next_batch);

  int64_t steps() const { return steps_; }  // generator steps taken
  // The minibatch order train_wgan_gp draws from (it continues over calls, and is checkpointed).
  detail::ShuffledBatches& minibatches() { return batches_; }
  const detail::Replicas& replicas() const { return *replicas_; }

  // As Dcgan's (the same format and contents, the critic in place of D): a checkpoint holds
  // the state after a whole generator step (its n_critic critic steps included), so a run
  // resumed from one continues bitwise as the straight run. load_checkpoint throws naming the
  // sidecar when it is not a WGAN-GP checkpoint or any option differs (n_critic, critic_norm, ...).
  train::CheckpointInfo save_checkpoint(train::CheckpointManager& checkpoints,
                                        train::AsyncCheckpointWriter* background = nullptr);
  void wait_for_checkpoints(train::CheckpointManager& checkpoints, train::AsyncCheckpointWriter& background);
  void load_checkpoint(const train::CheckpointManager& checkpoints, const train::CheckpointInfo& info);

 private:
  void check_images(const Tensor& images, const char* what) const;
  detail::GanState state();

  WganGpOptions options_;
  Generator rng_;
  detail::ShuffledBatches batches_;
  std::shared_ptr<DcganGenerator> g_;
  std::shared_ptr<WganCritic> d_;
  std::unique_ptr<optim::AdamW> g_opt_, d_opt_;
  std::unique_ptr<optim::ModelEma> g_ema_;  // null: averaging off
  std::unique_ptr<detail::Replicas> replicas_;
  int64_t steps_ = 0;
};

// Trains `gan` for `steps` more generator steps (n_critic critic steps each) on
// images [M, C, S, S] in [-1, 1] (M >= ranks * batch_size), minibatches drawn without
// replacement from shuffled epochs (gan.minibatches(), continued over calls as
// in train_dcgan). `on_step(step, stats)` after every generator step, with
// step = gan.steps() (1-based, earlier calls' steps included). Returns the last step's stats.
WganGpStepStats train_wgan_gp(WganGp& gan, const Tensor& images, int64_t steps,
                              const std::function<void(int64_t, const WganGpStepStats&)>& on_step = {});

}  // namespace hpdl::gan
