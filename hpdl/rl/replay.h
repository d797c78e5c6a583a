// Experience replay (Lin 1992; Mnih et al. 2015): a fixed-capacity ring of
// transitions (s, a, r, s', terminated) from which learners draw uniform
// minibatches, breaking the correlation between consecutive steps.
#pragma once

#include <cstdint>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"
#include "hpdl/rl/env.h"

namespace hpdl::rl {

// A minibatch as tensors (D = observation size, B = batch size):
//   observations, next_observations: f32 [B, D]
//   actions: int64 [B]; rewards: f32 [B]
//   terminated: f32 [B], 1 where s' is terminal (no bootstrap), else 0
// `indices` are the ring slots the rows came from.
struct ReplayBatch {
  Tensor observations, actions, rewards, next_observations, terminated;
  std::vector<int64_t> indices;
  int64_t size() const { return static_cast<int64_t>(indices.size()); }
};

class ReplayBuffer {
 public:
  // Throws hpdl::Error unless capacity >= 1 and observation_size >= 1.
  ReplayBuffer(int64_t capacity, int64_t observation_size);

  // Stores a transition in the next slot; once full, overwrites the oldest.
  // Throws when an observation does not have observation_size values or the
  // action is negative. Pass terminated (not truncated): a truncated step
  // still bootstraps from s'.
  void push(const Observation& observation, int64_t action, double reward, const Observation& next_observation,
            bool terminated);

  // batch_size transitions drawn uniformly with replacement from the stored
  // ones, using `gen` (so a seeded generator gives the same batch). Throws
  // when the buffer is empty or batch_size < 1.
  ReplayBatch sample(int64_t batch_size, Generator& gen) const;
  // The transitions in the given slots, in order (each must be < size()).
  ReplayBatch gather(const std::vector<int64_t>& indices) const;

  int64_t size() const { return size_; }          // stored transitions, <= capacity
  int64_t capacity() const { return capacity_; }
  int64_t observation_size() const { return observation_size_; }
  int64_t pushes() const { return pushes_; }      // transitions ever pushed
  // The slot the next push writes.
  int64_t next_slot() const { return pushes_ % capacity_; }
  // Field access for tests and inspection (slot < size()).
  int64_t action_at(int64_t slot) const;
  double reward_at(int64_t slot) const;

 private:
  void check_observation(const char* what, const Observation& obs) const;
  int64_t capacity_, observation_size_;
  int64_t size_ = 0, pushes_ = 0;
  std::vector<float> observations_, next_observations_, rewards_, terminated_;  // [capacity * D] or [capacity]
  std::vector<int64_t> actions_;
};

}  // namespace hpdl::rl
