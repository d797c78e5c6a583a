// Environments for reinforcement learning: a small episodic interface
// (reset(seed) -> observation; step(action) -> observation, reward,
// terminated, truncated) and three built-in tasks: CartPole, the classic
// pole-balancing control problem, Corridor, a 1-D chain small enough that
// its optimal policy is known exactly (for tests), and Pendulum, the classic
// swing-up with a continuous torque. Observations are plain vectors of
// doubles; discrete actions are indices 0 .. num_actions()-1, continuous ones
// vectors of action_size() doubles.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "hpdl/core/random.h"

namespace hpdl::rl {

using Observation = std::vector<double>;

// What one step returns. `terminated`: the task reached a terminal state (the
// value of what follows is zero). `truncated`: the episode was cut at the time
// limit (max_episode_steps) without reaching one; the state still has a value,
// so learners should bootstrap through it. Both can be true on the same step.
struct StepResult {
  Observation observation;
  double reward = 0;
  bool terminated = false;
  bool truncated = false;
  bool done() const { return terminated || truncated; }
};

// The episodic interface. Subclasses implement reset_state and step_state;
// the base keeps the bookkeeping that is the same for every task (the time
// limit, the step count, and the checks):
//   - step() before the first reset(), or after an episode ended (terminated
//     or truncated) without a new reset(), throws hpdl::Error;
//   - an action outside [0, num_actions()) throws hpdl::Error naming it;
//   - step(int64_t) on a task with continuous actions, step(vector) on one
//     with discrete actions, a continuous action of the wrong size or with a
//     non-finite value throw hpdl::Error saying which.
// reset(seed) is deterministic: the same seed gives the same initial state,
// and with the same actions the same episode.
class Env {
 public:
  virtual ~Env() = default;
  virtual std::string name() const = 0;
  virtual int64_t observation_size() const = 0;
  // Discrete tasks: the number of actions. Continuous tasks: 0.
  virtual int64_t num_actions() const = 0;
  // Steps after which an episode is truncated.
  virtual int64_t max_episode_steps() const = 0;
  // Continuous tasks override these: true, and the length of an action vector.
  virtual bool continuous_actions() const { return false; }
  virtual int64_t action_size() const { return 1; }

  Observation reset(uint64_t seed);
  StepResult step(int64_t action);                      // discrete tasks
  StepResult step(const std::vector<double>& action);   // continuous tasks

  int64_t elapsed_steps() const { return elapsed_; }  // steps since the last reset
  bool needs_reset() const { return needs_reset_; }   // before the first reset and after an episode ends

  // The whole dynamic state, for checkpoints: [elapsed steps, needs_reset (0/1), the task's
  // variables...]. Throws for a task that does not override task_state.
  std::vector<double> save_state() const;
  // Restores save_state() of the same task mid-episode; throws naming the task on a wrong length or value.
  void load_state(const std::vector<double>& state);

 protected:
  // Sets the initial state (drawing from `gen` as needed) and returns its observation.
  virtual Observation reset_state(Generator& gen) = 0;
  // Applies a valid action; fills observation, reward and terminated (not truncated).
  // Continuous tasks implement step_continuous_state instead (step_state is then never called).
  virtual StepResult step_state(int64_t action) = 0;
  virtual StepResult step_continuous_state(const std::vector<double>& action);
  // The task's variables (CartPole: x, x_dot, theta, theta_dot) and their restoration. The defaults
  // throw: a task without them cannot be checkpointed.
  virtual std::vector<double> task_state() const;
  virtual void set_task_state(const std::vector<double>& values);

 private:
  void check_can_step() const;
  StepResult finish_step(StepResult r);
  int64_t elapsed_ = 0;
  bool needs_reset_ = true;
};

// The return of each of `episodes` episodes, episode k starting from
// env.reset(seed + k), with `act` taking each step (it calls env.step with the
// policy's action for the observation). `caller` names the evaluation in errors.
std::vector<double> episode_returns(Env& env, int64_t episodes, uint64_t seed,
                                    const std::function<StepResult(const Observation&)>& act, const char* caller);

// CartPole (Barto, Sutton & Anderson 1983, "Neuronlike adaptive elements that
// can solve difficult learning control problems", IEEE SMC 13(5)): a pole
// hinged on a cart that moves on a frictionless track; a force of +-10 N is
// applied to the cart every tau = 0.02 s.
//   observation: [x, x_dot, theta, theta_dot] (m, m/s, rad, rad/s; theta = 0 upright)
//   actions: 0 pushes left (-force), 1 pushes right (+force)
//   reward: +1 for every step, the failing one included
//   terminated: |theta| > 12 degrees or |x| > 2.4 m after the step
//   truncated: after 500 steps (so the best return is 500)
//   initial state: each component uniform in [-0.05, 0.05], from the reset seed
// Dynamics (frictionless form of the paper's equations), with total mass
// M = m_cart + m_pole, half pole length l, F the applied force:
//   a = (F + m_pole l theta_dot^2 sin theta) / M
//   theta_acc = (g sin theta - cos theta * a) / (l (4/3 - m_pole cos^2 theta / M))
//   x_acc = a - m_pole l theta_acc cos theta / M
// integrated with explicit Euler: positions advance with the old velocities,
// then velocities with the accelerations.
struct CartPoleConfig {
  double gravity = 9.8;
  double cart_mass = 1.0;
  double pole_mass = 0.1;
  double half_length = 0.5;  // l: half the pole's length (m)
  double force = 10.0;
  double tau = 0.02;         // seconds per step
  double theta_limit = 12.0 * 3.14159265358979323846 / 180.0;  // rad
  double x_limit = 2.4;      // m
  int64_t max_steps = 500;
  double init_range = 0.05;  // initial state uniform in [-init_range, init_range]
};

class CartPole : public Env {
 public:
  // Throws hpdl::Error when a mass, length, force, tau, limit or max_steps is not positive.
  explicit CartPole(const CartPoleConfig& config = {});
  std::string name() const override { return "CartPole"; }
  int64_t observation_size() const override { return 4; }
  int64_t num_actions() const override { return 2; }
  int64_t max_episode_steps() const override { return config_.max_steps; }
  const CartPoleConfig& config() const { return config_; }
  // The current state [x, x_dot, theta, theta_dot].
  const Observation& state() const { return state_; }
  // Replaces the state (tests, demonstrations) after a reset; the episode goes on from it.
  void set_state(const Observation& state);

