// DQN: the networks, the TD targets and loss, the update, and the
// epsilon-greedy training loop. The targets are computed row by row on the
// host (B x A values) so the code reads like the formula; the loss goes
// through the autograd ops so its gradient reaches the Q-network's weights.
#include "hpdl/rl/dqn.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/reduce.h"

namespace hpdl::rl {
namespace {

const DqnOptions& checked(const DqnOptions& o) {
  check_dqn_options(o);
  return o;
}

// Independent streams for the weights, exploration and minibatches, all from one seed.
uint64_t stream_seed(uint64_t seed, uint64_t stream) { return Generator::bits(seed, stream); }

int64_t argmax_of(const std::vector<float>& v, size_t begin, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i)
    if (v[begin + i] > v[begin + best]) best = i;
  return static_cast<int64_t>(best);
}

}  // namespace

void check_dqn_options(const DqnOptions& o) {
  HPDL_CHECK(!o.hidden.empty(), "rl::DqnOptions: hidden is empty; give at least one hidden width (e.g. {{64, 64}})");
  for (int64_t h : o.hidden) HPDL_CHECK(h >= 1, "rl::DqnOptions: hidden width {} must be >= 1", h);
  HPDL_CHECK(o.gamma >= 0 && o.gamma <= 1, "rl::DqnOptions: gamma {} must be in [0, 1]", o.gamma);
  HPDL_CHECK(o.lr > 0 && std::isfinite(o.lr), "rl::DqnOptions: lr {} must be positive and finite", o.lr);
  HPDL_CHECK(o.batch_size >= 1, "rl::DqnOptions: batch_size {} must be >= 1", o.batch_size);
  HPDL_CHECK(o.buffer_capacity >= 1, "rl::DqnOptions: buffer_capacity {} must be >= 1", o.buffer_capacity);
  HPDL_CHECK(o.learning_starts >= 0, "rl::DqnOptions: learning_starts {} must be >= 0", o.learning_starts);
  HPDL_CHECK(o.train_every >= 1, "rl::DqnOptions: train_every {} must be >= 1", o.train_every);
  HPDL_CHECK(o.target_sync_every >= 1, "rl::DqnOptions: target_sync_every {} must be >= 1", o.target_sync_every);
  HPDL_CHECK(o.epsilon_start >= 0 && o.epsilon_start <= 1 && o.epsilon_end >= 0 && o.epsilon_end <= 1,
             "rl::DqnOptions: epsilon_start {} and epsilon_end {} must be in [0, 1]", o.epsilon_start,
             o.epsilon_end);
  HPDL_CHECK(o.epsilon_decay_steps >= 0, "rl::DqnOptions: epsilon_decay_steps {} must be >= 0",
             o.epsilon_decay_steps);
  HPDL_CHECK(o.grad_clip >= 0, "rl::DqnOptions: grad_clip {} must be >= 0 (0 turns clipping off)", o.grad_clip);
}

std::shared_ptr<nn::Sequential> make_q_network(int64_t in, const std::vector<int64_t>& hidden, int64_t out,
                                               Generator& gen) {
  HPDL_CHECK(in >= 1 && out >= 1, "rl::make_q_network: in ({}) and out ({}) must be >= 1", in, out);
  auto net = std::make_shared<nn::Sequential>();
  int64_t width = in;
  for (int64_t h : hidden) {
    HPDL_CHECK(h >= 1, "rl::make_q_network: hidden width {} must be >= 1", h);
    net->push_back(std::make_shared<nn::Linear>(width, h, true, gen));
    net->push_back(std::make_shared<nn::ReLU>());
    width = h;
  }
  net->push_back(std::make_shared<nn::Linear>(width, out, true, gen));
  return net;
}

Dqn::Dqn(int64_t observation_size, int64_t num_actions, const DqnOptions& options)
    : options_(checked(options)),
      observation_size_(observation_size),
      num_actions_(num_actions),
      init_gen_(stream_seed(options.seed, 0)),
      explore_gen_(stream_seed(options.seed, 1)),
      sample_gen_(stream_seed(options.seed, 2)),
      replay_(options.buffer_capacity, std::max<int64_t>(observation_size, 1)) {
  HPDL_CHECK(observation_size >= 1 && num_actions >= 1, "rl::Dqn: observation_size ({}) and num_actions ({}) must "
             "be >= 1", observation_size, num_actions);
  q_ = make_q_network(observation_size, options_.hidden, num_actions, init_gen_);
  target_ = make_q_network(observation_size, options_.hidden, num_actions, init_gen_);
  sync_target();
  optim::AdamWOptions adam;
  adam.lr = options_.lr;
  adam.weight_decay = 0;  // plain Adam (Kingma & Ba 2015)
  optimizer_ = std::make_unique<optim::AdamW>(optim::param_specs(*q_), adam);
}

