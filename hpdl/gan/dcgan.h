// Deep convolutional GANs (Radford, Metz & Chintala 2016, "Unsupervised
// representation learning with deep convolutional generative adversarial
// networks", ICLR) for small square images, trained with the non-saturating
// GAN loss of Goodfellow et al. 2014 ("Generative adversarial nets", NeurIPS):
//
//   D step:  minimise  bce(D(x), 1) + bce(D(G(z)), 0)     (G(z) detached)
//   G step:  minimise  bce(D(G(z)), 1)                     (= -log sigmoid(D(G(z))))
//
// with D returning logits (bce_with_logits) and Adam(lr 2e-4, betas 0.5, 0.999)
// for both networks, as in the paper. Images live in [-1, 1] (G ends in tanh).
// For S x S images (S divisible by 4), s = S/4:
//   G: z [N, latent] -> Linear -> [N, 2g, s, s] -> BN -> ReLU
//        -> ConvT(4, 2, 1) g -> BN -> ReLU -> ConvT(4, 2, 1) C -> tanh   [N, C, S, S]
//   D: x [N, C, S, S] -> conv(4, 2, 1) d -> LeakyReLU(0.2)
//        -> conv(4, 2, 1) 2d -> BN -> LeakyReLU(0.2) -> flatten -> Linear -> logit [N]
// Weights start as in the paper: N(0, 0.02) for conv, transposed-conv and
// linear weights, N(1, 0.02) for batch-norm scales, zero biases. Everything
// random (weights, latents, minibatches) comes from the options' seed, so a
// run is reproducible on a given build and thread count.
// With g_ema_decay > 0 the trainer also keeps an exponential moving average of
// G's weights (optim::ModelEma, updated after every G step), the generator GAN
// practice samples from (Karras et al. 2018; Yazici et al. 2019, "The unusual
// effectiveness of averaging in GAN training", ICLR).
// Given a dist::Communicator of W ranks, a trainer is data-parallel (design decision 79): each
// rank draws its own batch_size real images and latents per step (a global batch of
// W * batch_size), and the gradients of D and of G are averaged over the ranks
// (dist::DataParallel, overlapped with backward), so every rank holds the same networks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"
#include "hpdl/io/onnx.h"
#include "hpdl/nn/layers.h"
#include "hpdl/optim/ema.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/train/checkpoint.h"

namespace hpdl::dist {
class Communicator;
class DataParallel;
}  // namespace hpdl::dist

namespace hpdl::gan {

struct DcganOptions {
  int64_t image_size = 28;   // S: height = width, divisible by 4
  int64_t channels = 1;      // C
  int64_t latent_dim = 64;   // z size
  int64_t g_features = 64;   // g: G has 2g channels at s x s and g at 2s x 2s
  int64_t d_features = 64;   // d: D has d channels at 2s x 2s and 2d at s x s
  double lr = 2e-4;          // Adam, both networks
  double beta1 = 0.5, beta2 = 0.999;
  int64_t batch_size = 64;   // minibatch of real images (and of latents) per step, per rank
  uint64_t seed = 0;
  // Generator weight averaging: 0 is off; else the decay d in (0, 1) of an
  // optim::ModelEma of G (avg <- d avg + (1 - d) w after every G step, batch-norm
  // running statistics averaged too), with ModelEma's warmup d_n = min(d, (1 + n) / (10 + n)).
  double g_ema_decay = 0;
  bool g_ema_warmup = true;
};

// How a data-parallel GAN (one given a communicator) trains, beyond averaging the gradients.
// Not part of the checkpointed options: like the rank count, it may change between resumes.
struct ReplicaOptions {
  // Batch norm in G and D over the union of the ranks' batches (dist::convert_sync_batchnorm,
  // the cross-replica batch norm of BigGAN, Brock et al. 2019): R ranks x batch B then train as
  // one process x batch R * B, up to float rounding. Off: per-rank statistics, as PyTorch DDP.
  // generate() and generate_averaged() still normalize with this rank's own batch (sampling is
  // per process; rank 0 alone may sample).
  bool sync_batchnorm = false;
};

// Throws hpdl::Error naming the first bad option: image_size not a positive
// multiple of 4, a non-positive channel count, latent size, feature count, lr or
// batch size, betas outside [0, 1), g_ema_decay outside [0, 1).
void check_dcgan_options(const DcganOptions& options);

// The generator network G: z [N, latent] -> images [N, C, S, S] in [-1, 1].
class DcganGenerator : public nn::Module {
 public:
  DcganGenerator(const DcganOptions& options, Generator& gen);
  Tensor forward(const Tensor& z) override;
  std::string type_name() const override { return "DcganGenerator"; }
  int64_t features() const { return features_; }  // 2g, the channels of the projected [2g, s, s]
  int64_t side() const { return side_; }          // s = S / 4
  std::shared_ptr<nn::Linear> project;
  std::shared_ptr<nn::BatchNorm2d> bn0, bn1;
  std::shared_ptr<nn::ConvTranspose2d> up1, up2;