 protected:
  Observation reset_state(Generator& gen) override;
  StepResult step_state(int64_t action) override;
  std::vector<double> task_state() const override { return state_; }
  void set_task_state(const std::vector<double>& values) override { set_state(values); }

 private:
  CartPoleConfig config_;
  Observation state_ = Observation(4, 0.0);
};

// Corridor: cells 0 .. length-1, the agent starts in cell 0 and the goal is
// the last cell. Action 0 moves left (staying put at cell 0), 1 moves right.
// Every step costs -1; reaching the goal terminates. Truncated after
// max_steps. The observation is the one-hot code of the cell (length values).
// The optimal policy always moves right, with return -(length - 1).
class Corridor : public Env {
 public:
  // Throws hpdl::Error unless length >= 2 and max_steps >= 1.
  explicit Corridor(int64_t length = 8, int64_t max_steps = 50);
  std::string name() const override { return "Corridor"; }
  int64_t observation_size() const override { return length_; }
  int64_t num_actions() const override { return 2; }
  int64_t max_episode_steps() const override { return max_steps_; }
  int64_t position() const { return position_; }

 protected:
  Observation reset_state(Generator& gen) override;
  StepResult step_state(int64_t action) override;
  std::vector<double> task_state() const override { return {static_cast<double>(position_)}; }
  void set_task_state(const std::vector<double>& values) override;

 private:
  Observation one_hot() const;
  int64_t length_, max_steps_;
  int64_t position_ = 0;
};

// Pendulum: the classic swing-up (as in OpenAI Gym's Pendulum-v1): a rod of
// mass m and length l hinged at one end, theta = 0 upright, driven by a
// torque u clipped to [-max_torque, max_torque].
//   observation: [cos theta, sin theta, theta_dot]
//   action: [u] (continuous, one value)
//   reward: -(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2), from the
//           state before the step, normalize(theta) in [-pi, pi); at most 0
//   terminated: never; truncated: after 200 steps
//   initial state: theta uniform in [-pi, pi], theta_dot uniform in [-1, 1]
// Dynamics, semi-implicit Euler (velocity first, then the angle with the new velocity):
//   theta_dot' = clip(theta_dot + (3 g / (2 l) sin theta + 3 / (m l^2) u) dt, -max_speed, max_speed)
//   theta'     = theta + theta_dot' dt
struct PendulumConfig {
  double gravity = 10.0;
  double mass = 1.0;
  double length = 1.0;
  double dt = 0.05;
  double max_torque = 2.0;
  double max_speed = 8.0;
  int64_t max_steps = 200;
};

class Pendulum : public Env {
 public:
  // Throws hpdl::Error when a physical constant or max_steps is not positive.
  explicit Pendulum(const PendulumConfig& config = {});
  std::string name() const override { return "Pendulum"; }
  int64_t observation_size() const override { return 3; }
  int64_t num_actions() const override { return 0; }
  bool continuous_actions() const override { return true; }
  int64_t action_size() const override { return 1; }
  int64_t max_episode_steps() const override { return config_.max_steps; }
  const PendulumConfig& config() const { return config_; }
  // The current state [theta, theta_dot] (theta not normalised).
  const std::vector<double>& state() const { return state_; }
  // Replaces the state after a reset (tests); the episode goes on from it.
  void set_state(const std::vector<double>& state);
  // theta wrapped into [-pi, pi).
  static double normalize_angle(double theta);

 protected:
  Observation reset_state(Generator& gen) override;
  StepResult step_state(int64_t action) override;
  StepResult step_continuous_state(const std::vector<double>& action) override;
  std::vector<double> task_state() const override { return state_; }
  void set_task_state(const std::vector<double>& values) override { set_state(values); }

 private:
  Observation observe() const;
  PendulumConfig config_;
  std::vector<double> state_ = std::vector<double>(2, 0.0);
};

}  // namespace hpdl::rl
