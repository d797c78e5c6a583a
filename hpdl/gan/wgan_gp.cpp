// WGAN-GP: the batch-norm-free critic, the gradient penalty (a gradient of the
// critic taken with create_graph, then differentiated again in the critic's
// weights), the critic and generator Adam steps, and the minibatch loop.
#include "hpdl/gan/wgan_gp.h"

#include <cmath>
#include <numeric>
#include <vector>

#include "hpdl/autograd/engine.h"
#include "hpdl/autograd/node.h"
#include "hpdl/dist/sync_batchnorm.h"
#include "hpdl/ops/ops.h"

namespace hpdl::gan {

DcganOptions WganGpOptions::generator_options() const {
  DcganOptions o;
  o.image_size = image_size;
  o.channels = channels;
  o.latent_dim = latent_dim;
  o.g_features = g_features;
  o.d_features = d_features;
  o.lr = lr;
  o.beta1 = beta1;
  o.beta2 = beta2;
  o.batch_size = batch_size;
  o.seed = seed;
  return o;
}

void check_wgan_gp_options(const WganGpOptions& o) {
  check_dcgan_options(o.generator_options());
  HPDL_CHECK(o.n_critic >= 1, "gan::WganGpOptions: n_critic must be >= 1, got {}", o.n_critic);
  HPDL_CHECK(o.gp_lambda >= 0 && std::isfinite(o.gp_lambda),
             "gan::WganGpOptions: gp_lambda must be finite and >= 0, got {}", o.gp_lambda);
  HPDL_CHECK(o.critic_norm == "none" || o.critic_norm == "layer" || o.critic_norm == "group",
             "gan::WganGpOptions: critic_norm must be none, layer or group, got '{}'", o.critic_norm);
  HPDL_CHECK(o.critic_norm != "group" || (o.critic_groups > 0 && (2 * o.d_features) % o.critic_groups == 0),
             "gan::WganGpOptions: critic_groups = {} must divide the {} channels of the critic's second convolution "
             "(2 * d_features)", o.critic_groups, 2 * o.d_features);
  detail::check_g_ema(o.g_ema_decay, "WganGpOptions");
}

// ---------------------------------------------------------------- critic

WganCritic::WganCritic(const WganGpOptions& o, Generator& gen) : channels_(o.channels), side_(o.image_size) {
  check_wgan_gp_options(o);
  const int64_t s = o.image_size / 4;
  const nn::Conv2dOptions down = nn::Conv2dOptions::k(4).s(2).p(1);  // halves H and W
  // The layers' default initialisation (the paper's code uses He-style
  // initialisations, not DCGAN's N(0, 0.02)).
  conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(o.channels, o.d_features, down, gen));
  conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(o.d_features, 2 * o.d_features, down, gen));
  if (o.critic_norm != "none")
    norm2 = register_module("norm2", std::make_shared<nn::GroupNorm>(o.critic_norm == "layer" ? 1 : o.critic_groups,
                                                                     2 * o.d_features));
  score = register_module("score", std::make_shared<nn::Linear>(2 * o.d_features * s * s, 1, true, gen));
}

Tensor WganCritic::forward(const Tensor& x) {
  HPDL_CHECK(x.ndim() == 4 && x.dim(1) == channels_ && x.dim(2) == side_ && x.dim(3) == side_,
             "gan::WganCritic: images must be [N, {}, {}, {}], got {}", channels_, side_, side_, shape_str(x.shape()));
  Tensor h = leaky_relu((*conv1)(x), 0.2);            // [N, d, S/2, S/2]
  h = (*conv2)(h);                                    // [N, 2d, S/4, S/4]
  if (norm2) h = (*norm2)(h);
  h = leaky_relu(h, 0.2);
  return (*score)(h.flatten(1)).reshape({x.dim(0)});  // [N]
}

// ---------------------------------------------------------------- the penalty

