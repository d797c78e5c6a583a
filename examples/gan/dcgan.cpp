// hpdl_dcgan: trains a DCGAN (hpdl/gan) on Fashion-MNIST, prints the D and G
// losses, writes sample grids, and scores the samples with a LeNet-5
// Fashion-MNIST classifier: the mean max-softmax confidence, the entropy of the
// predicted-class histogram (diversity; log 10 = 2.303 is uniform) and an
// inception-score-like exp(E KL(p(y|x) || p(y))), next to the same numbers for
// real test images and for the untrained generator. --loss wgan-gp trains the
// same generator as a WGAN-GP instead (gan/wgan_gp.h: a batch-norm-free critic,
// gradient penalty, n_critic critic steps per generator step, Adam(1e-4, 0, 0.9));
// --critic-norm layer|group puts the paper's per-sample normalization in the critic.
// --g-ema DECAY also keeps an exponential moving average of G's weights (g_ema_decay,
// optim::ModelEma) and writes, next to the live G's outputs, its grids
// (samples_avg_step*.png), its scores, and its ONNX graph (generator_avg.onnx).
// --checkpoint-every N writes the whole training state every N steps (and at the
// last) to DIR/checkpoints (train::CheckpointManager, the newest 2 kept); --resume
// continues the run in DIR from its newest valid checkpoint up to --steps in all,
// loading DIR/classifier.safetensors instead of training the classifier again: a
// run killed after k steps and resumed ends bitwise where the straight run ends (same
// options and thread count; other options are refused, naming the differences). With either
// flag the run also takes the job signals (train::JobSignals, docs/jobs.md): SIGUSR1 writes a
// checkpoint after the current step and goes on; SIGTERM writes one and stops (exit 0, "stopped
// by signal"), for a batch job's time limit. Data parallel, the ranks agree on them every step.
// --checkpoint-async hands each checkpoint to a background writer (train::AsyncCheckpointWriter,
// as train.checkpoint_async does): training waits for a snapshot, not the write.
//
//   build/bin/hpdl_dcgan [--loss dcgan|wgan-gp] [--n-critic K] [--gp-lambda L] [--critic-norm none|layer|group] [--critic-groups G] [--g-ema DECAY] [--steps N] [--batch B] [--features F] [--seed S] [--train-images M] [--out DIR]
//                        [--classifier PATH | --classifier-steps N] [--score-samples K]
//                        [--log-every N] [--grid-every N] [--threads T] [--layout nhwc|nchw] [--checkpoint-every N] [--checkpoint-async] [--resume] [--sync-bn]
//   build/bin/hpdl_dcgan --bench-steps N [--warmup W] [--batch B] [--features F] [--threads T] [--layout nhwc|nchw]
//
// Under mpirun the GAN trains data-parallel (design decision 79): each of R ranks draws --batch
// images and latents per step (a global batch of R x --batch), the gradients are averaged,
// and rank 0 alone trains the classifier, prints, scores and writes the files; --bench-steps
// then times the data-parallel step (HPDL_RANKS=R bench/gan/run.sh). --sync-bn normalizes G's and
// D's batch norms over all ranks' batches (gan::ReplicaOptions::sync_batchnorm):
//   mpirun -np 2 build/bin/hpdl_dcgan --threads 1 --steps 600
//
// --layout: the CPU activations' memory layout between layers (design decision 75):
// channels-last, `hpdl train`'s default, or row-major NCHW (what ran before).
//
// --bench-steps times N training steps (G and D updates, minibatch gather
// included) after W untimed ones (default 10) and prints only that: no
// classifier, no grids, no files (bench/gan/run.sh against PyTorch).
//
// The classifier is trained first on the same [-1, 1] images (and saved to
// DIR/classifier.safetensors) unless --classifier names such a file. The
// trained generator is written as DIR/generator.onnx (gan::save_generator_onnx,
// docs/onnx.md). See docs/gan.md for measured numbers.
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/data/readers.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/gan/dcgan.h"
#include "hpdl/gan/wgan_gp.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/autocast.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/train/checkpoint.h"
#include "hpdl/train/signals.h"

