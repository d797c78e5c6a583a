// PPO: the GAE recursion, the policy distributions' log-probabilities and
// entropies, the clipped losses, the actor-critic networks and the
// rollout/update loop. Rollouts are stepped on the host (K observations are
// one batched forward per step); the losses go through hpdl ops so that
// autograd reaches every weight and the Gaussian's log-std.
#include "hpdl/rl/ppo.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/nn/init.h"
#include "hpdl/ops/activation.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/reduce.h"

namespace hpdl::rl {
namespace {

constexpr double kLog2Pi = 1.8378770664093454836;  // log(2 pi)

const PpoOptions& checked(const PpoOptions& o) {
  check_ppo_options(o);
  return o;
}

uint64_t stream_seed(uint64_t seed, uint64_t stream) { return Generator::bits(seed, stream); }

// A constant tensor of `shape` filled with `value`, in x's dtype and device.
Tensor constant_like(const Tensor& x, const Shape& shape, double value) {
  return Tensor::full(shape, value, x.dtype(), x.device());
}

// A tanh MLP in -> hidden... (-> out when out > 0). The output layer's weights are scaled down by
// out_scale (a near-uniform initial policy, as in common PPO implementations) and its bias zeroed.
std::shared_ptr<nn::Sequential> make_mlp(int64_t in, const std::vector<int64_t>& hidden, int64_t out,
                                         double out_scale, Generator& gen) {
  auto net = std::make_shared<nn::Sequential>();
  int64_t width = in;
  for (int64_t h : hidden) {
    net->push_back(std::make_shared<nn::Linear>(width, h, true, gen));
    net->push_back(std::make_shared<nn::Tanh>());
    width = h;
  }
  if (out > 0) {
    auto head = net->push_back(std::make_shared<nn::Linear>(width, out, true, gen));
    const double bound = out_scale / std::sqrt(static_cast<double>(width));
    nn::init::uniform_(head->weight, gen, -bound, bound);
    nn::init::zeros_(head->bias);
  }
  return net;
}

std::shared_ptr<nn::Linear> make_head(int64_t in, int64_t out, double scale, Generator& gen) {
  auto head = std::make_shared<nn::Linear>(in, out, true, gen);
  const double bound = scale / std::sqrt(static_cast<double>(in));
  nn::init::uniform_(head->weight, gen, -bound, bound);
  nn::init::zeros_(head->bias);
  return head;
}

// A standard normal draw (Box-Muller on two uniforms; both are always drawn so the stream advances evenly).
double next_normal(Generator& gen) {
  const double u1 = gen.next_uniform(), u2 = gen.next_uniform();
  return std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2.0 * 3.14159265358979323846 * u2);
}

void check_1d(const Tensor& t, int64_t n, const char* what, const char* fn) {
  HPDL_CHECK(t.defined() && t.ndim() == 1 && t.dim(0) == n, "rl::{}: {} must be [{}], got {}", fn, what, n,
             t.defined() ? shape_str(t.shape()) : std::string("undefined"));
}

}  // namespace

// ---------------------------------------------------------------- building blocks

std::vector<double> gae_advantages(const std::vector<double>& rewards, const std::vector<double>& values,
                                   const std::vector<double>& next_values, const std::vector<bool>& terminated,
                                   const std::vector<bool>& episode_end, double gamma, double lambda) {
  const size_t n = rewards.size();
  HPDL_CHECK(values.size() == n && next_values.size() == n && terminated.size() == n && episode_end.size() == n,
             "rl::gae_advantages: rewards ({}), values ({}), next_values ({}), terminated ({}) and episode_end ({}) "
             "must have the same length", n, values.size(), next_values.size(), terminated.size(),
             episode_end.size());
  HPDL_CHECK(gamma >= 0 && gamma <= 1 && lambda >= 0 && lambda <= 1,
             "rl::gae_advantages: gamma {} and lambda {} must be in [0, 1]", gamma, lambda);
  std::vector<double> adv(n);
  double next_adv = 0;  // A_{t+1}
  for (size_t i = n; i-- > 0;) {
    HPDL_CHECK(!terminated[i] || episode_end[i], "rl::gae_advantages: step {} is terminated but not an episode end",
               i);
    const double delta = rewards[i] + gamma * (terminated[i] ? 0.0 : next_values[i]) - values[i];
    next_adv = delta + gamma * lambda * (episode_end[i] ? 0.0 : next_adv);
    adv[i] = next_adv;
  }
  return adv;
}

