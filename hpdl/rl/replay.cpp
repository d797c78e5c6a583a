// The replay ring: flat float arrays, one row per slot, copied into tensors
// when a batch is drawn.
#include "hpdl/rl/replay.h"

#include <algorithm>

#include "hpdl/core/error.h"

namespace hpdl::rl {

ReplayBuffer::ReplayBuffer(int64_t capacity, int64_t observation_size)
    : capacity_(capacity), observation_size_(observation_size) {
  HPDL_CHECK(capacity >= 1, "rl::ReplayBuffer: capacity {} must be >= 1", capacity);
  HPDL_CHECK(observation_size >= 1, "rl::ReplayBuffer: observation_size {} must be >= 1", observation_size);
  const auto rows = static_cast<size_t>(capacity), d = static_cast<size_t>(observation_size);
  observations_.resize(rows * d);
  next_observations_.resize(rows * d);
  rewards_.resize(rows);
  terminated_.resize(rows);
  actions_.resize(rows);
}

void ReplayBuffer::check_observation(const char* what, const Observation& obs) const {
  HPDL_CHECK(static_cast<int64_t>(obs.size()) == observation_size_, "rl::ReplayBuffer::push: the {} has {} values "
             "but the buffer stores observations of {}", what, obs.size(), observation_size_);
}

void ReplayBuffer::push(const Observation& observation, int64_t action, double reward,
                        const Observation& next_observation, bool terminated) {
  check_observation("observation", observation);
  check_observation("next observation", next_observation);
  HPDL_CHECK(action >= 0, "rl::ReplayBuffer::push: action {} must be >= 0", action);
  const auto slot = static_cast<size_t>(next_slot()), d = static_cast<size_t>(observation_size_);
  std::copy(observation.begin(), observation.end(), observations_.begin() + slot * d);
  std::copy(next_observation.begin(), next_observation.end(), next_observations_.begin() + slot * d);
  actions_[slot] = action;
  rewards_[slot] = static_cast<float>(reward);
  terminated_[slot] = terminated ? 1.0f : 0.0f;
  ++pushes_;
  size_ = std::min(size_ + 1, capacity_);
}

ReplayBatch ReplayBuffer::sample(int64_t batch_size, Generator& gen) const {
  HPDL_CHECK(size_ > 0, "rl::ReplayBuffer::sample: the buffer is empty; push transitions first");
  HPDL_CHECK(batch_size >= 1, "rl::ReplayBuffer::sample: batch_size {} must be >= 1", batch_size);
  std::vector<int64_t> indices(static_cast<size_t>(batch_size));
  for (auto& i : indices) {
    // floor(u * size) with u in [0, 1): uniform over the stored slots.
    i = std::min(static_cast<int64_t>(gen.next_uniform() * static_cast<double>(size_)), size_ - 1);
  }
  return gather(indices);
}

ReplayBatch ReplayBuffer::gather(const std::vector<int64_t>& indices) const {
  HPDL_CHECK(!indices.empty(), "rl::ReplayBuffer::gather: no indices given");
  const auto b = static_cast<int64_t>(indices.size()), d = observation_size_;
  std::vector<float> obs(static_cast<size_t>(b * d)), next(static_cast<size_t>(b * d)), rew(indices.size()),
      term(indices.size());
  std::vector<int64_t> act(indices.size());
  for (size_t row = 0; row < indices.size(); ++row) {
    const int64_t slot = indices[row];
    HPDL_CHECK(slot >= 0 && slot < size_, "rl::ReplayBuffer::gather: slot {} is out of range; {} transitions are "
               "stored", slot, size_);
    const auto from = static_cast<size_t>(slot * d), to = row * static_cast<size_t>(d);
    std::copy_n(observations_.begin() + from, d, obs.begin() + to);
    std::copy_n(next_observations_.begin() + from, d, next.begin() + to);
    act[row] = actions_[static_cast<size_t>(slot)];
    rew[row] = rewards_[static_cast<size_t>(slot)];
    term[row] = terminated_[static_cast<size_t>(slot)];
  }
  ReplayBatch batch;
  batch.observations = Tensor::from_vector<float>(obs, {b, d});
  batch.next_observations = Tensor::from_vector<float>(next, {b, d});
  batch.actions = Tensor::from_vector<int64_t>(act, {b});
  batch.rewards = Tensor::from_vector<float>(rew, {b});
  batch.terminated = Tensor::from_vector<float>(term, {b});
  batch.indices = indices;
  return batch;
}

int64_t ReplayBuffer::action_at(int64_t slot) const {
  HPDL_CHECK(slot >= 0 && slot < size_, "rl::ReplayBuffer::action_at: slot {} is out of range; {} stored", slot,
             size_);
  return actions_[static_cast<size_t>(slot)];
}

double ReplayBuffer::reward_at(int64_t slot) const {
  HPDL_CHECK(slot >= 0 && slot < size_, "rl::ReplayBuffer::reward_at: slot {} is out of range; {} stored", slot,
             size_);
  return rewards_[static_cast<size_t>(slot)];
}

}  // namespace hpdl::rl