 private:
  int64_t features_, side_;
};

// The discriminator network D: images [N, C, S, S] -> logits [N] (> 0: "real").
class DcganDiscriminator : public nn::Module {
 public:
  DcganDiscriminator(const DcganOptions& options, Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "DcganDiscriminator"; }
  std::shared_ptr<nn::Conv2d> conv1, conv2;
  std::shared_ptr<nn::BatchNorm2d> bn2;
  std::shared_ptr<nn::Linear> classify;

 private:
  int64_t channels_, side_;
};

// What one training step saw (losses before the step's updates).
struct DcganStepStats {
  double d_loss = 0;      // bce(D(x), 1) + bce(D(G(z)), 0)
  double g_loss = 0;      // bce(D(G(z)), 1)
  double d_real = 0;      // mean sigmoid(D(x)): D's probability that real images are real
  double d_fake = 0;      // mean sigmoid(D(G(z))) before the D update
  double d_accuracy = 0;  // fraction of real with logit > 0 and fake with logit < 0, before the D update
};

// The generator as an ONNX graph (opset 13, hpdl/train/onnx_export.h) for
// sampling elsewhere: input "z" float32 [N, latent], output "images" float32
// [N, C, S, S] in [-1, 1], N dynamic. Gemm -> Reshape -> BatchNormalization ->
// Relu -> ConvTranspose -> BatchNormalization -> Relu -> ConvTranspose -> Tanh,
// weights named after G's state dict ("up1.weight"). Eval semantics (batch
// norm with the running statistics) whatever G's mode, so the graph matches
// G after G.eval(). `doc` becomes the model's doc_string.
io::onnx::Model export_generator_onnx(DcganGenerator& generator, const std::string& doc = "");
// export_generator_onnx() written atomically to `path`; throws naming the file.
void save_generator_onnx(const std::filesystem::path& path, DcganGenerator& generator, const std::string& doc = "");

namespace detail {
struct GanState;

// Batches of `batch` images drawn without replacement from an image set [M, C, S, S], reshuffled
// (Fisher-Yates, on its own random stream from `seed`, so a step's latents do not depend on how
// many epochs came before) whenever fewer than a step's images remain. Holds no images: the
// trainer passes the same set to every next(). Data parallel over W ranks, every rank holds the
// same order and a step takes the next W * batch of it, rank r the r-th batch, so one rank's
// order is the order of the whole run. Its state (order, position, stream) goes into the GAN's
// checkpoint, so a resumed run draws the batches the straight run would have drawn.
class ShuffledBatches {
 public:
  // The trainers' order stream is seeded with options.seed + kSeedOffset.
  static constexpr uint64_t kSeedOffset = 0x5851F42D4C957F2Dull;
  ShuffledBatches(int64_t batch, uint64_t seed) : batch_(batch), gen_(seed) {}
  // Throws, naming `who`, unless images are [M, channels, size, size] with M >= world * batch and,
  // once an order is in progress (drawn by an earlier call or restored from a checkpoint), M is its size.
  void check(const Tensor& images, int64_t channels, int64_t size, const char* who, int world = 1) const;
  // Rank `rank`'s batch [batch, C, S, S] of `images` (passed check()) for the next step of `world` ranks.
  Tensor next(const Tensor& images, int rank = 0, int world = 1);