Tensor categorical_log_prob(const Tensor& logits, const std::vector<int64_t>& actions) {
  HPDL_CHECK(logits.defined() && logits.ndim() == 2 && logits.dim(0) == static_cast<int64_t>(actions.size()),
             "rl::categorical_log_prob: logits must be [B, A] with B = {} actions, got {}", actions.size(),
             logits.defined() ? shape_str(logits.shape()) : std::string("undefined"));
  const int64_t b = logits.dim(0), a = logits.dim(1);
  // log pi(a_i | s_i) = sum_j log_softmax(logits)_ij onehot(a_i)_j: a gather written with differentiable ops.
  std::vector<double> mask(static_cast<size_t>(b * a), 0.0);
  for (size_t i = 0; i < actions.size(); ++i) {
    HPDL_CHECK(actions[i] >= 0 && actions[i] < a, "rl::categorical_log_prob: action {} in row {} is out of range; "
               "the policy has {} actions", actions[i], i, a);
    mask[i * static_cast<size_t>(a) + static_cast<size_t>(actions[i])] = 1.0;
  }
  Tensor onehot = Tensor::from_vector<double>(mask, {b, a}).to(logits.dtype()).to(logits.device());
  return sum(mul(log_softmax(logits, 1), onehot), {1});
}

Tensor categorical_entropy(const Tensor& logits) {
  HPDL_CHECK(logits.defined() && logits.ndim() == 2, "rl::categorical_entropy: logits must be [B, A], got {}",
             logits.defined() ? shape_str(logits.shape()) : std::string("undefined"));
  Tensor logp = log_softmax(logits, 1);  // [B, A]
  return neg(sum(mul(exp(logp), logp), {1}));
}

Tensor gaussian_log_prob(const Tensor& mean, const Tensor& log_std, const Tensor& actions) {
  HPDL_CHECK(mean.defined() && mean.ndim() == 2 && actions.defined() && actions.shape() == mean.shape() &&
                 log_std.defined() && log_std.ndim() == 1 && log_std.dim(0) == mean.dim(1),
             "rl::gaussian_log_prob: mean [B, D], log_std [D] and actions [B, D] expected, got {}, {} and {}",
             mean.defined() ? shape_str(mean.shape()) : "undefined",
             log_std.defined() ? shape_str(log_std.shape()) : "undefined",
             actions.defined() ? shape_str(actions.shape()) : "undefined");
  // z = (a - mean) / std with std = exp(log_std) broadcast over rows; the per-dimension terms are
  // -z^2 / 2 - log_std - log(2 pi) / 2, summed over D.
  Tensor z = mul(sub(actions, mean), exp(neg(log_std)));
  Tensor per_dim = sub(mul(square(z), -0.5), log_std);
  return add(sum(per_dim, {1}), -0.5 * kLog2Pi * static_cast<double>(mean.dim(1)));
}

Tensor gaussian_entropy(const Tensor& log_std) {
  HPDL_CHECK(log_std.defined() && log_std.ndim() == 1, "rl::gaussian_entropy: log_std must be [D], got {}",
             log_std.defined() ? shape_str(log_std.shape()) : std::string("undefined"));
  return add(sum(log_std), 0.5 * (1.0 + kLog2Pi) * static_cast<double>(log_std.dim(0)));
}

