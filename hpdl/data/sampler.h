// Samplers: the order in which an epoch visits a dataset, and for data
// parallelism which part of it this rank sees. A shuffled order is a pure
// function of (seed, epoch), so every rank computes the same global
// permutation without communicating, and a restarted job recomputes it.
// The start position skips the samples already consumed, for exact resume.
#pragma once

#include <cstdint>
#include <vector>

namespace hpdl::data {

class Sampler {
 public:
  virtual ~Sampler() = default;
  // Samples one epoch yields on this rank (before skipping the start position).
  virtual int64_t epoch_length() const = 0;
  // The full epoch's dataset indices for `epoch` on this rank. Pure: depends
  // only on the constructor arguments and `epoch`.
  virtual std::vector<int64_t> epoch_indices(uint64_t epoch) const = 0;

  void set_epoch(uint64_t epoch) { epoch_ = epoch; }
  uint64_t epoch() const { return epoch_; }
  // Skip the first `position` samples of the current epoch (0 <= position <=
  // epoch_length()); a checkpoint stores the position of the next sample.
  void set_start(int64_t position);
  int64_t start() const { return start_; }
  // epoch_indices(epoch()) from start() on.
  std::vector<int64_t> indices() const;

 private:
  uint64_t epoch_ = 0;
  int64_t start_ = 0;
};

// 0, 1, ..., n-1 every epoch.
class SequentialSampler : public Sampler {
 public:
  explicit SequentialSampler(int64_t n) : n_(n) {}
  int64_t epoch_length() const override { return n_; }
  std::vector<int64_t> epoch_indices(uint64_t epoch) const override;

 private:
  int64_t n_;
};

// A permutation of 0..n-1 reshuffled each epoch from one seed.
class RandomSampler : public Sampler {
 public:
  RandomSampler(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  int64_t epoch_length() const override { return n_; }
  std::vector<int64_t> epoch_indices(uint64_t epoch) const override;

 private:
  int64_t n_;
  uint64_t seed_;
};

// Rank `rank` of `num_replicas` takes every num_replicas-th element of the
// global order (shuffled from (seed, epoch), or sequential), starting at
// `rank`. Without drop_last the order is padded by wrapping around to a
// multiple of num_replicas, so all ranks get ceil(n / num_replicas) samples
// (as torch.utils.data.DistributedSampler does); with drop_last the tail is
// cut to floor(n / num_replicas) per rank. Shards are disjoint up to padding.
class DistributedSampler : public Sampler {
 public:
  DistributedSampler(int64_t n, int num_replicas, int rank, bool shuffle = true, uint64_t seed = 0,
                     bool drop_last = false);
  int64_t epoch_length() const override { return per_rank_; }
  std::vector<int64_t> epoch_indices(uint64_t epoch) const override;

 private:
  int64_t n_;
  int replicas_, rank_;
  bool shuffle_;
  uint64_t seed_;
  int64_t per_rank_;
};

// The permutation of 0..n-1 for (seed, epoch): Fisher-Yates driven by the
// counter-based Generator, so it needs no state between epochs.
std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t epoch);

}  // namespace hpdl::data
