// Deep Q-networks (Mnih et al. 2015, "Human-level control through deep
// reinforcement learning", Nature 518): a network Q(s, .) with one output per
// action is trained on minibatches from a replay buffer towards the TD target
//
//   y = r + gamma * (1 - terminated) * max_a' Q_target(s', a')
//
// where Q_target is a copy of Q synchronised every target_sync_every steps.
// With double_dqn (van Hasselt, Guez & Silver 2016, "Deep reinforcement
// learning with double Q-learning", AAAI) the online network picks the action
// and the target network values it:
//
//   y = r + gamma * (1 - terminated) * Q_target(s', argmax_a' Q(s', a'))
//
// The loss is Huber (smooth L1, the clipped TD error of the paper) or MSE of
// Q(s, a) - y, minimised with Adam through the normal autograd/optimizer path.
// Exploration is epsilon-greedy with epsilon decaying linearly per env step.
// Everything random (weights, exploration, minibatches, env resets) comes from
// seeds, so a run is reproducible on a given build and thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"
#include "hpdl/nn/layers.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/rl/env.h"
#include "hpdl/rl/replay.h"

namespace hpdl::rl {

struct DqnOptions {
  std::vector<int64_t> hidden = {64, 64};  // ReLU MLP widths of the Q-network
  double gamma = 0.99;                     // discount, in [0, 1]
  double lr = 1e-3;                        // Adam learning rate
  int64_t batch_size = 64;
  int64_t buffer_capacity = 50000;
  int64_t learning_starts = 1000;    // env steps of experience before the first update
  int64_t train_every = 1;           // env steps per gradient update
  int64_t target_sync_every = 500;   // env steps between copies of Q into Q_target
  double epsilon_start = 1.0;
  double epsilon_end = 0.05;
  int64_t epsilon_decay_steps = 10000;  // linear from start to end over this many env steps
  bool double_dqn = false;
  bool huber = true;                 // Huber (delta 1) TD loss; false: MSE
  double grad_clip = 10.0;           // max global gradient norm; 0: no clipping
  uint64_t seed = 0;                 // weights, exploration and minibatches
};

// Throws hpdl::Error naming the first bad option (gamma outside [0, 1], a
// non-positive lr, batch size, capacity, interval or hidden width, epsilons
// outside [0, 1], a negative learning_starts or grad_clip, ...).
void check_dqn_options(const DqnOptions& options);

// A ReLU MLP in -> hidden... -> out (Linear, ReLU, ..., Linear), f32,
// initialised with PyTorch's default Linear init from `gen`.
std::shared_ptr<nn::Sequential> make_q_network(int64_t in, const std::vector<int64_t>& hidden, int64_t out,
                                               Generator& gen);

// The DQN learner: the online and target networks, the replay buffer, Adam,
// and the random streams for exploration and sampling.
class Dqn {
 public:
  // Throws as check_dqn_options, and unless observation_size and num_actions are >= 1.
  Dqn(int64_t observation_size, int64_t num_actions, const DqnOptions& options);

  // epsilon after `step` env steps: linear from epsilon_start to epsilon_end
  // over epsilon_decay_steps, then constant.
  double epsilon(int64_t step) const;
  // Q(s, .) for one observation (no autograd), num_actions values.
  std::vector<double> q_values(const Observation& observation);
  // argmax_a Q(s, a) (the lowest index on ties).
  int64_t greedy_action(const Observation& observation);
  // A uniformly random action with probability epsilon, else the greedy one.
  int64_t act(const Observation& observation, double epsilon);

  // The TD targets y [B] (f32, no autograd) for a batch, as in the header comment.
  Tensor td_targets(const ReplayBatch& batch);
  // The TD loss (a differentiable scalar in the online network's parameters).
  Tensor td_loss(const ReplayBatch& batch);
  // One Adam step on td_loss(batch); returns the loss before the step.
  double update(const ReplayBatch& batch);
  // Copies the online network's weights into the target network.
  void sync_target();

  // One env step's worth of learning: stores the transition, and on schedule
  // (env_step counts steps from 1) samples a batch and updates, and syncs the
  // target. Returns the loss when it updated, else a negative value.
  double observe(const Observation& observation, int64_t action, double reward, const Observation& next_observation,
                 bool terminated, int64_t env_step);

  nn::Sequential& q_network() { return *q_; }
  nn::Sequential& target_network() { return *target_; }
  ReplayBuffer& replay() { return replay_; }
  const DqnOptions& options() const { return options_; }
  int64_t num_actions() const { return num_actions_; }
  int64_t updates() const { return updates_; }

 private:
  Tensor forward_rows(nn::Sequential& net, const Observation& observation);
  DqnOptions options_;
  int64_t observation_size_, num_actions_;
  Generator init_gen_, explore_gen_, sample_gen_;
  std::shared_ptr<nn::Sequential> q_, target_;
  std::unique_ptr<optim::AdamW> optimizer_;
  ReplayBuffer replay_;
  int64_t updates_ = 0;
};

struct EpisodeLog {
  int64_t episode = 0;        // 1-based
  int64_t total_steps = 0;    // env steps so far
  double episode_return = 0;
  double moving_average = 0;  // mean return of the last `solved_window` episodes (fewer at the start)
  double epsilon = 0;         // at the episode's end
  double last_loss = -1;      // the latest TD loss, negative before the first update
};

struct DqnTrainOptions {
  int64_t max_steps = 100000;    // stop after this many env steps
  int64_t max_episodes = 0;      // and after this many episodes; 0: no limit
  double solved_return = 195.0;  // "solved": moving average >= this
  int64_t solved_window = 20;    // episodes in the moving average (a full window is required)
  bool stop_when_solved = true;
  uint64_t env_seed = 0;         // episode k resets with env_seed + k
};

struct DqnTrainResult {
  int64_t episodes = 0, steps = 0;
  bool solved = false;
  int64_t solved_episode = 0, solved_step = 0;  // when solved
  std::vector<double> returns;                  // per episode
};

// Runs epsilon-greedy episodes on `env`, learning with agent.observe after
// every step. `on_episode` (optional) sees each finished episode.
DqnTrainResult train_dqn(Dqn& agent, Env& env, const DqnTrainOptions& options,
                         const std::function<void(const EpisodeLog&)>& on_episode = {});

// Returns of `episodes` greedy episodes (no exploration, no learning), reset
// with seed, seed + 1, ...
std::vector<double> evaluate_greedy(Dqn& agent, Env& env, int64_t episodes, uint64_t seed);

}  // namespace hpdl::rl