double Dqn::epsilon(int64_t step) const {
  const auto& o = options_;
  if (o.epsilon_decay_steps == 0 || step >= o.epsilon_decay_steps) return o.epsilon_end;
  const double frac = static_cast<double>(std::max<int64_t>(step, 0)) / static_cast<double>(o.epsilon_decay_steps);
  return o.epsilon_start + frac * (o.epsilon_end - o.epsilon_start);
}

Tensor Dqn::forward_rows(nn::Sequential& net, const Observation& observation) {
  HPDL_CHECK(static_cast<int64_t>(observation.size()) == observation_size_, "rl::Dqn: the observation has {} values "
             "but the Q-network takes {}", observation.size(), observation_size_);
  std::vector<float> row(observation.begin(), observation.end());
  NoGradGuard no_grad;
  return net(Tensor::from_vector<float>(row, {1, observation_size_}));
}

std::vector<double> Dqn::q_values(const Observation& observation) {
  return forward_rows(*q_, observation).to_vector<double>();
}

int64_t Dqn::greedy_action(const Observation& observation) {
  auto q = forward_rows(*q_, observation).to_vector<float>();
  return argmax_of(q, 0, q.size());
}

int64_t Dqn::act(const Observation& observation, double epsilon) {
  HPDL_CHECK(epsilon >= 0 && epsilon <= 1, "rl::Dqn::act: epsilon {} must be in [0, 1]", epsilon);
  // Draw both numbers every call so the exploration stream advances the same way whatever the network says.
  const double u = explore_gen_.next_uniform();
  const auto random_action =
      std::min(static_cast<int64_t>(explore_gen_.next_uniform() * static_cast<double>(num_actions_)),
               num_actions_ - 1);
  return u < epsilon ? random_action : greedy_action(observation);
}

Tensor Dqn::td_targets(const ReplayBatch& batch) {
  const int64_t b = batch.size();
  HPDL_CHECK(b >= 1 && batch.next_observations.defined() && batch.next_observations.ndim() == 2 &&
                 batch.next_observations.dim(0) == b && batch.next_observations.dim(1) == observation_size_,
             "rl::Dqn::td_targets: next_observations must be [{}, {}], got {}", b, observation_size_,
             batch.next_observations.defined() ? shape_str(batch.next_observations.shape()) : std::string("undefined"));
  NoGradGuard no_grad;
  const auto a = static_cast<size_t>(num_actions_);
  auto q_target = (*target_)(batch.next_observations).to_vector<float>();  // [B, A]
  std::vector<float> q_online;
  if (options_.double_dqn) q_online = (*q_)(batch.next_observations).to_vector<float>();
  auto rewards = batch.rewards.to_vector<float>();
  auto terminated = batch.terminated.to_vector<float>();
  std::vector<float> y(static_cast<size_t>(b));
  for (size_t i = 0; i < y.size(); ++i) {
    // Standard DQN: the target network picks and values the next action.
    // Double DQN: the online network picks it, the target network values it.
    const int64_t pick = argmax_of(options_.double_dqn ? q_online : q_target, i * a, a);
    const double next_value = q_target[i * a + static_cast<size_t>(pick)];
    y[i] = static_cast<float>(rewards[i] + options_.gamma * (1.0 - terminated[i]) * next_value);
  }
  return Tensor::from_vector<float>(y, {b});
}

Tensor Dqn::td_loss(const ReplayBatch& batch) {
  const int64_t b = batch.size();
  HPDL_CHECK(batch.observations.defined() && batch.observations.ndim() == 2 && batch.observations.dim(0) == b &&
                 batch.observations.dim(1) == observation_size_,
             "rl::Dqn::td_loss: observations must be [{}, {}], got {}", b, observation_size_,
             batch.observations.defined() ? shape_str(batch.observations.shape()) : std::string("undefined"));
  Tensor y = td_targets(batch);
  // Q(s, a) = sum_j Q(s, j) * onehot(a)_j, one row per transition.
  auto actions = batch.actions.to_vector<int64_t>();
  std::vector<float> mask(static_cast<size_t>(b * num_actions_), 0.0f);
  for (size_t i = 0; i < actions.size(); ++i) {
    HPDL_CHECK(actions[i] >= 0 && actions[i] < num_actions_, "rl::Dqn::td_loss: action {} in row {} is out of "
               "range; the Q-network has {} actions", actions[i], i, num_actions_);
    mask[i * static_cast<size_t>(num_actions_) + static_cast<size_t>(actions[i])] = 1.0f;
  }
  Tensor q = (*q_)(batch.observations);  // [B, A]
  Tensor q_sa = sum(mul(q, Tensor::from_vector<float>(mask, {b, num_actions_})), {1});  // [B]
  Tensor diff = sub(q_sa, y);
  if (!options_.huber) return mean(square(diff));
  // Huber with delta 1: 0.5 d^2 for |d| <= 1, |d| - 0.5 beyond, written as
  // 0.5 c^2 + (|d| - c) with c = min(|d|, 1) so its gradient is d, then sign(d).
  Tensor abs_d = abs(diff);
  Tensor c = minimum(abs_d, Tensor::ones(abs_d.shape()));
  return mean(add(mul(square(c), 0.5), sub(abs_d, c)));
}

