// The Env bookkeeping (time limit, checks) and the CartPole, Corridor and Pendulum tasks.
#include "hpdl/rl/env.h"

#include <algorithm>
#include <cmath>

#include "hpdl/core/error.h"

namespace hpdl::rl {

Observation Env::reset(uint64_t seed) {
  Generator gen(seed);
  Observation obs = reset_state(gen);
  elapsed_ = 0;
  needs_reset_ = false;
  return obs;
}

void Env::check_can_step() const {
  HPDL_CHECK(!needs_reset_, "rl::{}::step: the episode {}; call reset(seed) before step()", name(),
             elapsed_ == 0 ? "has not started" : "has ended (terminated or truncated)");
}

StepResult Env::finish_step(StepResult r) {
  ++elapsed_;
  r.truncated = elapsed_ >= max_episode_steps();
  needs_reset_ = r.done();
  return r;
}

StepResult Env::step(int64_t action) {
  HPDL_CHECK(!continuous_actions(), "rl::{}::step: the task has continuous actions ({} values); pass them as a "
             "std::vector<double>, not the index {}", name(), action_size(), action);
  check_can_step();
  HPDL_CHECK(action >= 0 && action < num_actions(), "rl::{}::step: action {} is out of range; valid actions are "
             "0 .. {}", name(), action, num_actions() - 1);
  return finish_step(step_state(action));
}

StepResult Env::step(const std::vector<double>& action) {
  HPDL_CHECK(continuous_actions(), "rl::{}::step: the task has {} discrete actions; pass an index, not a vector of "
             "{} values", name(), num_actions(), action.size());
  check_can_step();
  HPDL_CHECK(static_cast<int64_t>(action.size()) == action_size(), "rl::{}::step: the action has {} values; the "
             "task takes {}", name(), action.size(), action_size());
  for (size_t i = 0; i < action.size(); ++i)
    HPDL_CHECK(std::isfinite(action[i]), "rl::{}::step: action value {} is {}; it must be finite", name(), i,
               action[i]);
  return finish_step(step_continuous_state(action));
}

StepResult Env::step_continuous_state(const std::vector<double>&) {
  HPDL_FAIL("rl::{}: continuous_actions() is true but step_continuous_state is not implemented", name());
}

std::vector<double> Env::task_state() const {
  HPDL_FAIL("rl::{}: the task does not save its state (override task_state and set_task_state to checkpoint it)",
            name());
}

void Env::set_task_state(const std::vector<double>&) {
  HPDL_FAIL("rl::{}: the task does not restore its state (override task_state and set_task_state to checkpoint it)",
            name());
}

std::vector<double> Env::save_state() const {
  std::vector<double> s = {static_cast<double>(elapsed_), needs_reset_ ? 1.0 : 0.0};
  const auto t = task_state();
  s.insert(s.end(), t.begin(), t.end());
  return s;
}

void Env::load_state(const std::vector<double>& state) {
  const size_t n = task_state().size();
  HPDL_CHECK(state.size() == 2 + n, "rl::{}::load_state: {} values given; this task's state has {} (step count, "
             "reset flag and {} variables)", name(), state.size(), 2 + n, n);
  HPDL_CHECK(state[0] >= 0 && state[0] <= static_cast<double>(max_episode_steps()) && state[0] == std::floor(state[0])
                 && (state[1] == 0.0 || state[1] == 1.0),
             "rl::{}::load_state: step count {} or reset flag {} is invalid", name(), state[0], state[1]);
  set_task_state(std::vector<double>(state.begin() + 2, state.end()));
  elapsed_ = static_cast<int64_t>(state[0]);
  needs_reset_ = state[1] == 1.0;
}

CartPole::CartPole(const CartPoleConfig& config) : config_(config) {
  const auto& c = config_;
  HPDL_CHECK(c.gravity > 0 && c.cart_mass > 0 && c.pole_mass > 0 && c.half_length > 0 && c.force > 0 && c.tau > 0,
             "rl::CartPole: gravity ({}), cart_mass ({}), pole_mass ({}), half_length ({}), force ({}) and tau ({}) "
             "must be positive", c.gravity, c.cart_mass, c.pole_mass, c.half_length, c.force, c.tau);
  HPDL_CHECK(c.theta_limit > 0 && c.x_limit > 0 && c.max_steps > 0 && c.init_range >= 0,
             "rl::CartPole: theta_limit ({}), x_limit ({}) and max_steps ({}) must be positive and init_range ({}) "
             ">= 0", c.theta_limit, c.x_limit, c.max_steps, c.init_range);
}

void CartPole::set_state(const Observation& state) {
  HPDL_CHECK(state.size() == 4, "rl::CartPole::set_state: the state has {} values; it needs 4 "
             "[x, x_dot, theta, theta_dot]", state.size());
  state_ = state;
}

Observation CartPole::reset_state(Generator& gen) {
  for (double& v : state_) v = -config_.init_range + 2 * config_.init_range * gen.next_uniform();
  return state_;
}

StepResult CartPole::step_state(int64_t action) {
  const auto& c = config_;
  const double x = state_[0], x_dot = state_[1], theta = state_[2], theta_dot = state_[3];
  const double f = action == 1 ? c.force : -c.force;
  const double total_mass = c.cart_mass + c.pole_mass;
  const double sin_t = std::sin(theta), cos_t = std::cos(theta);
  // The cart's acceleration before the pole's reaction, per unit of total mass.
  const double a = (f + c.pole_mass * c.half_length * theta_dot * theta_dot * sin_t) / total_mass;
  const double theta_acc =
      (c.gravity * sin_t - cos_t * a) / (c.half_length * (4.0 / 3.0 - c.pole_mass * cos_t * cos_t / total_mass));
  const double x_acc = a - c.pole_mass * c.half_length * theta_acc * cos_t / total_mass;
  // Explicit Euler: positions with the old velocities, velocities with the accelerations.
  state_ = {x + c.tau * x_dot, x_dot + c.tau * x_acc, theta + c.tau * theta_dot, theta_dot + c.tau * theta_acc};

  StepResult r;
  r.observation = state_;
  r.reward = 1.0;
  r.terminated = std::abs(state_[0]) > c.x_limit || std::abs(state_[2]) > c.theta_limit;
  return r;
}

Corridor::Corridor(int64_t length, int64_t max_steps) : length_(length), max_steps_(max_steps) {
  HPDL_CHECK(length >= 2, "rl::Corridor: length {} must be >= 2 (a start and a goal cell)", length);
  HPDL_CHECK(max_steps >= 1, "rl::Corridor: max_steps {} must be >= 1", max_steps);
}

Observation Corridor::one_hot() const {
  Observation obs(static_cast<size_t>(length_), 0.0);
  obs[static_cast<size_t>(position_)] = 1.0;
  return obs;
}

void Corridor::set_task_state(const std::vector<double>& values) {
  HPDL_CHECK(values.size() == 1 && values[0] >= 0 && values[0] < static_cast<double>(length_) &&
                 values[0] == std::floor(values[0]),
             "rl::Corridor: a state is one cell index in [0, {}), got {} values", length_, values.size());
  position_ = static_cast<int64_t>(values[0]);
}

Observation Corridor::reset_state(Generator&) {
  position_ = 0;  // the start is fixed; the seed has nothing to draw
  return one_hot();
}

StepResult Corridor::step_state(int64_t action) {
  position_ = action == 1 ? position_ + 1 : std::max<int64_t>(position_ - 1, 0);
  StepResult r;
  r.observation = one_hot();
  r.reward = -1.0;
  r.terminated = position_ == length_ - 1;
  return r;
}

Pendulum::Pendulum(const PendulumConfig& config) : config_(config) {
  const auto& c = config_;
  HPDL_CHECK(c.gravity > 0 && c.mass > 0 && c.length > 0 && c.dt > 0 && c.max_torque > 0 && c.max_speed > 0 &&
                 c.max_steps > 0,
             "rl::Pendulum: gravity ({}), mass ({}), length ({}), dt ({}), max_torque ({}), max_speed ({}) and "
             "max_steps ({}) must be positive", c.gravity, c.mass, c.length, c.dt, c.max_torque, c.max_speed,
             c.max_steps);
}

double Pendulum::normalize_angle(double theta) {
  constexpr double kPi = 3.14159265358979323846;
  double t = std::fmod(theta + kPi, 2 * kPi);
  if (t < 0) t += 2 * kPi;
  return t - kPi;
}

void Pendulum::set_state(const std::vector<double>& state) {
  HPDL_CHECK(state.size() == 2, "rl::Pendulum::set_state: the state has {} values; it needs 2 [theta, theta_dot]",
             state.size());
  state_ = state;
}

Observation Pendulum::observe() const { return {std::cos(state_[0]), std::sin(state_[0]), state_[1]}; }

Observation Pendulum::reset_state(Generator& gen) {
  constexpr double kPi = 3.14159265358979323846;
  state_[0] = -kPi + 2 * kPi * gen.next_uniform();
  state_[1] = -1.0 + 2.0 * gen.next_uniform();
  return observe();
}

StepResult Pendulum::step_state(int64_t) {
  HPDL_FAIL("rl::Pendulum: discrete step_state called; the task has continuous actions");
}

StepResult Pendulum::step_continuous_state(const std::vector<double>& action) {
  const auto& c = config_;
  const double theta = state_[0], theta_dot = state_[1];
  const double u = std::clamp(action[0], -c.max_torque, c.max_torque);
  const double angle = normalize_angle(theta);
  StepResult r;
  r.reward = -(angle * angle + 0.1 * theta_dot * theta_dot + 0.001 * u * u);
  const double acc = 3.0 * c.gravity / (2.0 * c.length) * std::sin(theta) + 3.0 / (c.mass * c.length * c.length) * u;
  const double new_dot = std::clamp(theta_dot + acc * c.dt, -c.max_speed, c.max_speed);
  state_ = {theta + new_dot * c.dt, new_dot};
  r.observation = observe();
  r.terminated = false;
  return r;
}

std::vector<double> episode_returns(Env& env, int64_t episodes, uint64_t seed,
                                    const std::function<StepResult(const Observation&)>& act, const char* caller) {
  HPDL_CHECK(episodes >= 1, "{}: episodes {} must be >= 1", caller, episodes);
  std::vector<double> returns;
  for (int64_t k = 0; k < episodes; ++k) {
    Observation obs = env.reset(seed + static_cast<uint64_t>(k));
    double total = 0;
    for (bool done = false; !done;) {
      StepResult r = act(obs);
      total += r.reward;
      obs = std::move(r.observation);
      done = r.done();
    }
    returns.push_back(total);
  }
  return returns;
}

}  // namespace hpdl::rl
