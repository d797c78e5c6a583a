// Proximal policy optimisation (Schulman, Wolski, Dhariwal, Radford & Klimov
// 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347) with
// generalised advantage estimation (Schulman, Moritz, Levine, Jordan & Abbeel
// 2016, "High-dimensional continuous control using generalized advantage
// estimation", ICLR). Each iteration collects N steps from each of K copies
// of an environment with the current policy, computes GAE(lambda) advantages
// and returns, then runs several epochs of minibatch Adam steps on
//
//   L = -mean(min(r A, clip(r, 1 - eps, 1 + eps) A)) + c_v L_V - c_H mean(H)
//   r = exp(log pi(a|s) - log pi_old(a|s))
//
// with the value loss L_V = 0.5 mean((V - R)^2) (or its clipped form) and
// the entropy H of the policy. Discrete tasks get a categorical policy over
// logits; continuous ones a diagonal Gaussian whose mean comes from the
// network and whose log standard deviation is a learnt, state-independent
// vector. Actor and critic are separate tanh MLPs, or one trunk with two heads.
// All log-probabilities and losses are built from hpdl ops, so autograd
// differentiates them. Everything random comes from PpoOptions::seed and the
// environment seeds, so a run repeats on the same build and thread count.
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
#include "hpdl/rl/normalize.h"

namespace hpdl::rl {

// ---------------------------------------------------------------- building blocks (tested on their own)

// GAE(lambda) over one environment's T consecutive steps, oldest first:
//   delta_t = r_t + gamma (1 - terminated_t) next_value_t - value_t
//   A_t     = delta_t + gamma lambda (1 - episode_end_t) A_{t+1}      (A_T = 0)
// value_t = V(s_t); next_value_t = V(s_{t+1}) of the same episode: the next
// step's value while the episode goes on, the value of the final observation
// when it was truncated (so a time limit still bootstraps), anything when it
// terminated (multiplied by 0). episode_end_t = terminated_t or truncated_t:
// the sum stops there, since the next step belongs to a new episode. Returns
// the advantages; the value targets are A_t + value_t. Throws unless the five
// vectors have the same length, gamma and lambda are in [0, 1].
std::vector<double> gae_advantages(const std::vector<double>& rewards, const std::vector<double>& values,
                                   const std::vector<double>& next_values, const std::vector<bool>& terminated,
                                   const std::vector<bool>& episode_end, double gamma, double lambda);

// log pi(a|s) of a categorical policy: logits [B, A], actions B indices in [0, A). Result [B].
Tensor categorical_log_prob(const Tensor& logits, const std::vector<int64_t>& actions);
// Entropy -sum_a p log p of each row of logits [B, A]. Result [B].
Tensor categorical_entropy(const Tensor& logits);
// log N(a; mean, exp(log_std)^2) summed over the D action dimensions:
//   sum_d -(a_d - mean_d)^2 / (2 exp(2 log_std_d)) - log_std_d - log(2 pi) / 2
// mean [B, D], log_std [D], actions [B, D], same dtype. Result [B].
Tensor gaussian_log_prob(const Tensor& mean, const Tensor& log_std, const Tensor& actions);
// Entropy of the diagonal Gaussian, sum_d (log_std_d + (1 + log(2 pi)) / 2): a scalar (it does not depend on s).
Tensor gaussian_entropy(const Tensor& log_std);
// The clipped surrogate loss -mean(min(r A, clip(r, 1 - clip, 1 + clip) A)), r = exp(log_prob - old_log_prob).
// log_prob [B] differentiable; old_log_prob and advantages [B] constants. Scalar result. Outside the clip
// range on the side the advantage favours, the gradient is zero. Throws unless clip > 0 and shapes match.
Tensor ppo_clip_loss(const Tensor& log_prob, const Tensor& old_log_prob, const Tensor& advantages, double clip);
// The value loss 0.5 mean((V - R)^2); with value_clip > 0 the clipped form of the PPO baselines,
// 0.5 mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)). values [B] differentiable,
// old_values and returns [B] constants.
Tensor ppo_value_loss(const Tensor& values, const Tensor& old_values, const Tensor& returns, double value_clip);

// ---------------------------------------------------------------- the learner

struct PpoOptions {
  std::vector<int64_t> hidden = {64, 64};  // tanh MLP widths (actor and critic each, or the shared trunk)
  bool shared_network = false;             // one trunk with a policy head and a value head
  int64_t rollout_steps = 128;             // N: steps per environment copy and iteration
  int64_t epochs = 4;                      // passes over each rollout
  int64_t minibatch_size = 128;            // transitions per Adam step (<= N K)
  double gamma = 0.99;
  double gae_lambda = 0.95;
  double clip = 0.2;                       // epsilon of the clipped surrogate
  double value_clip = 0;                   // > 0: clipped value loss with this range
  double value_coef = 0.5;                 // c_v
  double entropy_coef = 0.0;               // c_H
  double lr = 3e-4;                        // Adam
  bool anneal_lr = false;                  // lr linearly to 0 over PpoTrainOptions::iterations
  double max_grad_norm = 0.5;              // global gradient-norm clip; 0: off
  bool normalize_advantages = true;        // per minibatch, to mean 0 and std 1
  double init_log_std = 0.0;               // Gaussian policy: initial log standard deviation
  double reward_scale = 1.0;               // rewards are multiplied by this for learning (not for logs)
  // Observation normalisation: the networks see (obs - mean) / sqrt(var + 1e-8) clipped to
  // [-observation_clip, observation_clip], with the running mean and variance of every observation
  // the rollouts met (the statistics are part of the agent and its checkpoint).
  bool normalize_observations = false;
  double observation_clip = 10.0;
  // Return normalisation: each (scaled) reward is divided by sqrt(var + 1e-8) of a running discounted
  // return G <- gamma G + r (per environment copy, reset at episode ends) and clipped to
  // [-reward_clip, reward_clip]. Rewards are scaled, never shifted, so the optimum is unchanged.
  bool normalize_returns = false;
  double reward_clip = 10.0;
  uint64_t seed = 0;                       // weights, action sampling and minibatch order
};

// Throws hpdl::Error naming the first bad option.
void check_ppo_options(const PpoOptions& options);

// What one Adam step on one minibatch measured (before the step).
struct PpoLossLog {
  double policy_loss = 0, value_loss = 0, entropy = 0;
  double approx_kl = 0;       // mean(old_log_prob - log_prob)
  double clip_fraction = 0;   // share of |r - 1| > clip
};

// The action a policy chose, with what the update needs to remember.
struct PpoAction {
  int64_t index = 0;            // discrete tasks
  std::vector<double> vector;   // continuous tasks (unclipped sample; the task clips)
  double log_prob = 0;
  double value = 0;
};

class Ppo {
 public:
  // num_actions >= 1 for a categorical policy, or continuous with action_size >= 1 for a Gaussian one.
  // Throws as check_ppo_options and on bad sizes.
  Ppo(int64_t observation_size, int64_t num_actions, bool continuous, int64_t action_size, const PpoOptions& options);
  // The sizes of `env`'s observations and actions.
  Ppo(const Env& env, const PpoOptions& options);

