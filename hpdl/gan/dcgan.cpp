// DCGAN: the two networks, the alternating Adam steps of the non-saturating
// GAN loss, a minibatch loop over an image tensor, Fashion-MNIST in [-1, 1],
// PNG sample grids and the classifier-based quality numbers.
#include "hpdl/gan/dcgan.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "hpdl/autograd/node.h"
#include "hpdl/data/dataset.h"
#include "hpdl/data/readers.h"
#include "hpdl/nn/init.h"
#include "hpdl/dist/sync_batchnorm.h"
#include "hpdl/ops/ops.h"
#include "hpdl/train/onnx_export.h"

namespace hpdl::gan {

void check_dcgan_options(const DcganOptions& o) {
  HPDL_CHECK(o.image_size >= 4 && o.image_size % 4 == 0,
             "gan::DcganOptions: image_size {} must be a positive multiple of 4 (two stride-2 layers)", o.image_size);
  HPDL_CHECK(o.channels >= 1, "gan::DcganOptions: channels must be >= 1, got {}", o.channels);
  HPDL_CHECK(o.latent_dim >= 1, "gan::DcganOptions: latent_dim must be >= 1, got {}", o.latent_dim);
  HPDL_CHECK(o.g_features >= 1, "gan::DcganOptions: g_features must be >= 1, got {}", o.g_features);
  HPDL_CHECK(o.d_features >= 1, "gan::DcganOptions: d_features must be >= 1, got {}", o.d_features);
  HPDL_CHECK(o.lr > 0 && std::isfinite(o.lr), "gan::DcganOptions: lr must be positive, got {}", o.lr);
  HPDL_CHECK(o.beta1 >= 0 && o.beta1 < 1, "gan::DcganOptions: beta1 must be in [0, 1), got {}", o.beta1);
  HPDL_CHECK(o.beta2 >= 0 && o.beta2 < 1, "gan::DcganOptions: beta2 must be in [0, 1), got {}", o.beta2);
  // Batch norm needs more than one value per channel; D's last one sees B * s * s.
  HPDL_CHECK(o.batch_size >= 2, "gan::DcganOptions: batch_size must be >= 2 (batch norm), got {}", o.batch_size);
  detail::check_g_ema(o.g_ema_decay, "DcganOptions");
}

namespace {

// The paper's initialisation: weights N(0, 0.02), biases 0.
template <typename Layer>
void dcgan_init(Layer& layer, Generator& gen) {
  nn::init::normal_(layer.weight, gen, 0.0, 0.02);
  if (layer.bias.defined()) nn::init::zeros_(layer.bias);
}
void dcgan_init_bn(nn::BatchNorm2d& bn, Generator& gen) {
  nn::init::normal_(bn.weight, gen, 1.0, 0.02);
  nn::init::zeros_(bn.bias);
}

const nn::ConvTranspose2dOptions kUp = nn::ConvTranspose2dOptions::k(4).s(2).p(1);  // doubles H and W
const nn::Conv2dOptions kDown = nn::Conv2dOptions::k(4).s(2).p(1);                  // halves H and W

}  // namespace

// ---------------------------------------------------------------- networks

DcganGenerator::DcganGenerator(const DcganOptions& o, Generator& gen)
    : features_(2 * o.g_features), side_(o.image_size / 4) {
  check_dcgan_options(o);
  project = register_module("project", std::make_shared<nn::Linear>(o.latent_dim, features_ * side_ * side_, true, gen));
  bn0 = register_module("bn0", std::make_shared<nn::BatchNorm2d>(features_));
  up1 = register_module("up1", std::make_shared<nn::ConvTranspose2d>(features_, o.g_features, kUp, gen));
  bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(o.g_features));
  up2 = register_module("up2", std::make_shared<nn::ConvTranspose2d>(o.g_features, o.channels, kUp, gen));
  dcgan_init(*project, gen);
  dcgan_init_bn(*bn0, gen);
  dcgan_init(*up1, gen);
  dcgan_init_bn(*bn1, gen);
  dcgan_init(*up2, gen);
}