Tensor ppo_clip_loss(const Tensor& log_prob, const Tensor& old_log_prob, const Tensor& advantages, double clip) {
  HPDL_CHECK(clip > 0 && std::isfinite(clip), "rl::ppo_clip_loss: clip {} must be positive", clip);
  HPDL_CHECK(log_prob.defined() && log_prob.ndim() == 1, "rl::ppo_clip_loss: log_prob must be [B], got {}",
             log_prob.defined() ? shape_str(log_prob.shape()) : std::string("undefined"));
  const int64_t b = log_prob.dim(0);
  check_1d(old_log_prob, b, "old_log_prob", "ppo_clip_loss");
  check_1d(advantages, b, "advantages", "ppo_clip_loss");
  Tensor ratio = exp(sub(log_prob, old_log_prob));
  // clip(r, 1 - eps, 1 + eps) from maximum/minimum against constants: outside the range the
  // gradient goes to the constant, i.e. nowhere.
  Tensor clipped = minimum(maximum(ratio, constant_like(ratio, {}, 1.0 - clip)), constant_like(ratio, {}, 1.0 + clip));
  Tensor surrogate = minimum(mul(ratio, advantages), mul(clipped, advantages));
  return neg(mean(surrogate));
}

Tensor ppo_value_loss(const Tensor& values, const Tensor& old_values, const Tensor& returns, double value_clip) {
  HPDL_CHECK(value_clip >= 0, "rl::ppo_value_loss: value_clip {} must be >= 0 (0: unclipped)", value_clip);
  HPDL_CHECK(values.defined() && values.ndim() == 1, "rl::ppo_value_loss: values must be [B], got {}",
             values.defined() ? shape_str(values.shape()) : std::string("undefined"));
  const int64_t b = values.dim(0);
  check_1d(returns, b, "returns", "ppo_value_loss");
  Tensor err = square(sub(values, returns));
  if (value_clip == 0) return mul(mean(err), 0.5);
  check_1d(old_values, b, "old_values", "ppo_value_loss");
  Tensor delta = sub(values, old_values);
  Tensor delta_clipped =
      minimum(maximum(delta, constant_like(delta, {}, -value_clip)), constant_like(delta, {}, value_clip));
  Tensor err_clipped = square(sub(add(old_values, delta_clipped), returns));
  return mul(mean(maximum(err, err_clipped)), 0.5);
}

// ---------------------------------------------------------------- options and the learner

void check_ppo_options(const PpoOptions& o) {
  HPDL_CHECK(!o.hidden.empty(), "rl::PpoOptions: hidden is empty; give at least one hidden width (e.g. {{64, 64}})");
  for (int64_t h : o.hidden) HPDL_CHECK(h >= 1, "rl::PpoOptions: hidden width {} must be >= 1", h);
  HPDL_CHECK(o.rollout_steps >= 1, "rl::PpoOptions: rollout_steps {} must be >= 1", o.rollout_steps);
  HPDL_CHECK(o.epochs >= 1, "rl::PpoOptions: epochs {} must be >= 1", o.epochs);
  HPDL_CHECK(o.minibatch_size >= 1, "rl::PpoOptions: minibatch_size {} must be >= 1", o.minibatch_size);
  HPDL_CHECK(o.gamma >= 0 && o.gamma <= 1, "rl::PpoOptions: gamma {} must be in [0, 1]", o.gamma);
  HPDL_CHECK(o.gae_lambda >= 0 && o.gae_lambda <= 1, "rl::PpoOptions: gae_lambda {} must be in [0, 1]",
             o.gae_lambda);
  HPDL_CHECK(o.clip > 0 && o.clip < 1, "rl::PpoOptions: clip {} must be in (0, 1)", o.clip);
  HPDL_CHECK(o.value_clip >= 0, "rl::PpoOptions: value_clip {} must be >= 0 (0: unclipped)", o.value_clip);
  HPDL_CHECK(o.value_coef >= 0 && o.entropy_coef >= 0, "rl::PpoOptions: value_coef {} and entropy_coef {} must be "
             ">= 0", o.value_coef, o.entropy_coef);
  HPDL_CHECK(o.lr > 0 && std::isfinite(o.lr), "rl::PpoOptions: lr {} must be positive and finite", o.lr);
  HPDL_CHECK(o.max_grad_norm >= 0, "rl::PpoOptions: max_grad_norm {} must be >= 0 (0 turns clipping off)",
             o.max_grad_norm);
  HPDL_CHECK(std::isfinite(o.init_log_std), "rl::PpoOptions: init_log_std {} must be finite", o.init_log_std);
  HPDL_CHECK(o.reward_scale > 0 && std::isfinite(o.reward_scale), "rl::PpoOptions: reward_scale {} must be positive",
             o.reward_scale);
  HPDL_CHECK(o.observation_clip > 0, "rl::PpoOptions: observation_clip {} must be positive", o.observation_clip);
  HPDL_CHECK(o.reward_clip > 0, "rl::PpoOptions: reward_clip {} must be positive", o.reward_clip);
}