GradientPenalty gradient_penalty(const std::function<Tensor(const Tensor&)>& critic, const Tensor& real,
                                 const Tensor& fake, const Tensor& eps, double lambda) {
  HPDL_CHECK(real.defined() && fake.defined() && real.ndim() >= 2 && real.shape() == fake.shape(),
             "gan::gradient_penalty: real {} and fake {} must be defined and of one shape [N, ...]",
             real.defined() ? shape_str(real.shape()) : "undefined", fake.defined() ? shape_str(fake.shape()) : "undefined");
  const int64_t n = real.dim(0);
  HPDL_CHECK(eps.defined() && eps.ndim() == 1 && eps.dim(0) == n,
             "gan::gradient_penalty: eps must be [N] = [{}] (one mixing weight per sample), got {}", n,
             eps.defined() ? shape_str(eps.shape()) : "undefined");
  // xhat [N, ...] = eps x + (1 - eps) x~, a leaf: the penalty's gradient is taken in it.
  Shape bshape(real.ndim(), 1);
  bshape[0] = n;
  Tensor e = eps.detach().to(real.dtype()).reshape(bshape);
  Tensor xhat;
  {
    NoGradGuard no_grad;
    xhat = add(mul(real.detach(), e), mul(fake.detach(), add(neg(e), 1.0)));
  }
  xhat.set_requires_grad();
  Tensor scores = critic(xhat);
  HPDL_CHECK(scores.defined() && scores.ndim() == 1 && scores.dim(0) == n,
             "gan::gradient_penalty: the critic must return scores [{}], got {}", n,
             scores.defined() ? shape_str(scores.shape()) : "undefined");
  // Sample i's score depends only on xhat_i (no batch statistics in the
  // critic), so the gradient of the sum holds every per-sample gradient.
  Tensor g = grad({sum(scores)}, {xhat}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];  // [N, ...]
  std::vector<int64_t> axes(static_cast<size_t>(real.ndim() - 1));
  std::iota(axes.begin(), axes.end(), 1);
  // ||g_i|| = sqrt(sum g_i^2); the tiny floor keeps the square root's
  // derivative finite where a gradient vanishes (a dead critic).
  Tensor norms = sqrt(add(sum(square(g), axes), 1e-12));  // [N]
  GradientPenalty gp;
  gp.penalty = mul(mean(square(add(norms, -1.0))), lambda);
  gp.grad_norms = norms.detach();
  return gp;
}

// ---------------------------------------------------------------- training

WganGp::WganGp(const WganGpOptions& options, dist::Communicator* comm, const ReplicaOptions& replica)
    : options_(options), rng_(options.seed), batches_(options.batch_size, options.seed + detail::ShuffledBatches::kSeedOffset) {
  check_wgan_gp_options(options_);
  Generator init_gen(options_.seed ^ 0x9E3779B97F4A7C15ull);
  g_ = std::make_shared<DcganGenerator>(options_.generator_options(), init_gen);
  d_ = std::make_shared<WganCritic>(options_, init_gen);
  g_opt_ = detail::make_adam(*g_, options_.lr, options_.beta1, options_.beta2);
  d_opt_ = detail::make_adam(*d_, options_.lr, options_.beta1, options_.beta2);
  g_ema_ = detail::make_generator_ema(*g_, options_.g_ema_decay, options_.g_ema_warmup);
  replicas_ = std::make_unique<detail::Replicas>(comm, *g_, *d_, *g_opt_, *d_opt_, replica);
}

WganGp::~WganGp() = default;

Tensor WganGp::sample_latent(int64_t n) { return detail::sample_latent(n, options_.latent_dim, rng_, "WganGp"); }

Tensor WganGp::generate(const Tensor& z) {
  NoGradGuard no_grad;
  dist::LocalBatchNorm local(*g_);
  return (*g_)(z);
}

Tensor WganGp::generate_averaged(const Tensor& z) { return detail::generate_averaged(*g_, g_ema_.get(), z, "WganGp"); }

std::shared_ptr<DcganGenerator> WganGp::averaged_generator(int64_t stat_batches) {
  return detail::averaged_generator(options_.generator_options(), *g_, g_ema_.get(), stat_batches, "WganGp");
}

void WganGp::check_images(const Tensor& images, const char* what) const {
  detail::check_images(images, options_.channels, options_.image_size, "WganGp", what);
}