Tensor DcganGenerator::forward(const Tensor& z) {
  HPDL_CHECK(z.ndim() == 2 && z.dim(1) == project->in_features,
             "gan::DcganGenerator: latents must be [N, {}], got {}", project->in_features, shape_str(z.shape()));
  Tensor h = (*project)(z).reshape({z.dim(0), features_, side_, side_});  // [N, 2g, s, s]
  h = bn0->forward_relu(h);
  h = bn1->forward_relu((*up1)(h));  // [N, g, 2s, 2s]
  return tanh((*up2)(h));            // [N, C, 4s, 4s]
}

DcganDiscriminator::DcganDiscriminator(const DcganOptions& o, Generator& gen)
    : channels_(o.channels), side_(o.image_size) {
  check_dcgan_options(o);
  const int64_t s = o.image_size / 4;
  conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(o.channels, o.d_features, kDown, gen));
  conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(o.d_features, 2 * o.d_features, kDown, gen));
  bn2 = register_module("bn2", std::make_shared<nn::BatchNorm2d>(2 * o.d_features));
  classify = register_module("classify", std::make_shared<nn::Linear>(2 * o.d_features * s * s, 1, true, gen));
  dcgan_init(*conv1, gen);
  dcgan_init(*conv2, gen);
  dcgan_init_bn(*bn2, gen);
  dcgan_init(*classify, gen);
}

Tensor DcganDiscriminator::forward(const Tensor& x) {
  HPDL_CHECK(x.ndim() == 4 && x.dim(1) == channels_ && x.dim(2) == side_ && x.dim(3) == side_,
             "gan::DcganDiscriminator: images must be [N, {}, {}, {}], got {}", channels_, side_, side_,
             shape_str(x.shape()));
  Tensor h = leaky_relu((*conv1)(x), 0.2);             // [N, d, 2s, 2s]
  h = leaky_relu((*bn2)((*conv2)(h)), 0.2);            // [N, 2d, s, s]
  return (*classify)(h.flatten(1)).reshape({x.dim(0)});  // [N]
}

// ---------------------------------------------------------------- ONNX export

// The graph of forward() above, node for node; bn->forward_relu is batch norm then Relu.
io::onnx::Model export_generator_onnx(DcganGenerator& g, const std::string& doc) {
  const int64_t latent = g.project->in_features;
  train::OnnxGraphBuilder b("z", {latent});
  Shape shape{latent};
  std::string h = b.emit(*g.project, "project", b.input(), shape);            // [N, 2g*s*s]
  h = b.reshape("project", h, shape, {g.features(), g.side(), g.side()});     // [N, 2g, s, s]
  h = b.node("Relu", "bn0", {b.emit(*g.bn0, "bn0", h, shape)});
  h = b.node("Relu", "bn1", {b.emit(*g.bn1, "bn1", b.emit(*g.up1, "up1", h, shape), shape)});  // [N, g, 2s, 2s]
  h = b.node("Tanh", "up2", {b.emit(*g.up2, "up2", h, shape)});                                // [N, C, 4s, 4s]
  return b.finish(h, shape, "images",
                  doc.empty() ? fmt::format("hpdl {} DCGAN generator: input 'z' float32 [N, {}] (N(0, 1) latents); "
                                            "output 'images' float32 [N, {}] in [-1, 1]",
                                            HPDL_VERSION, latent, fmt::join(shape, ", "))
                              : doc);
}

void save_generator_onnx(const std::filesystem::path& path, DcganGenerator& g, const std::string& doc) {
  io::onnx::write_model(path, export_generator_onnx(g, doc));
}

// ---------------------------------------------------------------- training