Ppo::Ppo(const Env& env, const PpoOptions& options)
    : Ppo(env.observation_size(), env.num_actions(), env.continuous_actions(), env.action_size(), options) {}

Ppo::Ppo(int64_t observation_size, int64_t num_actions, bool continuous, int64_t action_size,
         const PpoOptions& options)
    : options_(checked(options)),
      observation_size_(observation_size),
      num_actions_(num_actions),
      action_size_(action_size),
      continuous_(continuous),
      init_gen_(stream_seed(options.seed, 0)),
      act_gen_(stream_seed(options.seed, 1)),
      sample_gen_(stream_seed(options.seed, 2)),
      obs_rms_(std::max<int64_t>(observation_size, 1)),
      ret_rms_(1) {
  HPDL_CHECK(observation_size >= 1, "rl::Ppo: observation_size {} must be >= 1", observation_size);
  HPDL_CHECK(continuous ? action_size >= 1 : num_actions >= 1, "rl::Ppo: a {} policy needs {} >= 1, got {}",
             continuous ? "Gaussian" : "categorical", continuous ? "action_size" : "num_actions",
             continuous ? action_size : num_actions);
  const int64_t out = continuous ? action_size : num_actions;
  std::vector<optim::ParamSpec> specs;
  auto add_specs = [&](const std::string& prefix, const nn::Module& m) {
    for (auto& [name, t] : m.named_parameters()) specs.push_back({prefix + name, t});
  };
  if (options_.shared_network) {
    actor_ = make_mlp(observation_size, options_.hidden, 0, 1.0, init_gen_);
    policy_head_ = make_head(options_.hidden.back(), out, 0.01, init_gen_);
    value_head_ = make_head(options_.hidden.back(), 1, 1.0, init_gen_);
    add_specs("trunk.", *actor_);
    add_specs("policy_head.", *policy_head_);
    add_specs("value_head.", *value_head_);
  } else {
    actor_ = make_mlp(observation_size, options_.hidden, out, 0.01, init_gen_);
    critic_ = make_mlp(observation_size, options_.hidden, 1, 1.0, init_gen_);
    add_specs("actor.", *actor_);
    add_specs("critic.", *critic_);
  }
  if (continuous) {
    log_std_ = Tensor::full({action_size}, options_.init_log_std);
    log_std_.set_requires_grad(true);
    specs.push_back({"log_std", log_std_});
  }
  optim::AdamWOptions adam;
  adam.lr = options_.lr;
  adam.eps = 1e-5;        // as in the PPO baselines
  adam.weight_decay = 0;  // plain Adam
  optimizer_ = std::make_unique<optim::AdamW>(std::move(specs), adam);
}

std::vector<Tensor> Ppo::parameters() const {
  std::vector<Tensor> ps;
  for (const auto& spec : optimizer_->params()) ps.push_back(spec.param);
  return ps;
}

std::vector<std::pair<std::string, Tensor>> Ppo::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> ps;
  for (const auto& spec : optimizer_->params()) ps.emplace_back(spec.name, spec.param);
  return ps;
}

Observation Ppo::normalize_observation(const Observation& observation) const {
  if (!options_.normalize_observations) return observation;
  return obs_rms_.normalize(observation, options_.observation_clip);
}