  // The state: the current order of image indices (empty before the first batch), the
  // position in it (images already drawn), the order's random stream.
  const std::vector<int64_t>& order() const { return order_; }
  int64_t position() const { return next_; }
  const Generator& generator() const { return gen_; }
  // Restores a state taken from the accessors above. Throws naming `where` unless order is
  // empty or a permutation of 0..M-1 and position is in [0, M].
  void restore(std::vector<int64_t> order, int64_t position, uint64_t seed, uint64_t offset, const std::string& where);

 private:
  int64_t batch_;
  Generator gen_;
  std::vector<int64_t> order_;
  int64_t next_ = 0;  // position in the current order; order_ empty or next_ + world * batch_ > M: reshuffle first
};

// A GAN trainer's data parallelism (design decision 79) over `comm` (null: one process, where
// every call below is the plain local one). Two dist::DataParallel, one per network, so a D step
// reduces only D's gradients and a G step only G's; D's buffers (batch-norm running statistics)
// are not broadcast by D's finish but by sync_d_buffers() at the end of a step, after the G
// step's forward through D moved them too. Every rank then ends a step with bitwise the same
// networks, optimizer states and averages.
class Replicas {
 public:
  Replicas(dist::Communicator* comm, nn::Module& g, nn::Module& d, optim::AdamW& g_opt, optim::AdamW& d_opt,
           const ReplicaOptions& options = {});
  ~Replicas();
  Replicas(const Replicas&) = delete;
  Replicas& operator=(const Replicas&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool sync_batchnorm() const { return sync_bn_; }
  dist::Communicator* comm() const { return comm_; }
  // Before a backward into D (G): zero its gradients. After it: the mean over the ranks
  // (waits for the buckets the backward launched).
  void zero_grad_d();
  void finish_d();
  void zero_grad_g();
  void finish_g();
  // D's floating-point buffers from rank 0 (one message; nothing on one rank).
  void sync_d_buffers();
  // Replaces each value by its mean over the ranks, in one allreduce: the step statistics every
  // rank reports, and checks for finiteness, are then the same everywhere.
  void mean(std::vector<double>& values) const;
  // This rank's n rows of `all` [world * n, ...] (drawn alike on every rank).
  Tensor mine(const Tensor& all) const;
  // Gradient buckets of G and of D whose allreduce the last G and D backward launched from
  // inside backward (the overlap), of how many; zeros on one process.
  struct Overlap {
    int g_launched = 0, g_buckets = 0, d_launched = 0, d_buckets = 0;
  };
  Overlap overlap() const;

 private:
  dist::Communicator* comm_;
  int rank_ = 0, world_ = 1;
  bool sync_bn_ = false;
  optim::AdamW &g_opt_, &d_opt_;
  std::unique_ptr<dist::DataParallel> g_dp_, d_dp_;
};

// requires_grad off for a module's parameters while it lives (restored after): a G step's
// backward passes through D without computing D's weight gradients, which it would discard,
// and without firing D's data-parallel hooks.
class FrozenParameters {
 public:
  explicit FrozenParameters(nn::Module& m);
  ~FrozenParameters();
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;