namespace {

using namespace hpdl;
namespace fs = std::filesystem;

struct Args {
  int64_t steps = 600, batch = 64, train_images = 0, classifier_steps = 600, score_samples = 2000;
  int64_t features = 64, log_every = 100, grid_every = 200;
  int64_t bench_steps = 0, warmup = 10;  // bench_steps > 0: only time the training steps
  uint64_t seed = 0;
  int threads = 0;  // 0: OpenMP's default
  std::string layout = "nhwc";  // CPU activations: nhwc (channels-last) or nchw
  fs::path out = "dcgan_out";
  fs::path classifier;
  std::string loss = "dcgan";  // or "wgan-gp"
  int64_t n_critic = 5;
  double gp_lambda = 10;
  std::string critic_norm = "none";  // WGAN-GP critic: none, layer or group (gan/wgan_gp.h)
  int64_t critic_groups = 4;
  double g_ema = 0;  // generator weight averaging decay; 0: off
  int64_t checkpoint_every = 0;  // 0: no checkpoints
  bool checkpoint_async = false; // rank 0 writes checkpoints from a background thread
  bool resume = false;           // continue from the newest valid checkpoint in out
  bool sync_bn = false;          // data parallel: batch norm over all ranks' batches
};

// The data-parallel world (null on one process) and whether this is rank 0, the one that
// prints and writes files.
dist::Communicator* g_comm = nullptr;
bool g_root = true;

// printf on rank 0 only.
void say(const char* format, ...) __attribute__((format(printf, 1, 2)));
void say(const char* format, ...) {
  if (!g_root) return;
  va_list args;
  va_start(args, format);
  std::vprintf(format, args);
  va_end(args);
}

gan::ReplicaOptions replica_options(const Args& a) {
  gan::ReplicaOptions r;
  r.sync_batchnorm = a.sync_bn;
  return r;
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// What a GAN run after the classifier works with.
struct Run {
  const Args& a;
  Tensor train_x, test_x;
  nn::Module& classifier;
  int64_t k;  // samples scored
  Clock::time_point start;
  std::unique_ptr<train::CheckpointManager> checkpoints;  // null: neither --checkpoint-every nor --resume
  std::optional<train::CheckpointInfo> resume_from;       // --resume: the checkpoint to continue from
  std::unique_ptr<train::JobSignals> signals;             // with checkpoints: SIGTERM / SIGUSR1
  std::unique_ptr<train::AsyncCheckpointWriter> writer;   // --checkpoint-async: the background writer
};

// Rows [first, first + n) of x.
Tensor rows(const Tensor& x, int64_t first, int64_t n) { return x.slice(0, first, first + n).contiguous(); }

// 0..m-1 in a random order (Fisher-Yates).
std::vector<int64_t> shuffled(int64_t m, Generator& gen) {
  std::vector<int64_t> v(m);
  for (int64_t i = 0; i < m; ++i) v[i] = i;
  for (int64_t i = m - 1; i > 0; --i) std::swap(v[i], v[static_cast<int64_t>(gen.next_uniform() * (i + 1))]);
  return v;
}

// LeNet-5 trained with Adam (lr 1e-3, batch 128) for `steps` steps over shuffled
// epochs of the training images; reports its test accuracy.
nn::ModulePtr train_classifier(const Tensor& x, const Tensor& y, int64_t steps, uint64_t seed) {
  nn::ModulePtr net = nn::models::lenet5(1, 10, 28, 28, seed);
  optim::AdamWOptions adam;
  adam.lr = 1e-3;
  adam.weight_decay = 0;
  optim::AdamW opt(optim::param_specs(*net), adam);
  const int64_t m = x.dim(0), b = 128;
  Generator gen(seed + 17);
  const std::vector<int64_t> labels = y.to_vector<int64_t>();
  std::vector<int64_t> order;
  int64_t next = m;
  for (int64_t step = 1; step <= steps; ++step) {
    if (next + b > m) order = shuffled(m, gen), next = 0;
    std::vector<int64_t> idx(order.begin() + next, order.begin() + next + b), target(b);
    for (int64_t i = 0; i < b; ++i) target[i] = labels[idx[i]];
    next += b;
    opt.zero_grad();
    Tensor loss = cross_entropy((*net)(index_select(x, 0, Tensor::from_vector(idx, {b}))), Tensor::from_vector(target, {b}));
    loss.backward();
    opt.step();
    if (step % 250 == 0 || step == steps)
      say("classifier step %5lld  loss %.4f\n", static_cast<long long>(step), loss.item());
  }
  return net;
}

// The classifier's logits for images [M, 1, 28, 28], in batches, no autograd.
Tensor logits_of(nn::Module& net, const Tensor& images) {
  NoGradGuard no_grad;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < images.dim(0); i += 500)
    parts.push_back(net(rows(images, i, std::min<int64_t>(500, images.dim(0) - i))));
  return cat(parts, 0);
}

double accuracy(const Tensor& logits, const Tensor& labels) {
  std::vector<int64_t> pred = argmax(logits, 1).to_vector<int64_t>(), y = labels.to_vector<int64_t>();
  double ok = 0;
  for (size_t i = 0; i < y.size(); ++i) ok += pred[i] == y[i];
  return ok / static_cast<double>(y.size());
}

// k generator samples in batches of the training batch size, in G's current mode (the
// example keeps G in training mode, as during training), from the averaged weights when asked.
// Data parallel, the other ranks call it too, to draw the same latents from the GAN's stream
// (every rank's must stay alike), and get an undefined tensor: only rank 0 runs G on them.
template <typename Gan>
Tensor samples(Gan& gan, int64_t k, bool averaged = false, gan::DcganGenerator* standalone = nullptr) {
  std::vector<Tensor> parts;
  const int64_t b = gan.options().batch_size;
  for (int64_t i = 0; i < k; i += b) {
    Tensor z = gan.sample_latent(std::min(b, k - i));
    if (!g_root) continue;
    if (standalone) {
      NoGradGuard no_grad;
      parts.push_back((*standalone)(z));
    } else {
      parts.push_back(averaged ? gan.generate_averaged(z) : gan.generate(z));
    }
  }
  return g_root ? cat(parts, 0) : Tensor();
}

void report(const char* what, const gan::ClassifierScore& s) {
  say("%s: confidence %.3f, class entropy %.3f (uniform 2.303), score %.2f\n", what, s.confidence,
              s.class_entropy, s.inception_score);
}

// The grids of step `step` from the fixed latents: the live G's, and the averaged G's when averaging is on.
template <typename Gan>
void write_grids(Gan& gan, const Tensor& fixed_z, const fs::path& out, int64_t step) {
  const std::string n = std::to_string(step) + ".png";
  gan::write_image_grid(out / ("samples_step" + n), gan.generate(fixed_z), 8);
  if (gan.generator_ema()) gan::write_image_grid(out / ("samples_avg_step" + n), gan.generate_averaged(fixed_z), 8);
}

// After training: the scores of k samples and the ONNX generator(s). With averaging, the
// averaged G is scored in training mode (its own batch statistics, as the live G), in eval
// mode with the averaged running statistics, and in eval mode with running statistics
// recomputed for the averaged weights (gan.averaged_generator(): what generator_avg.onnx
// computes); the live G in eval mode too (what generator.onnx computes), for comparison.
template <typename Gan>
void finish(Gan& gan, nn::Module& classifier, int64_t k, const fs::path& out) {
  auto score = [&](bool averaged, gan::DcganGenerator* standalone = nullptr) {
    return gan::classifier_score(logits_of(classifier, samples(gan, k, averaged, standalone)));
  };
  report("trained generator", score(false));
  std::shared_ptr<gan::DcganGenerator> averaged_g;
  if (gan.generator_ema()) {
    report("averaged generator", score(true));
    gan.generator().eval();
    report("trained generator, eval-mode batch norm (generator.onnx)", score(false));
    report("averaged generator, eval-mode batch norm, averaged running statistics", score(true));
    gan.generator().train();
    averaged_g = gan.averaged_generator();
    report("averaged generator, eval-mode batch norm, standing statistics (generator_avg.onnx)",
           score(false, averaged_g.get()));
  }
  const auto& o = gan.options();
  const std::string doc = fmt::format("input z [N, {}], output images [N, {}, {}, {}]; eval-mode batch norm",
                                      o.latent_dim, o.channels, o.image_size, o.image_size);
  gan::save_generator_onnx(out / "generator.onnx", gan.generator());
  say("generator as ONNX: %s (%s)\n", (out / "generator.onnx").string().c_str(), doc.c_str());
  if (optim::ModelEma* ema = gan.generator_ema()) {
    gan::save_generator_onnx(out / "generator_avg.onnx", *averaged_g);
    say("averaged generator (decay %g, %lld updates) as ONNX: %s (%s)\n", o.g_ema_decay,
                static_cast<long long>(ema->updates()), (out / "generator_avg.onnx").string().c_str(), doc.c_str());
  }
}

// --bench-steps: W warm-up steps, then N timed ones, in one train_dcgan loop.
void bench(const Args& a) {
  Tensor train_x = gan::load_fashion_mnist_images(data::kFashionMnistDir, true, a.train_images);
  gan::DcganOptions o;
  o.batch_size = a.batch;
  o.g_features = o.d_features = a.features;
  o.seed = a.seed;
  gan::Dcgan gan(o, g_comm, replica_options(a));
  Clock::time_point t = Clock::now();
  const gan::DcganStepStats last =
      gan::train_dcgan(gan, train_x, a.warmup + a.bench_steps, [&](int64_t step, const gan::DcganStepStats&) {
        if (step == a.warmup) t = Clock::now();
      });
  const double s = since(t);
  say("hpdl dcgan: %lld steps in %.3f s (%.1f ms/step), %d threads, after %lld warm-up, layout %s, %d rank(s) of "
      "batch %lld; last D loss %.4f G loss %.4f\n",
      static_cast<long long>(a.bench_steps), s, 1e3 * s / static_cast<double>(a.bench_steps), num_threads(),
      static_cast<long long>(a.warmup), a.layout.c_str(), gan.replicas().world(), static_cast<long long>(a.batch),
      last.d_loss, last.g_loss);
}

// The start of a GAN run: the fixed latents of every grid (the first 64 of the GAN's stream),
// then real.png, the step-0 grids and the untrained G's scores; on --resume the checkpoint's
// state instead (it replaces the stream after the latents are drawn, and the start's files exist).
template <typename Gan>
Tensor start_or_resume(Gan& gan, const Run& r) {
  Tensor fixed_z = gan.sample_latent(64);
  if (r.resume_from) {
    gan.load_checkpoint(*r.checkpoints, *r.resume_from);
    say("resumed from %s at step %lld of %lld\n", r.resume_from->sidecar_path.string().c_str(),
                static_cast<long long>(gan.steps()), static_cast<long long>(r.a.steps));
    return fixed_z;
  }
  if (g_root) {
    gan::write_image_grid(r.a.out / "real.png", rows(r.test_x, 0, 64), 8);
    write_grids(gan, fixed_z, r.a.out, 0);
  }
  const Tensor untrained = samples(gan, r.k);  // on every rank: it draws from the GAN's stream
  if (g_root) report("untrained generator", gan::classifier_score(logits_of(r.classifier, untrained)));
  return fixed_z;
}

// After training step `step`: the periodic grids, then the checkpoint (after the grids: in
// training mode they move G's batch-norm running statistics, and the straight run's do too),
// periodic or asked for by a job signal. Returns true when a SIGTERM asks the run to stop
// (after that checkpoint). Data parallel, the signal flags are agreed on in one allreduce.
template <typename Gan>
bool after_step(Gan& gan, const Run& r, const Tensor& fixed_z, int64_t step) {
  if (g_root && step % r.a.grid_every == 0) write_grids(gan, fixed_z, r.a.out, step);
  int64_t flags[2] = {0, 0};  // stop, checkpoint
  if (r.signals) {
    flags[0] = r.signals->stop_requested(), flags[1] = r.signals->checkpoint_requested();
    r.signals->clear_checkpoint_request();
    if (g_comm) g_comm->allreduce(flags, 2, DType::i64, dist::ReduceKind::max);
  }
  const bool periodic = r.a.checkpoint_every > 0 && (step % r.a.checkpoint_every == 0 || step == r.a.steps);
  if ((periodic || flags[0] || flags[1]) && r.writer) {  // collective
    gan.save_checkpoint(*r.checkpoints, r.writer.get());
    say("checkpoint: step %lld, written in the background\n", static_cast<long long>(step));
  } else if (periodic || flags[0] || flags[1]) {
    say("checkpoint: %s\n", gan.save_checkpoint(*r.checkpoints).sidecar_path.string().c_str());
  }
  if (flags[0] && r.writer) gan.wait_for_checkpoints(*r.checkpoints, *r.writer);
  if (flags[0])
    say("hpdl_dcgan: stopped by signal at step %lld after a checkpoint; continue with --resume --out %s\n",
        static_cast<long long>(step), r.a.out.string().c_str());
  return flags[0] != 0;
}

// Trains to --steps, one step a call of `train` (train_dcgan or train_wgan_gp) so that a SIGTERM
// can end the run after any step: `log(step, stats)` every --log-every steps and at the last,
// then after_step. Returns the steps trained; `stopped` tells whether a signal ended them early.
template <typename Gan, typename Stats, typename Log>
int64_t train_steps(Gan& gan, const Run& r, const Tensor& fixed_z,
                    Stats (*train)(Gan&, const Tensor&, int64_t, const std::function<void(int64_t, const Stats&)>&),
                    bool& stopped, const Log& log) {
  const int64_t todo = r.a.steps - gan.steps();
  int64_t done = 0;
  for (stopped = false; done < todo && !stopped; ++done)
    train(gan, r.train_x, 1, [&](int64_t step, const Stats& st) {
      if (step % r.a.log_every == 0 || step == r.a.steps) log(step, st);
      stopped = after_step(gan, r, fixed_z, step);
    });
  if (r.writer) {  // the last background write is finished (or its error raised) before the run ends
    gan.wait_for_checkpoints(*r.checkpoints, *r.writer);
    say("checkpoints: %.3f s of training time spent on them (snapshots and waits)\n", r.writer->blocked_seconds());
  }
  return done;
}

// The grids of the last step, when not periodic, after the last checkpoint (a longer run has
// no grid there); the scores and the ONNX generator(s).
template <typename Gan>
void end_run(Gan& gan, const Run& r, const Tensor& fixed_z) {
  if (!g_root) return;
  if (r.a.steps % r.a.grid_every != 0) write_grids(gan, fixed_z, r.a.out, r.a.steps);
  finish(gan, r.classifier, r.k, r.a.out);
}

// The DCGAN run after the classifier: grids, losses, scores, the ONNX generator.
void run_dcgan(const Run& r) {
  const Args& a = r.a;
  gan::DcganOptions o;
  o.batch_size = a.batch;
  o.g_features = o.d_features = a.features;
  o.seed = a.seed;
  o.g_ema_decay = a.g_ema;
  gan::Dcgan gan(o, g_comm, replica_options(a));
  const Tensor fixed_z = start_or_resume(gan, r);
  say("DCGAN: G %lld parameters, D %lld parameters, Adam lr %g betas (%g, %g), batch %lld x %d rank(s), %lld steps\n",
      static_cast<long long>(gan.generator().num_parameters()),
      static_cast<long long>(gan.discriminator().num_parameters()), o.lr, o.beta1, o.beta2,
      static_cast<long long>(o.batch_size), gan.replicas().world(), static_cast<long long>(a.steps));
  const auto t = Clock::now();
  bool stopped = false;
  const int64_t todo = train_steps(gan, r, fixed_z, gan::train_dcgan, stopped,
                                   [&](int64_t step, const gan::DcganStepStats& st) {
    say("step %5lld  D loss %.4f  G loss %.4f  D(x) %.3f  D(G(z)) %.3f  D accuracy %.3f  %.1f s\n",
        static_cast<long long>(step), st.d_loss, st.g_loss, st.d_real, st.d_fake, st.d_accuracy, since(t));
  });
  const double train_s = since(t);
  say("trained %lld steps in %.1f s (%.0f images/s)\n", static_cast<long long>(todo), train_s,
      todo * a.batch * gan.replicas().world() / std::max(train_s, 1e-9));
  if (stopped) return;
  end_run(gan, r, fixed_z);
  say("sample grids in %s (real.png, samples_step*.png%s); total %.1f s\n", a.out.string().c_str(),
              gan.generator_ema() ? ", samples_avg_step*.png from the averaged G" : "", since(r.start));
}

// The same for WGAN-GP: the critic's loss, Wasserstein estimate, penalty and
// input-gradient norm instead of D's losses; the same grids and scores.
void run_wgan_gp(const Run& r) {
  const Args& a = r.a;
  gan::WganGpOptions o;
  o.batch_size = a.batch;
  o.g_features = o.d_features = a.features;
  o.seed = a.seed;
  o.n_critic = a.n_critic;
  o.gp_lambda = a.gp_lambda;
  o.critic_norm = a.critic_norm;
  o.critic_groups = a.critic_groups;
  o.g_ema_decay = a.g_ema;
  gan::WganGp gan(o, g_comm, replica_options(a));
  const Tensor fixed_z = start_or_resume(gan, r);
  say("WGAN-GP: G %lld parameters, critic %lld parameters, Adam lr %g betas (%g, %g), batch %lld x %d rank(s), "
              "%lld generator steps of %lld critic steps, lambda %g, critic norm %s\n",
              static_cast<long long>(gan.generator().num_parameters()),
              static_cast<long long>(gan.critic().num_parameters()), o.lr, o.beta1, o.beta2,
              static_cast<long long>(o.batch_size), gan.replicas().world(), static_cast<long long>(a.steps),
              static_cast<long long>(o.n_critic), o.gp_lambda, o.critic_norm.c_str());
  const auto t = Clock::now();
  bool stopped = false;
  const int64_t todo = train_steps(gan, r, fixed_z, gan::train_wgan_gp, stopped,
                                   [&](int64_t step, const gan::WganGpStepStats& st) {
    say("step %5lld  critic loss %.4f  W estimate %.4f  penalty %.4f  grad norm %.3f  G loss %.4f  %.1f s\n",
        static_cast<long long>(step), st.critic_loss, st.wasserstein, st.penalty, st.grad_norm, st.g_loss, since(t));
  });
  const double train_s = since(t);
  say("trained %lld generator steps in %.1f s (%.0f real images/s through the critic)\n",
              static_cast<long long>(todo), train_s,
              todo * o.n_critic * a.batch * gan.replicas().world() / std::max(train_s, 1e-9));
  if (stopped) return;
  end_run(gan, r, fixed_z);
  say("sample grids in %s; total %.1f s\n", a.out.string().c_str(), since(r.start));
}

void run(const Args& a) {
  const auto start = Clock::now();
  fs::create_directories(a.out);
  // Checkpoints first: a --resume without one fails before any work.
  std::unique_ptr<train::CheckpointManager> checkpoints;
  std::optional<train::CheckpointInfo> resume_from;
  std::unique_ptr<train::JobSignals> signals;
  if (a.checkpoint_every > 0 || a.resume) {
    checkpoints = std::make_unique<train::CheckpointManager>(a.out, 2);
    signals = std::make_unique<train::JobSignals>();  // before the compute threads start: they block the signals
  }
  if (a.resume) {
    std::vector<std::string> problems;
    resume_from = checkpoints->latest_valid(&problems);
    for (auto& p : problems) say("hpdl_dcgan: %s\n", p.c_str());
    HPDL_CHECK(resume_from.has_value(),
               "hpdl_dcgan: --resume: no valid checkpoint in {} (run without --resume to start, with --checkpoint-every "
               "N to write them)", checkpoints->dir().string());
    HPDL_CHECK(resume_from->meta.step <= a.steps,
               "hpdl_dcgan: --resume: the checkpoint {} is at step {}, past --steps {} (the total, not the steps to add)",
               resume_from->sidecar_path.string(), resume_from->meta.step, a.steps);
  }
  Tensor train_y, test_y;
  Tensor train_x = gan::load_fashion_mnist_images(data::kFashionMnistDir, true, a.train_images, &train_y);
  Tensor test_x = gan::load_fashion_mnist_images(data::kFashionMnistDir, false, 0, &test_y);
  say("hpdl_dcgan: Fashion-MNIST %lld training images in [-1, 1], %d threads%s, seed %llu\n",
      static_cast<long long>(train_x.dim(0)), num_threads(),
      g_comm ? fmt::format(" on each of {} ranks", g_comm->size()).c_str() : "", static_cast<unsigned long long>(a.seed));

  // ---- the classifier that scores the samples (on --resume the one the run trained) ----
  nn::ModulePtr classifier;
  const fs::path trained = a.out / "classifier.safetensors";
  const fs::path classifier_file = !a.classifier.empty() ? a.classifier : a.resume && fs::exists(trained) ? trained : "";
  if (!g_root) {
    classifier = nn::models::lenet5(1, 10, 28, 28, a.seed);  // never used: rank 0 alone scores
  } else if (!classifier_file.empty()) {
    classifier = nn::models::lenet5(1, 10, 28, 28, a.seed);
    classifier->load_state_dict(io::load_safetensors(classifier_file).tensors);
    say("classifier: LeNet-5 loaded from %s\n", classifier_file.string().c_str());
  } else {
    const auto t = Clock::now();
    classifier = train_classifier(train_x, train_y, a.classifier_steps, a.seed);
    io::save_safetensors(trained, classifier->state_dict());
    say("classifier: LeNet-5 trained for %lld steps in %.1f s, saved to %s\n",
                static_cast<long long>(a.classifier_steps), since(t), trained.string().c_str());
  }
  classifier->eval();
  const int64_t k = std::min(a.score_samples, test_x.dim(0));
  if (g_root) {
    say("classifier: test accuracy %.4f on %lld images\n", accuracy(logits_of(*classifier, test_x), test_y),
        static_cast<long long>(test_x.dim(0)));
    report("real test images", gan::classifier_score(logits_of(*classifier, rows(test_x, 0, k))));
  }

  // Data parallel: the other ranks wait for rank 0's classifier asleep, and for its scores and files at the end.
  if (g_comm) g_comm->idle_barrier();
  std::unique_ptr<train::AsyncCheckpointWriter> writer;
  if (a.checkpoint_async) writer = std::make_unique<train::AsyncCheckpointWriter>(*checkpoints);
  const Run r{a, train_x, test_x, *classifier, k, start, std::move(checkpoints), std::move(resume_from),
              std::move(signals), std::move(writer)};
  if (a.loss == "wgan-gp")
    run_wgan_gp(r);
  else
    run_dcgan(r);
  if (g_comm) g_comm->idle_barrier();
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // a line at a time into a batch job's log, as it is printed
  try {
    for (int i = 1; i < argc; ++i) {
      std::string s = argv[i];
      auto value = [&]() -> std::string {
        HPDL_CHECK(i + 1 < argc, "hpdl_dcgan: {} needs a value", s);
        return argv[++i];
      };
      if (s == "--steps") a.steps = std::stoll(value());
      else if (s == "--loss") a.loss = value();
      else if (s == "--n-critic") a.n_critic = std::stoll(value());
      else if (s == "--gp-lambda") a.gp_lambda = std::stod(value());
      else if (s == "--critic-norm") a.critic_norm = value();
      else if (s == "--critic-groups") a.critic_groups = std::stoll(value());
      else if (s == "--g-ema") a.g_ema = std::stod(value());
      else if (s == "--batch") a.batch = std::stoll(value());
      else if (s == "--seed") a.seed = std::stoull(value());
      else if (s == "--train-images") a.train_images = std::stoll(value());
      else if (s == "--out") a.out = value();
      else if (s == "--classifier") a.classifier = value();
      else if (s == "--classifier-steps") a.classifier_steps = std::stoll(value());
      else if (s == "--score-samples") a.score_samples = std::stoll(value());
      else if (s == "--features") a.features = std::stoll(value());
      else if (s == "--log-every") a.log_every = std::stoll(value());
      else if (s == "--grid-every") a.grid_every = std::stoll(value());
      else if (s == "--threads") a.threads = std::stoi(value());
      else if (s == "--bench-steps") a.bench_steps = std::stoll(value());
      else if (s == "--warmup") a.warmup = std::stoll(value());
      else if (s == "--layout") a.layout = value();
      else if (s == "--checkpoint-every") a.checkpoint_every = std::stoll(value());
      else if (s == "--checkpoint-async") a.checkpoint_async = true;
      else if (s == "--resume") a.resume = true;
      else if (s == "--sync-bn") a.sync_bn = true;
      else if (s == "-h" || s == "--help") {
        std::printf("usage: %s [--loss dcgan|wgan-gp] [--n-critic K] [--gp-lambda L] [--critic-norm none|layer|group] [--critic-groups G] [--g-ema DECAY] [--steps N] [--batch B] [--features F] [--seed S] [--train-images M] [--out DIR]\n"
                    "          [--classifier PATH | --classifier-steps N] [--score-samples K]\n"
                    "          [--log-every N] [--grid-every N] [--threads T] [--layout nhwc|nchw] [--checkpoint-every N] [--checkpoint-async] [--resume]\n"
                    "  --checkpoint-every N  write the training state to DIR/checkpoints every N steps and at the last (newest 2 kept)\n"
                    "  --checkpoint-async    write them from a background thread: training waits only for a snapshot\n"
                    "  --resume              continue the run in DIR from its newest valid checkpoint to --steps in all (same options)\n"
                    "  under mpirun -np R: data parallel, --batch images per rank and step (rank 0 prints and writes the files);\n"
                    "  --sync-bn              with it, batch norm in G and D over all ranks' batches (R x B trains as one batch of R * B)\n"
                    "       %s --bench-steps N [--warmup W] [--batch B] [--features F] [--threads T] [--layout nhwc|nchw]\n",
                    argv[0], argv[0]);
        return 0;
      } else {
        HPDL_FAIL("hpdl_dcgan: unknown option '{}' (see --help)", s);
      }
    }
    HPDL_CHECK(a.critic_norm == "none" || a.critic_norm == "layer" || a.critic_norm == "group",
               "hpdl_dcgan: --critic-norm '{}' must be none, layer or group", a.critic_norm);
    HPDL_CHECK(a.critic_norm == "none" || a.loss == "wgan-gp", "hpdl_dcgan: --critic-norm needs --loss wgan-gp");
    HPDL_CHECK(a.features >= 1, "hpdl_dcgan: --features {} must be >= 1", a.features);
    HPDL_CHECK(a.g_ema >= 0 && a.g_ema < 1, "hpdl_dcgan: --g-ema {} must be in (0, 1) (0: no generator averaging)",
               a.g_ema);
    HPDL_CHECK(a.g_ema == 0 || a.bench_steps == 0, "hpdl_dcgan: --bench-steps times plain training (drop --g-ema)");
    HPDL_CHECK(a.steps >= 1, "hpdl_dcgan: --steps {} must be >= 1", a.steps);
    HPDL_CHECK(a.train_images >= 0, "hpdl_dcgan: --train-images {} must be >= 0 (0: all 60000)", a.train_images);
    HPDL_CHECK(a.classifier_steps >= 1, "hpdl_dcgan: --classifier-steps {} must be >= 1", a.classifier_steps);
    HPDL_CHECK(a.score_samples >= 1, "hpdl_dcgan: --score-samples {} must be >= 1", a.score_samples);
    HPDL_CHECK(a.log_every >= 1 && a.grid_every >= 1, "hpdl_dcgan: --log-every and --grid-every must be >= 1");
    HPDL_CHECK(a.threads >= 0, "hpdl_dcgan: --threads {} must be >= 0", a.threads);
    HPDL_CHECK(a.bench_steps >= 0 && a.warmup >= 0, "hpdl_dcgan: --bench-steps {} and --warmup {} must be >= 0",
               a.bench_steps, a.warmup);
    HPDL_CHECK(a.loss == "dcgan" || a.loss == "wgan-gp", "hpdl_dcgan: --loss '{}' must be dcgan or wgan-gp", a.loss);
    HPDL_CHECK(a.bench_steps == 0 || a.loss == "dcgan", "hpdl_dcgan: --bench-steps times the DCGAN only (drop --loss {})",
               a.loss);
    HPDL_CHECK(a.checkpoint_every >= 0, "hpdl_dcgan: --checkpoint-every {} must be >= 0 (0: none)", a.checkpoint_every);
    HPDL_CHECK(!a.checkpoint_async || a.checkpoint_every > 0 || a.resume,
               "hpdl_dcgan: --checkpoint-async needs --checkpoint-every N (or --resume): it says how checkpoints are "
               "written, not when");
    HPDL_CHECK(a.bench_steps == 0 || (a.checkpoint_every == 0 && !a.resume),
               "hpdl_dcgan: --bench-steps times plain training (drop --checkpoint-every and --resume)");
    HPDL_CHECK(a.layout == "nhwc" || a.layout == "nchw", "hpdl_dcgan: --layout '{}' must be nhwc or nchw", a.layout);
    if (a.threads > 0) set_num_threads(a.threads);
    set_cpu_channels_last(a.layout == "nhwc");
    dist::init(&argc, &argv);
    dist::Communicator& world = dist::Communicator::world();
    g_comm = world.size() > 1 ? &world : nullptr;
    g_root = world.rank() == 0;
    if (a.bench_steps > 0)
      bench(a);
    else
      run(a);
  } catch (const std::exception& e) {
    // Under mpirun a failing rank ends the whole job rather than leaving the others in a collective.
    if (g_comm) {
      const auto* error = dynamic_cast<const Error*>(&e);
      g_comm->abort(std::string("error: ") + (error ? error->message() : e.what()));
    }
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