double Dqn::update(const ReplayBatch& batch) {
  optimizer_->zero_grad();
  Tensor loss = td_loss(batch);
  const double value = loss.item();
  HPDL_CHECK(std::isfinite(value), "rl::Dqn::update: the TD loss is {} after {} updates; lower lr ({}) or turn on "
             "grad_clip", value, updates_, options_.lr);
  loss.backward();
  if (options_.grad_clip > 0) optim::clip_grad_norm(q_->parameters(), options_.grad_clip);
  optimizer_->step();
  ++updates_;
  return value;
}

void Dqn::sync_target() { target_->load_state_dict(q_->state_dict()); }

double Dqn::observe(const Observation& observation, int64_t action, double reward,
                    const Observation& next_observation, bool terminated, int64_t env_step) {
  HPDL_CHECK(action >= 0 && action < num_actions_, "rl::Dqn::observe: action {} is out of range; the Q-network has "
             "{} actions", action, num_actions_);
  replay_.push(observation, action, reward, next_observation, terminated);
  double loss = -1;
  const auto& o = options_;
  if (env_step >= o.learning_starts && replay_.size() >= o.batch_size && env_step % o.train_every == 0)
    loss = update(replay_.sample(o.batch_size, sample_gen_));
  if (env_step % o.target_sync_every == 0) sync_target();
  return loss;
}

DqnTrainResult train_dqn(Dqn& agent, Env& env, const DqnTrainOptions& options,
                         const std::function<void(const EpisodeLog&)>& on_episode) {
  HPDL_CHECK(options.max_steps >= 1 && options.max_episodes >= 0 && options.solved_window >= 1,
             "rl::train_dqn: max_steps ({}) and solved_window ({}) must be >= 1 and max_episodes ({}) >= 0",
             options.max_steps, options.solved_window, options.max_episodes);
  HPDL_CHECK(env.observation_size() == agent.replay().observation_size() && env.num_actions() == agent.num_actions(),
             "rl::train_dqn: {} has {} observation values and {} actions but the agent was built for {} and {}",
             env.name(), env.observation_size(), env.num_actions(), agent.replay().observation_size(),
             agent.num_actions());
  DqnTrainResult result;
  std::deque<double> window;
  double window_sum = 0, last_loss = -1;
  int64_t step = 0;
  while (step < options.max_steps && (options.max_episodes == 0 || result.episodes < options.max_episodes)) {
    Observation obs = env.reset(options.env_seed + static_cast<uint64_t>(result.episodes));
    double episode_return = 0;
    bool finished = false;
    while (!finished && step < options.max_steps) {
      const int64_t action = agent.act(obs, agent.epsilon(step));
      StepResult r = env.step(action);
      ++step;
      // Bootstrap through truncation: only a terminal state has value zero.
      const double loss = agent.observe(obs, action, r.reward, r.observation, r.terminated, step);
      if (loss >= 0) last_loss = loss;
      episode_return += r.reward;
      obs = std::move(r.observation);
      finished = r.done();
    }
    if (!finished) break;  // out of steps mid-episode: the partial return is not an episode's
    ++result.episodes;
    result.returns.push_back(episode_return);
    window.push_back(episode_return);
    window_sum += episode_return;
    if (static_cast<int64_t>(window.size()) > options.solved_window) {
      window_sum -= window.front();
      window.pop_front();
    }
    const double average = window_sum / static_cast<double>(window.size());
    if (on_episode)
      on_episode(EpisodeLog{result.episodes, step, episode_return, average, agent.epsilon(step), last_loss});
    if (!result.solved && static_cast<int64_t>(window.size()) == options.solved_window &&
        average >= options.solved_return) {
      result.solved = true;
      result.solved_episode = result.episodes;
      result.solved_step = step;
      if (options.stop_when_solved) break;
    }
  }
  result.steps = step;
  return result;
}

std::vector<double> evaluate_greedy(Dqn& agent, Env& env, int64_t episodes, uint64_t seed) {
  return episode_returns(env, episodes, seed, [&](const Observation& obs) { return env.step(agent.greedy_action(obs)); },
                         "rl::evaluate_greedy");
}

}  // namespace hpdl::rl