Dcgan::Dcgan(const DcganOptions& options, dist::Communicator* comm, const ReplicaOptions& replica)
    : options_(options), rng_(options.seed), batches_(options.batch_size, options.seed + detail::ShuffledBatches::kSeedOffset) {
  check_dcgan_options(options_);
  Generator init_gen(options_.seed ^ 0x9E3779B97F4A7C15ull);
  g_ = std::make_shared<DcganGenerator>(options_, init_gen);
  d_ = std::make_shared<DcganDiscriminator>(options_, init_gen);
  g_opt_ = detail::make_adam(*g_, options_.lr, options_.beta1, options_.beta2);
  d_opt_ = detail::make_adam(*d_, options_.lr, options_.beta1, options_.beta2);
  g_ema_ = detail::make_generator_ema(*g_, options_.g_ema_decay, options_.g_ema_warmup);
  replicas_ = std::make_unique<detail::Replicas>(comm, *g_, *d_, *g_opt_, *d_opt_, replica);
}

Dcgan::~Dcgan() = default;

namespace detail {
std::unique_ptr<optim::AdamW> make_adam(nn::Module& m, double lr, double beta1, double beta2) {
  optim::AdamWOptions adam;
  adam.lr = lr;
  adam.beta1 = beta1;
  adam.beta2 = beta2;
  adam.weight_decay = 0;  // plain Adam, as in the DCGAN and WGAN-GP papers
  return std::make_unique<optim::AdamW>(optim::param_specs(m), adam);
}

Tensor sample_latent(int64_t n, int64_t latent_dim, Generator& rng, const char* who) {
  HPDL_CHECK(n >= 1, "gan::{}::sample_latent: need n >= 1, got {}", who, n);
  return Tensor::randn({n, latent_dim}, rng);
}

void check_g_ema(double decay, const char* who) {
  HPDL_CHECK(decay >= 0 && decay < 1,
             "gan::{}: g_ema_decay must be 0 (no generator averaging) or in (0, 1), got {}", who, decay);
}

std::unique_ptr<optim::ModelEma> make_generator_ema(DcganGenerator& g, double decay, bool warmup) {
  if (decay == 0) return nullptr;
  return std::make_unique<optim::ModelEma>(g, optim::EmaOptions{decay, warmup});
}

Tensor generate_averaged(DcganGenerator& g, optim::ModelEma* ema, const Tensor& z, const char* who) {
  HPDL_CHECK(ema, "gan::{}::generate_averaged: generator averaging is off (set g_ema_decay in (0, 1))", who);
  NoGradGuard no_grad;
  dist::LocalBatchNorm local(g);
  optim::ModelEma::Applied averaged(ema);
  // While swapped, G's buffers hold the averaged running statistics; a training-mode
  // forward would move them towards this batch's and the swap back would store that
  // in the averages. Keep copies and put them back.
  std::vector<std::pair<Tensor, Tensor>> buffers;
  for (auto& [name, b] : g.named_buffers())
    if (b.defined()) buffers.emplace_back(b, b.clone());
  Tensor out = g(z);
  for (auto& [b, copy] : buffers) b.copy_(copy);
  return out;
}

std::shared_ptr<DcganGenerator> averaged_generator(const DcganOptions& g_options, DcganGenerator& g,
                                                   optim::ModelEma* ema, int64_t batches, const char* who) {
  HPDL_CHECK(ema, "gan::{}::averaged_generator: generator averaging is off (set g_ema_decay in (0, 1))", who);
  HPDL_CHECK(batches >= 1, "gan::{}::averaged_generator: stat_batches must be >= 1, got {}", who, batches);
  Generator init(g_options.seed);  // the copy's initial weights are replaced by the averages
  auto copy = std::make_shared<DcganGenerator>(g_options, init);
  copy->load_state_dict(ema->state_dict());
  const std::vector<Tensor> params = g.parameters();
  if (!params.empty()) copy->to(params.front().device());
  Generator latents(g_options.seed + kStandingSeedOffset);
  nn::recompute_batchnorm_statistics(
      *copy,
      [&] {
        Tensor z = sample_latent(g_options.batch_size, g_options.latent_dim, latents, who);
        return params.empty() ? z : z.to(params.front().device());
      },
      batches);
  copy->eval();
  return copy;
}

void check_images(const Tensor& images, int64_t c, int64_t s, const char* who, const char* what) {
  HPDL_CHECK(images.defined() && images.ndim() == 4 && images.dim(1) == c && images.dim(2) == s &&
                 images.dim(3) == s && images.dim(0) >= 1,
             "gan::{}: {} images must be [N, {}, {}, {}] with N >= 1, got {}", who, what, c, s, s,
             images.defined() ? shape_str(images.shape()) : std::string("an undefined tensor"));
}
}  // namespace detail