  // act, deterministic_action and values take raw observations from the environment and, with
  // normalize_observations, normalise them with the current statistics (normalize_observation) first.
  // Samples actions for a batch of observations [K][observation_size] (no autograd).
  std::vector<PpoAction> act(const std::vector<Observation>& observations);
  // The most likely action (argmax or the Gaussian's mean) for one observation.
  PpoAction deterministic_action(const Observation& observation);
  // V(s) for a batch of observations (no autograd).
  std::vector<double> values(const std::vector<Observation>& observations);

  // What the networks see for a raw observation: itself, or its normalised and clipped form.
  // policy_output, value_output and loss take observations already in this form.
  Observation normalize_observation(const Observation& observation) const;
  // A reward as learnt from: times reward_scale, then, with normalize_returns, divided by the
  // running return's standard deviation and clipped.
  double normalize_reward(double reward) const;
  // The running statistics (the trainer updates them; they are saved with the agent).
  RunningMeanStd& observation_stats() { return obs_rms_; }
  RunningMeanStd& return_stats() { return ret_rms_; }

  // The policy's output for observations [B, observation_size]: logits [B, A] or means [B, D].
  Tensor policy_output(const Tensor& observations);
  // V(s) [B] for observations [B, observation_size].
  Tensor value_output(const Tensor& observations);
  // The learnt log standard deviations [D] (continuous only; undefined otherwise).
  Tensor log_std() const { return log_std_; }