WganGpStepStats WganGp::critic_step(const Tensor& real) {
  check_images(real, "real");
  const int64_t b = real.dim(0), world = replicas_->world();
  // Latents and mixing weights for every rank's batch from the one stream, this rank's rows.
  Tensor fake;  // [B, C, S, S], no graph into G (a training forward: synchronized batch norm stays on)
  {
    NoGradGuard no_grad;
    fake = (*g_)(replicas_->mine(sample_latent(b * world)));
  }
  Tensor eps = replicas_->mine(Tensor::rand({b * world}, rng_, 0.0, 1.0));  // mixing weights, U[0, 1)
  replicas_->zero_grad_d();
  Tensor real_scores = (*d_)(real), fake_scores = (*d_)(fake);
  Tensor w_estimate = sub(mean(real_scores), mean(fake_scores));
  GradientPenalty gp = gradient_penalty([this](const Tensor& x) { return (*d_)(x); }, real, fake, eps,
                                        options_.gp_lambda);
  Tensor loss = add(neg(w_estimate), gp.penalty);
  std::vector<double> stats{loss.item(), w_estimate.item(), gp.penalty.item(), mean(gp.grad_norms).item()};
  replicas_->mean(stats);  // every rank reports, and checks, the same numbers
  WganGpStepStats st;
  st.critic_loss = stats[0], st.wasserstein = stats[1], st.penalty = stats[2], st.grad_norm = stats[3];
  HPDL_CHECK(std::isfinite(st.critic_loss), "gan::WganGp: the critic loss is {} after {} generator steps; lower lr ({})",
             st.critic_loss, steps_, options_.lr);
  loss.backward();
  replicas_->finish_d();
  d_opt_->step();
  return st;
}

double WganGp::generator_step(int64_t batch) {
  replicas_->zero_grad_g();
  std::vector<double> value(1);
  {
    // The critic's weight gradients would only be zeroed by the next critic step.
    detail::FrozenParameters frozen(*d_);
    Tensor loss = neg(mean((*d_)((*g_)(replicas_->mine(sample_latent(batch * replicas_->world()))))));
    value[0] = loss.item();
    replicas_->mean(value);
    HPDL_CHECK(std::isfinite(value[0]), "gan::WganGp: the generator loss is {} after {} generator steps; lower lr ({})",
               value[0], steps_, options_.lr);
    loss.backward();
  }
  replicas_->finish_g();
  g_opt_->step();
  replicas_->sync_d_buffers();  // (the critic has no running statistics today; kept for the rule)
  if (g_ema_) g_ema_->update();
  ++steps_;
  return value[0];
}

WganGpStepStats WganGp::train_step(const std::function<Tensor()>& next_batch) {
  WganGpStepStats st;
  int64_t b = 0;
  for (int64_t i = 0; i < options_.n_critic; ++i) {
    Tensor real = next_batch();
    st = critic_step(real);
    b = real.dim(0);
  }
  st.g_loss = generator_step(b);
  return st;
}

detail::GanState WganGp::state() {
  nlohmann::json options = detail::options_json(options_.generator_options());
  options.update({{"n_critic", options_.n_critic}, {"gp_lambda", options_.gp_lambda},
                  {"critic_norm", options_.critic_norm}, {"critic_groups", options_.critic_groups},
                  {"g_ema_decay", options_.g_ema_decay}, {"g_ema_warmup", options_.g_ema_warmup}});
  return {"wgan-gp", std::move(options), *g_, *d_, *g_opt_, *d_opt_, g_ema_.get(), rng_, batches_, steps_, *replicas_};
}

train::CheckpointInfo WganGp::save_checkpoint(train::CheckpointManager& checkpoints,
                                              train::AsyncCheckpointWriter* background) {
  return detail::save_gan_checkpoint(checkpoints, state(), background);
}

void WganGp::wait_for_checkpoints(train::CheckpointManager& checkpoints, train::AsyncCheckpointWriter& background) {
  detail::wait_gan_checkpoints(checkpoints, background, *replicas_);
}

void WganGp::load_checkpoint(const train::CheckpointManager& checkpoints, const train::CheckpointInfo& info) {
  detail::load_gan_checkpoint(checkpoints, info, state());
}

WganGpStepStats train_wgan_gp(WganGp& gan, const Tensor& images, int64_t steps,
                              const std::function<void(int64_t, const WganGpStepStats&)>& on_step) {
  const WganGpOptions& o = gan.options();
  const detail::Replicas& r = gan.replicas();
  gan.minibatches().check(images, o.channels, o.image_size, "train_wgan_gp", r.world());
  HPDL_CHECK(steps >= 0, "gan::train_wgan_gp: steps must be >= 0, got {}", steps);
  WganGpStepStats last;
  for (int64_t i = 0; i < steps; ++i) {
    last = gan.train_step([&] { return gan.minibatches().next(images, r.rank(), r.world()); });
    if (on_step) on_step(gan.steps(), last);
  }
  return last;
}

}  // namespace hpdl::gan