double Ppo::normalize_reward(double reward) const {
  const double r = reward * options_.reward_scale;
  if (!options_.normalize_returns) return r;
  return std::clamp(r / std::sqrt(ret_rms_.variance()[0] + 1e-8), -options_.reward_clip, options_.reward_clip);
}

Tensor Ppo::rows(const std::vector<Observation>& observations) const {
  HPDL_CHECK(!observations.empty(), "rl::Ppo: no observations given");
  std::vector<float> data;
  data.reserve(observations.size() * static_cast<size_t>(observation_size_));
  for (size_t i = 0; i < observations.size(); ++i) {
    HPDL_CHECK(static_cast<int64_t>(observations[i].size()) == observation_size_, "rl::Ppo: observation {} has {} "
               "values but the networks take {}", i, observations[i].size(), observation_size_);
    if (options_.normalize_observations) {
      const Observation z = normalize_observation(observations[i]);
      data.insert(data.end(), z.begin(), z.end());
    } else {
      data.insert(data.end(), observations[i].begin(), observations[i].end());
    }
  }
  return Tensor::from_vector<float>(data, {static_cast<int64_t>(observations.size()), observation_size_});
}

Tensor Ppo::policy_output(const Tensor& observations) {
  if (options_.shared_network) return (*policy_head_)((*actor_)(observations));
  return (*actor_)(observations);
}

Tensor Ppo::value_output(const Tensor& observations) {
  Tensor v = options_.shared_network ? (*value_head_)((*actor_)(observations)) : (*critic_)(observations);
  return v.reshape({-1});
}

std::vector<double> Ppo::values(const std::vector<Observation>& observations) {
  NoGradGuard no_grad;
  return value_output(rows(observations)).to_vector<double>();
}

std::vector<PpoAction> Ppo::act(const std::vector<Observation>& observations) {
  NoGradGuard no_grad;
  Tensor x = rows(observations);
  const auto k = observations.size();
  auto out = policy_output(x).to_vector<double>();  // [K, A] logits or [K, D] means
  auto v = value_output(x).to_vector<double>();
  std::vector<PpoAction> actions(k);
  if (continuous_) {
    const auto d = static_cast<size_t>(action_size_);
    auto ls = log_std_.to_vector<double>();
    for (size_t i = 0; i < k; ++i) {
      auto& a = actions[i];
      a.vector.resize(d);
      double logp = 0;
      for (size_t j = 0; j < d; ++j) {
        const double z = next_normal(act_gen_);
        a.vector[j] = out[i * d + j] + std::exp(ls[j]) * z;
        logp += -0.5 * z * z - ls[j] - 0.5 * kLog2Pi;
      }
      a.log_prob = logp;
      a.value = v[i];
    }
  } else {
    const auto n = static_cast<size_t>(num_actions_);
    for (size_t i = 0; i < k; ++i) {
      // Sample from softmax(logits) by inverting the CDF; log-probs from the stable log-sum-exp.
      const double* row = &out[i * n];
      const double mx = *std::max_element(row, row + n);
      double total = 0;
      for (size_t j = 0; j < n; ++j) total += std::exp(row[j] - mx);
      const double u = act_gen_.next_uniform() * total;
      size_t pick = n - 1;
      double acc = 0;
      for (size_t j = 0; j < n; ++j) {
        acc += std::exp(row[j] - mx);
        if (u < acc) {
          pick = j;
          break;
        }
      }
      actions[i].index = static_cast<int64_t>(pick);
      actions[i].log_prob = row[pick] - mx - std::log(total);
      actions[i].value = v[i];
    }
  }
  return actions;
}

PpoAction Ppo::deterministic_action(const Observation& observation) {
  NoGradGuard no_grad;
  Tensor x = rows({observation});
  auto out = policy_output(x).to_vector<double>();
  PpoAction a;
  a.value = value_output(x).item();
  if (continuous_) {
    a.vector = out;
  } else {
    a.index = std::max_element(out.begin(), out.end()) - out.begin();
  }
  return a;
}