 private:
  std::vector<std::pair<Tensor, bool>> saved_;
};
}  // namespace detail

// Both networks, their Adam optimizers, the random stream for latents and the minibatch order.
class Dcgan {
 public:
  // Throws as check_dcgan_options. With `comm` (it must outlive the GAN) the GAN trains
  // data-parallel over its ranks (detail::Replicas); every rank constructs it with the same options.
  explicit Dcgan(const DcganOptions& options, dist::Communicator* comm = nullptr, const ReplicaOptions& replica = {});
  ~Dcgan();

  const DcganOptions& options() const { return options_; }
  DcganGenerator& generator() { return *g_; }
  DcganDiscriminator& discriminator() { return *d_; }

  // n latent vectors z ~ N(0, 1) [n, latent] from the GAN's random stream.
  Tensor sample_latent(int64_t n);
  // G(z) without autograd, in G's current mode (train: batch statistics). [n, C, S, S].
  Tensor generate(const Tensor& z);
  // G(z) from G's averaged weights (see detail::generate_averaged). Throws naming
  // g_ema_decay when averaging is off.
  Tensor generate_averaged(const Tensor& z);
  // A standalone copy of G with the averaged weights and batch-norm running statistics
  // recomputed for them (detail::averaged_generator), in eval mode: what to export
  // (save_generator_onnx) or to sample with running statistics. Throws naming
  // g_ema_decay when averaging is off.
  std::shared_ptr<DcganGenerator> averaged_generator(int64_t stat_batches = 100);
  // G's weight average, null when g_ema_decay is 0. Its state_dict() holds the averaged
  // G by G's state-dict names; optim::ModelEma::Applied swaps the averages into
  // generator() for a scope (for save_generator_onnx of the averaged G).
  optim::ModelEma* generator_ema() { return g_ema_.get(); }

  // bce(D(real), 1) + bce(D(fake), 0) (a scalar with autograd into D, and into
  // G when fake has a history). Throws unless both are [N, C, S, S] of this GAN.
  Tensor discriminator_loss(const Tensor& real, const Tensor& fake);
  // bce(D(fake), 1), the non-saturating generator loss.
  Tensor generator_loss(const Tensor& fake);
  // One Adam step of D on (real, fake) with fake detached (data parallel: this rank's pair,
  // the gradient averaged over the ranks); returns the loss before the step (this rank's).
  double discriminator_step(const Tensor& real, const Tensor& fake);
  // One alternating step on a batch of real images [B, C, S, S] in [-1, 1]:
  // z ~ N(0, 1) [B, latent], fake = G(z); a D step on (real, fake) and a G step
  // on D(fake) with D's updated weights (D's parameters frozen: their gradients would be
  // discarded). Data parallel: this rank's batch, latents drawn for all ranks and this
  // rank's taken, gradients averaged, the stats the means over the ranks.
  // Throws naming a non-finite loss (on every rank alike).
  DcganStepStats train_step(const Tensor& real);
  // Fraction of real images D calls real plus fake images it calls fake, over
  // both sets (no autograd; D in its current mode).
  double discriminator_accuracy(const Tensor& real, const Tensor& fake);

  int64_t steps() const { return steps_; }
  // The minibatch order train_dcgan draws from (it continues over calls, and is checkpointed).
  detail::ShuffledBatches& minibatches() { return batches_; }
  // The data parallelism (rank 0 of 1 without a communicator).
  const detail::Replicas& replicas() const { return *replicas_; }

