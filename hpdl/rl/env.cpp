// The Env bookkeeping (time limit, checks) and the CartPole and Corridor tasks.
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

StepResult Env::step(int64_t action) {
  HPDL_CHECK(!needs_reset_, "rl::{}::step: the episode {}; call reset(seed) before step()", name(),
             elapsed_ == 0 ? "has not started" : "has ended (terminated or truncated)");
  HPDL_CHECK(action >= 0 && action < num_actions(), "rl::{}::step: action {} is out of range; valid actions are "
             "0 .. {}", name(), action, num_actions() - 1);
  StepResult r = step_state(action);
  ++elapsed_;
  r.truncated = elapsed_ >= max_episode_steps();
  needs_reset_ = r.done();
  return r;
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

}  // namespace hpdl::rl