Tensor Dcgan::sample_latent(int64_t n) { return detail::sample_latent(n, options_.latent_dim, rng_, "Dcgan"); }

Tensor Dcgan::generate(const Tensor& z) {
  NoGradGuard no_grad;
  dist::LocalBatchNorm local(*g_);
  return (*g_)(z);
}

Tensor Dcgan::generate_averaged(const Tensor& z) { return detail::generate_averaged(*g_, g_ema_.get(), z, "Dcgan"); }

std::shared_ptr<DcganGenerator> Dcgan::averaged_generator(int64_t stat_batches) {
  return detail::averaged_generator(options_, *g_, g_ema_.get(), stat_batches, "Dcgan");
}

void Dcgan::check_images(const Tensor& images, const char* what) const {
  detail::check_images(images, options_.channels, options_.image_size, "Dcgan", what);
}

Tensor Dcgan::discriminator_loss(const Tensor& real, const Tensor& fake) {
  check_images(real, "real");
  check_images(fake, "fake");
  Tensor real_logits = (*d_)(real), fake_logits = (*d_)(fake);
  return add(bce_with_logits(real_logits, Tensor::ones(real_logits.shape())),
             bce_with_logits(fake_logits, Tensor::zeros(fake_logits.shape())));
}

Tensor Dcgan::generator_loss(const Tensor& fake) {
  check_images(fake, "fake");
  Tensor logits = (*d_)(fake);
  // Non-saturating: maximise log D(G(z)) instead of minimising log(1 - D(G(z))),
  // which has a vanishing gradient while D rejects the fakes confidently.
  return bce_with_logits(logits, Tensor::ones(logits.shape()));
}

double Dcgan::discriminator_step(const Tensor& real, const Tensor& fake) {
  replicas_->zero_grad_d();
  Tensor loss = discriminator_loss(real, fake.detach());
  const double value = loss.item();
  std::vector<double> all{value};
  replicas_->mean(all);  // a non-finite loss on one rank stops every rank here
  HPDL_CHECK(std::isfinite(all[0]), "gan::Dcgan: the discriminator loss is {} after {} steps; lower lr ({})", all[0],
             steps_, options_.lr);
  loss.backward();
  replicas_->finish_d();
  d_opt_->step();
  replicas_->sync_d_buffers();
  return value;
}