  // Checkpoints in train::CheckpointManager's format (the classifier trainer's; docs/gan.md):
  // the whole training state (G and D with their buffers, both Adam states, G's average when
  // on, steps(), the GAN's random stream, the minibatch order, position and stream) with the
  // options in the sidecar, so that a run stopped after k steps and resumed in a fresh Dcgan
  // of the same options ends bitwise equal to the straight run (same thread count). Throws
  // naming the file on I/O errors (earlier checkpoints stay). Data parallel: collective; rank 0
  // writes (the state is the same on every rank) and every rank throws if it failed; the other
  // ranks' CheckpointInfo holds only meta. Every rank loads the same checkpoint (a shared file
  // system), at this rank count or another (the order is global; bitwise continuation needs the same).
  // With `background` (a writer over `checkpoints`), rank 0 only takes a snapshot and the
  // writer's thread writes it (train.checkpoint_async's writer, docs/files.md); the returned
  // info then holds only meta. A failed background write is raised on every rank by the next
  // save_checkpoint (which then writes nothing) or by wait_for_checkpoints; call that before
  // the run ends. Collective, as above.
  train::CheckpointInfo save_checkpoint(train::CheckpointManager& checkpoints,
                                        train::AsyncCheckpointWriter* background = nullptr);
  void wait_for_checkpoints(train::CheckpointManager& checkpoints, train::AsyncCheckpointWriter& background);
  // Restores a checkpoint written by save_checkpoint (info from checkpoints.latest_valid()).
  // Throws naming the sidecar when it is not a DCGAN checkpoint, when its options differ from
  // this GAN's (every differing option with both values), or when an entry is missing.
  void load_checkpoint(const train::CheckpointManager& checkpoints, const train::CheckpointInfo& info);

 private:
  void check_images(const Tensor& images, const char* what) const;
  detail::GanState state();  // references to everything a checkpoint holds