Tensor Ppo::loss(const Minibatch& batch, PpoLossLog* log) {
  HPDL_CHECK(batch.observations.defined() && batch.observations.ndim() == 2 &&
                 batch.observations.dim(1) == observation_size_,
             "rl::Ppo::loss: observations must be [B, {}], got {}", observation_size_,
             batch.observations.defined() ? shape_str(batch.observations.shape()) : std::string("undefined"));
  const int64_t b = batch.observations.dim(0);
  check_1d(batch.old_log_probs, b, "old_log_probs", "Ppo::loss");
  check_1d(batch.advantages, b, "advantages", "Ppo::loss");
  Tensor out = policy_output(batch.observations);
  Tensor logp, entropy;
  if (continuous_) {
    logp = gaussian_log_prob(out, log_std_, batch.action_vectors);
    entropy = gaussian_entropy(log_std_);
  } else {
    logp = categorical_log_prob(out, batch.action_indices);
    entropy = mean(categorical_entropy(out));
  }
  Tensor adv = batch.advantages;
  if (options_.normalize_advantages && !batch.advantages_normalized && b > 1) {
    auto a = adv.to_vector<double>();
    const double m = std::accumulate(a.begin(), a.end(), 0.0) / static_cast<double>(b);
    double var = 0;
    for (double x : a) var += (x - m) * (x - m);
    const double sd = std::sqrt(var / static_cast<double>(b - 1));  // unbiased, as torch.std
    std::vector<float> normalized(a.size());
    for (size_t i = 0; i < a.size(); ++i) normalized[i] = static_cast<float>((a[i] - m) / (sd + 1e-8));
    adv = Tensor::from_vector<float>(normalized, {b});
  }
  Tensor policy_loss = ppo_clip_loss(logp, batch.old_log_probs, adv, options_.clip);
  Tensor value_loss = ppo_value_loss(value_output(batch.observations), batch.old_values, batch.returns,
                                     options_.value_clip);
  Tensor total = add(policy_loss, mul(value_loss, options_.value_coef));
  if (options_.entropy_coef > 0) total = sub(total, mul(entropy, options_.entropy_coef));
  if (log != nullptr) {
    log->policy_loss = policy_loss.item();
    log->value_loss = value_loss.item();
    log->entropy = entropy.item();
    auto lp = logp.to_vector<double>();
    auto old = batch.old_log_probs.to_vector<double>();
    double kl = 0, clipped = 0;
    for (size_t i = 0; i < lp.size(); ++i) {
      kl += old[i] - lp[i];
      clipped += std::abs(std::exp(lp[i] - old[i]) - 1.0) > options_.clip ? 1.0 : 0.0;
    }
    log->approx_kl = kl / static_cast<double>(b);
    log->clip_fraction = clipped / static_cast<double>(b);
  }
  return total;
}

PpoLossLog Ppo::update(const Minibatch& batch) {
  optimizer_->zero_grad();
  PpoLossLog log;
  Tensor total = loss(batch, &log);
  const double value = total.item();
  HPDL_CHECK(std::isfinite(value), "rl::Ppo::update: the loss is {} after {} updates; lower lr ({}) or turn on "
             "max_grad_norm", value, updates_, options_.lr);
  total.backward();
  if (gradient_hook_) gradient_hook_(parameters());
  if (options_.max_grad_norm > 0) optim::clip_grad_norm(parameters(), options_.max_grad_norm);
  optimizer_->step();
  ++updates_;
  return log;
}

// ---------------------------------------------------------------- evaluation (train_ppo is in ppo_runner.cpp)

std::vector<double> evaluate_deterministic(Ppo& agent, Env& env, int64_t episodes, uint64_t seed) {
  return episode_returns(
      env, episodes, seed,
      [&](const Observation& obs) {
        PpoAction a = agent.deterministic_action(obs);
        return agent.continuous() ? env.step(a.vector) : env.step(a.index);
      },
      "rl::evaluate_deterministic");
}

}  // namespace hpdl::rl