DcganStepStats Dcgan::train_step(const Tensor& real) {
  check_images(real, "real");
  DcganStepStats st;
  const int64_t b = real.dim(0);
  // Latents for every rank's batch from the one stream, this rank's rows: the stream stays the same everywhere.
  Tensor z = replicas_->mine(sample_latent(b * replicas_->world()));
  Tensor fake = (*g_)(z);  // [B, C, S, S], with G's graph

  // D step. The logits for the statistics come from the same forward as the loss.
  replicas_->zero_grad_d();
  Tensor real_logits = (*d_)(real), fake_logits = (*d_)(fake.detach());
  Tensor d_loss = add(bce_with_logits(real_logits, Tensor::ones({b})), bce_with_logits(fake_logits, Tensor::zeros({b})));
  {
    NoGradGuard no_grad;
    std::vector<float> pr = sigmoid(real_logits).to_vector<float>(), pf = sigmoid(fake_logits).to_vector<float>();
    double correct = 0;
    for (int64_t i = 0; i < b; ++i) {
      st.d_real += pr[i] / b, st.d_fake += pf[i] / b;
      correct += (pr[i] > 0.5f) + (pf[i] < 0.5f);
    }
    st.d_accuracy = correct / (2.0 * b);
  }
  std::vector<double> d_stats{d_loss.item(), st.d_real, st.d_fake, st.d_accuracy};
  replicas_->mean(d_stats);  // every rank reports, and checks, the same numbers
  st.d_loss = d_stats[0], st.d_real = d_stats[1], st.d_fake = d_stats[2], st.d_accuracy = d_stats[3];
  HPDL_CHECK(std::isfinite(st.d_loss), "gan::Dcgan: the discriminator loss is {} after {} steps; lower lr ({})",
             st.d_loss, steps_, options_.lr);
  d_loss.backward();
  replicas_->finish_d();
  d_opt_->step();

  // G step through the updated D, whose parameters are frozen for it: their gradients
  // would only be zeroed by the next D step.
  replicas_->zero_grad_g();
  {
    detail::FrozenParameters frozen(*d_);
    Tensor g_loss = generator_loss(fake);
    std::vector<double> g_stats{g_loss.item()};
    replicas_->mean(g_stats);
    st.g_loss = g_stats[0];
    HPDL_CHECK(std::isfinite(st.g_loss), "gan::Dcgan: the generator loss is {} after {} steps; lower lr ({})",
               st.g_loss, steps_, options_.lr);
    g_loss.backward();
  }
  replicas_->finish_g();
  g_opt_->step();
  replicas_->sync_d_buffers();  // the G step's forward through D moved D's running statistics on every rank
  if (g_ema_) g_ema_->update();
  ++steps_;
  return st;
}

double Dcgan::discriminator_accuracy(const Tensor& real, const Tensor& fake) {
  check_images(real, "real");
  check_images(fake, "fake");
  NoGradGuard no_grad;
  dist::LocalBatchNorm local(*d_);  // an evaluation of this process's images, on any rank alone
  std::vector<float> lr = (*d_)(real).to_vector<float>(), lf = (*d_)(fake).to_vector<float>();
  double correct = 0;
  for (float v : lr) correct += v > 0;
  for (float v : lf) correct += v < 0;
  return correct / static_cast<double>(lr.size() + lf.size());
}

detail::GanState Dcgan::state() {
  return {"dcgan", detail::options_json(options_), *g_, *d_, *g_opt_, *d_opt_, g_ema_.get(), rng_, batches_, steps_,
          *replicas_};
}

train::CheckpointInfo Dcgan::save_checkpoint(train::CheckpointManager& checkpoints,
                                              train::AsyncCheckpointWriter* background) {
  return detail::save_gan_checkpoint(checkpoints, state(), background);
}

void Dcgan::wait_for_checkpoints(train::CheckpointManager& checkpoints, train::AsyncCheckpointWriter& background) {
  detail::wait_gan_checkpoints(checkpoints, background, *replicas_);
}

void Dcgan::load_checkpoint(const train::CheckpointManager& checkpoints, const train::CheckpointInfo& info) {
  detail::load_gan_checkpoint(checkpoints, info, state());
}

DcganStepStats train_dcgan(Dcgan& gan, const Tensor& images, int64_t steps,
                           const std::function<void(int64_t, const DcganStepStats&)>& on_step) {
  const DcganOptions& o = gan.options();
  const detail::Replicas& r = gan.replicas();
  gan.minibatches().check(images, o.channels, o.image_size, "train_dcgan", r.world());
  HPDL_CHECK(steps >= 0, "gan::train_dcgan: steps must be >= 0, got {}", steps);
  DcganStepStats last;
  for (int64_t i = 0; i < steps; ++i) {
    last = gan.train_step(gan.minibatches().next(images, r.rank(), r.world()));
    if (on_step) on_step(gan.steps(), last);
  }
  return last;
}