  DcganOptions options_;
  Generator rng_;
  detail::ShuffledBatches batches_;
  std::shared_ptr<DcganGenerator> g_;
  std::shared_ptr<DcganDiscriminator> d_;
  std::unique_ptr<optim::AdamW> g_opt_, d_opt_;
  std::unique_ptr<optim::ModelEma> g_ema_;  // null: averaging off
  std::unique_ptr<detail::Replicas> replicas_;
  int64_t steps_ = 0;
};

// Trains `gan` for `steps` more alternating steps on images [M, C, S, S] in [-1, 1]
// (M >= ranks * batch_size; every rank passes the same set), drawing minibatches without replacement from shuffled
// epochs (gan.minibatches(): a second call, or a call after load_checkpoint, continues
// the order where it stopped, so k steps then N - k steps equal N steps; the images
// must be the same set). `on_step(step, stats)` is called after every step when set,
// with step = gan.steps() (1-based, counting the steps before this call too).
// Returns the last step's stats.
DcganStepStats train_dcgan(Dcgan& gan, const Tensor& images, int64_t steps,
                           const std::function<void(int64_t, const DcganStepStats&)>& on_step = {});

// Fashion-MNIST images of one split as a [M, 1, 28, 28] float32 tensor scaled
// to [-1, 1] (pixel / 127.5 - 1), the first `limit` of them (0: all), with
// their labels [M] (int64) when `labels` is given. Throws as data::load_mnist_idx.
Tensor load_fashion_mnist_images(const std::filesystem::path& dir, bool train, int64_t limit = 0,
                                 Tensor* labels = nullptr);

// Writes images [N, C, S, S] (C = 1 or 3) in [-1, 1] as one PNG grid of
// `columns` columns with a 2-pixel black border, values clamped to [-1, 1].
void write_image_grid(const std::filesystem::path& path, const Tensor& images, int64_t columns);

// A classifier's view of a set of images, from its logits [M, classes]:
// confidence = mean over images of max_y p(y|x); class_entropy = entropy (nats)
// of the histogram of argmax classes (log(classes) when every class is equally
// frequent, 0 when all images get one class); inception_score = exp(mean KL(p(y|x) || p(y)))
// with p(y) the mean of p(y|x) (Salimans et al. 2016, computed with this classifier
// instead of Inception). Throws unless logits is [M, classes] with M, classes >= 1.
struct ClassifierScore {
  double confidence = 0, class_entropy = 0, inception_score = 0;
};
ClassifierScore classifier_score(const Tensor& logits);

namespace detail {
// Shared by the GAN trainers (Dcgan, WganGp): plain Adam (no weight decay) over a module's
// parameters; z ~ N(0, 1) [n, latent_dim]; and the check that `images` are [N >= 1, C, S, S]
// (`who` and `what` name the trainer and the argument in the error).
std::unique_ptr<optim::AdamW> make_adam(nn::Module& m, double lr, double beta1, double beta2);
Tensor sample_latent(int64_t n, int64_t latent_dim, Generator& rng, const char* who);
void check_images(const Tensor& images, int64_t channels, int64_t size, const char* who, const char* what);

// Generator averaging, shared by the trainers. check_g_ema throws, naming `who`'s
// g_ema_decay, unless decay is in [0, 1). make_generator_ema: a ModelEma of g, or null for decay 0.
void check_g_ema(double decay, const char* who);
std::unique_ptr<optim::ModelEma> make_generator_ema(DcganGenerator& g, double decay, bool warmup);
// G(z) with the averages swapped in, without autograd, in G's current mode. In training
// mode the batch norms normalize with the averaged G's own batch statistics, and the
// running-statistic updates that forward makes are undone, so G's live weights and buffers
// and the averages are bitwise what they were. Throws naming g_ema_decay when ema is null.
Tensor generate_averaged(DcganGenerator& g, optim::ModelEma* ema, const Tensor& z, const char* who);
// A new generator (options `g_options`, on g's device) holding the averages, its batch-norm
// running statistics recomputed for the averaged weights ("standing statistics", Brock et al.
// 2019; nn::recompute_batchnorm_statistics) over `batches` batches of g_options.batch_size
// latents from a stream of its own (g_options.seed + kStandingSeedOffset), then put in eval mode.
// g, the averages and the GAN's random streams are untouched. Throws naming g_ema_decay when
// ema is null and naming `batches` when it is < 1.
constexpr uint64_t kStandingSeedOffset = 0x2545F4914F6CDD1Dull;
std::shared_ptr<DcganGenerator> averaged_generator(const DcganOptions& g_options, DcganGenerator& g,
                                                   optim::ModelEma* ema, int64_t batches, const char* who);

// A GAN trainer's training state, by reference, for the checkpoint functions both trainers share.
struct GanState {
  const char* kind;        // "dcgan" or "wgan-gp": stored in the sidecar's extra.gan, checked on load
  nlohmann::json options;  // every option (the sidecar's config), compared on load
  nn::Module& g;
  nn::Module& d;
  optim::AdamW& g_opt;
  optim::AdamW& d_opt;
  optim::ModelEma* g_ema;  // null: averaging off
  Generator& rng;
  ShuffledBatches& batches;
  int64_t& steps;
  const Replicas& replicas;
};
// The options as the sidecar stores them (one key per field).
nlohmann::json options_json(const DcganOptions& o);
// Writes the checkpoint for state.steps: tensors g.*, d.*, g_optim.*, d_optim.*, g_ema.* (when
// on), sampler.order (once drawn); sidecar rng "gan", "sampler" (and the modules' own, as g.NAME,
// d.NAME), sampler_position, config = the options, extra gan / g_ema_updates.
// With `background`, rank 0 hands the tensors to it (a snapshot; the write runs on its thread)
// and the info holds only meta. A write's error is raised, on every rank, by a later save or by
// wait_gan_checkpoints, which waits for the write in flight.
train::CheckpointInfo save_gan_checkpoint(train::CheckpointManager& checkpoints, const GanState& state,
                                          train::AsyncCheckpointWriter* background = nullptr);
void wait_gan_checkpoints(train::CheckpointManager& checkpoints, train::AsyncCheckpointWriter& background,
                          const Replicas& replicas);
// Restores it, checking the kind and the options before changing anything; throws naming the sidecar.
void load_gan_checkpoint(const train::CheckpointManager& checkpoints, const train::CheckpointInfo& info,
                         const GanState& state);
}  // namespace detail

}  // namespace hpdl::gan