  // One minibatch step: observations [B, obs], actions (indices for discrete, [B, D] rows for
  // continuous), with the rollout's log-probs, values, advantages and returns. Returns the losses
  // before the step.
  struct Minibatch {
    Tensor observations;                  // [B, obs] f32
    std::vector<int64_t> action_indices;  // discrete
    Tensor action_vectors;                // continuous [B, D] f32
    Tensor old_log_probs, old_values, advantages, returns;  // [B] f32
    // True when the advantages were already normalised over the whole rollout (all ranks);
    // normalize_advantages then does nothing more per minibatch.
    bool advantages_normalized = false;
  };
  // The total loss (a differentiable scalar) and its parts.
  Tensor loss(const Minibatch& batch, PpoLossLog* log = nullptr);
  PpoLossLog update(const Minibatch& batch);

  const PpoOptions& options() const { return options_; }
  int64_t observation_size() const { return observation_size_; }
  int64_t num_actions() const { return num_actions_; }
  bool continuous() const { return continuous_; }
  int64_t action_size() const { return action_size_; }
  optim::AdamW& optimizer() { return *optimizer_; }
  Generator& sample_generator() { return sample_gen_; }
  Generator& action_generator() { return act_gen_; }
  Generator& init_generator() { return init_gen_; }
  std::vector<Tensor> parameters() const;
  // Parameters by name ("actor.0.weight", ..., "log_std"), as the optimizer knows them.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  int64_t updates() const { return updates_; }
  void set_updates(int64_t n) { updates_ = n; }
  // Called in update() after backward and before the gradient-norm clip with the parameters (whose
  // .grad are set): data-parallel training averages the gradients over ranks here.
  void set_gradient_hook(std::function<void(const std::vector<Tensor>&)> hook) { gradient_hook_ = std::move(hook); }

 private:
  Tensor rows(const std::vector<Observation>& observations) const;
  PpoOptions options_;
  int64_t observation_size_, num_actions_, action_size_;
  bool continuous_;
  Generator init_gen_, act_gen_, sample_gen_;
  std::shared_ptr<nn::Sequential> actor_, critic_;  // separate networks (actor_ is the trunk when shared)
  std::shared_ptr<nn::Linear> policy_head_, value_head_;  // shared trunk only
  Tensor log_std_;
  std::unique_ptr<optim::AdamW> optimizer_;
  int64_t updates_ = 0;
  RunningMeanStd obs_rms_, ret_rms_;
  std::function<void(const std::vector<Tensor>&)> gradient_hook_;
};

struct PpoIterationLog {
  int64_t iteration = 0;        // 1-based
  int64_t total_steps = 0;      // env steps so far (all copies)
  int64_t episodes = 0;         // episodes finished in this iteration
  double mean_return = 0;       // their mean return (NaN when none finished)
  double moving_average = 0;    // mean return of the last `window` finished episodes
  PpoLossLog loss;              // averaged over the iteration's minibatch steps
  double lr = 0;
};

struct PpoTrainOptions {
  int64_t iterations = 100;
  uint64_t env_seed = 0;          // the e-th reset (over all copies) uses env_seed + e
  int64_t window = 20;            // episodes in the moving average
  double solved_return = 0;       // stop_when_solved: stop once a full window averages >= this
  bool stop_when_solved = false;
};

struct PpoTrainResult {
  int64_t iterations = 0, steps = 0, episodes = 0;
  bool solved = false;
  int64_t solved_iteration = 0;
  std::vector<double> returns;  // every finished episode (of this rank), in the order they finished
};

// Runs PPO with envs.size() copies (K >= 1, all of the agent's sizes).
// `on_iteration` (optional) sees each iteration's log.
PpoTrainResult train_ppo(Ppo& agent, std::vector<std::unique_ptr<Env>>& envs, const PpoTrainOptions& options,
                         const std::function<void(const PpoIterationLog&)>& on_iteration = {});

// Returns of `episodes` episodes with the deterministic action, reset with seed, seed + 1, ...
std::vector<double> evaluate_deterministic(Ppo& agent, Env& env, int64_t episodes, uint64_t seed);

}  // namespace hpdl::rl