namespace detail {
nlohmann::json options_json(const DcganOptions& o) {
  return {{"image_size", o.image_size}, {"channels", o.channels},     {"latent_dim", o.latent_dim},
          {"g_features", o.g_features}, {"d_features", o.d_features}, {"lr", o.lr},
          {"beta1", o.beta1},           {"beta2", o.beta2},           {"batch_size", o.batch_size},
          {"seed", o.seed},             {"g_ema_decay", o.g_ema_decay}, {"g_ema_warmup", o.g_ema_warmup}};
}

void ShuffledBatches::check(const Tensor& images, int64_t c, int64_t s, const char* who, int world) const {
  HPDL_CHECK(images.defined() && images.ndim() == 4 && images.dim(1) == c && images.dim(2) == s && images.dim(3) == s,
             "gan::{}: images must be [M, {}, {}, {}], got {}", who, c, s, s,
             images.defined() ? shape_str(images.shape()) : std::string("an undefined tensor"));
  HPDL_CHECK(images.dim(0) >= world * batch_, "gan::{}: {} images are fewer than one batch of {}{}", who, images.dim(0),
             batch_, world == 1 ? std::string() : fmt::format(" on each of {} ranks ({} in all)", world, world * batch_));
  HPDL_CHECK(order_.empty() || static_cast<int64_t>(order_.size()) == images.dim(0),
             "gan::{}: {} images, but the minibatch order in progress (from an earlier call or a checkpoint) covers {}; "
             "continue a GAN run on the image set it started with", who, images.dim(0), order_.size());
}

Tensor ShuffledBatches::next(const Tensor& images, int rank, int world) {
  const int64_t m = images.dim(0), step = world * batch_;
  if (order_.empty() || next_ + step > m) {
    order_.resize(static_cast<size_t>(m));
    std::iota(order_.begin(), order_.end(), 0);
    for (int64_t i = m - 1; i > 0; --i)  // Fisher-Yates
      std::swap(order_[i], order_[static_cast<int64_t>(gen_.next_uniform() * (i + 1))]);
    next_ = 0;
  }
  const int64_t first = next_ + rank * batch_;
  std::vector<int64_t> idx(order_.begin() + first, order_.begin() + first + batch_);
  next_ += step;
  return index_select(images, 0, Tensor::from_vector(idx, {batch_}).to(images.device()));
}

void ShuffledBatches::restore(std::vector<int64_t> order, int64_t position, uint64_t seed, uint64_t offset,
                              const std::string& where) {
  const int64_t m = static_cast<int64_t>(order.size());
  std::vector<bool> seen(order.size(), false);
  for (int64_t i : order) {
    HPDL_CHECK(i >= 0 && i < m && !seen[static_cast<size_t>(i)],
               "{}: the minibatch order is not a permutation of 0..{} (entry {})", where, m - 1, i);
    seen[static_cast<size_t>(i)] = true;
  }
  HPDL_CHECK(position >= 0 && position <= m, "{}: the minibatch position {} is outside [0, {}]", where, position, m);
  order_ = std::move(order);
  next_ = position;
  gen_.set_state(seed, offset);
}
}  // namespace detail

// ---------------------------------------------------------------- data and output

Tensor load_fashion_mnist_images(const std::filesystem::path& dir, bool train, int64_t limit, Tensor* labels) {
  HPDL_CHECK(limit >= 0, "gan::load_fashion_mnist_images: limit must be >= 0, got {}", limit);
  auto ds = data::load_mnist_idx(dir, train);
  const int64_t m = limit > 0 ? std::min(limit, ds->size()) : ds->size();
  const int64_t per = ds->sample_numel();
  Tensor images = Tensor::empty({m, 1, 28, 28});
  HPDL_CHECK(per == 28 * 28, "gan::load_fashion_mnist_images: {} holds samples of {} values, expected 1x28x28",
             dir.string(), per);
  float* p = images.data<float>();
  std::vector<int64_t> y(m);
  for (int64_t i = 0; i < m; ++i) {
    y[i] = ds->get(i, p + i * per);  // [0, 1]
    for (int64_t j = 0; j < per; ++j) p[i * per + j] = p[i * per + j] * 2.0f - 1.0f;  // -> [-1, 1]
  }
  if (labels) *labels = Tensor::from_vector(y, {m});
  return images;
}

void write_image_grid(const std::filesystem::path& path, const Tensor& images, int64_t columns) {
  HPDL_CHECK(images.defined() && images.ndim() == 4 && (images.dim(1) == 1 || images.dim(1) == 3) &&
                 images.dim(0) >= 1,
             "gan::write_image_grid: images must be [N, 1 or 3, H, W] with N >= 1, got {}",
             images.defined() ? shape_str(images.shape()) : std::string("an undefined tensor"));
  HPDL_CHECK(columns >= 1, "gan::write_image_grid: columns must be >= 1, got {}", columns);
  const int64_t n = images.dim(0), c = images.dim(1), h = images.dim(2), w = images.dim(3);
  const int64_t cols = std::min(columns, n), rows = (n + cols - 1) / cols, border = 2;
  data::Image img;
  img.channels = c;
  img.height = rows * (h + border) + border;
  img.width = cols * (w + border) + border;
  img.pixels.assign(static_cast<size_t>(c * img.height * img.width), 0);
  std::vector<float> v = images.detach().to_vector<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t top = border + (i / cols) * (h + border), left = border + (i % cols) * (w + border);
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const float t = std::clamp(v[((i * c + ch) * h + y) * w + x], -1.0f, 1.0f);
          img.pixels[(ch * img.height + top + y) * img.width + left + x] =
              static_cast<uint8_t>(std::lround((t + 1.0f) * 127.5f));
        }
  }
  data::write_png(path, img);
}

ClassifierScore classifier_score(const Tensor& logits) {
  HPDL_CHECK(logits.defined() && logits.ndim() == 2 && logits.dim(0) >= 1 && logits.dim(1) >= 1,
             "gan::classifier_score: logits must be [M, classes] with M, classes >= 1, got {}",
             logits.defined() ? shape_str(logits.shape()) : std::string("an undefined tensor"));
  const int64_t m = logits.dim(0), k = logits.dim(1);
  std::vector<double> z = logits.detach().to_vector<double>();
  std::vector<double> prob(m * k), marginal(k, 0.0), hist(k, 0.0);
  ClassifierScore s;
  for (int64_t i = 0; i < m; ++i) {
    const double* zi = &z[i * k];
    const double zmax = *std::max_element(zi, zi + k);
    double total = 0;
    for (int64_t j = 0; j < k; ++j) total += prob[i * k + j] = std::exp(zi[j] - zmax);
    int64_t best = 0;
    for (int64_t j = 0; j < k; ++j) {
      prob[i * k + j] /= total;
      marginal[j] += prob[i * k + j] / m;
      if (prob[i * k + j] > prob[i * k + best]) best = j;
    }
    s.confidence += prob[i * k + best] / m;
    hist[best] += 1.0 / m;
  }
  for (double f : hist)
    if (f > 0) s.class_entropy -= f * std::log(f);
  double mean_kl = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const double p = prob[i * k + j];
      if (p > 0) mean_kl += p * (std::log(p) - std::log(marginal[j])) / m;
    }
  s.inception_score = std::exp(mean_kl);
  return s;
}

}  // namespace hpdl::gan
