// Samplers. The shuffle is Fisher-Yates (Knuth, TAOCP vol. 2, Algorithm P)
// with the swap index drawn from Generator::bits(epoch_seed, step): the
// epoch's seed is itself a hash of (seed, epoch), so epochs are independent
// streams and no generator state has to be saved to resume.
#include "hpdl/data/sampler.h"

#include <algorithm>
#include <numeric>

#include "hpdl/core/error.h"
#include "hpdl/core/random.h"

namespace hpdl::data {

std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  const uint64_t epoch_seed = Generator::bits(seed ^ 0x5A4D504C45525321ull, epoch);
  for (int64_t i = n - 1; i > 0; --i) {
    // A 53-bit uniform scaled onto [0, i]; the bias is below 2^-20 for datasets under 2^33 samples.
    const double u = Generator::uniform(epoch_seed, static_cast<uint64_t>(i));
    const int64_t j = std::min(i, static_cast<int64_t>(u * static_cast<double>(i + 1)));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

void Sampler::set_start(int64_t position) {
  HPDL_CHECK(position >= 0 && position <= epoch_length(),
             "Sampler: start position {} is outside the epoch of {} samples (was the checkpoint written with a "
             "different dataset, batch size or rank count?)", position, epoch_length());
  start_ = position;
}

std::vector<int64_t> Sampler::indices() const {
  std::vector<int64_t> all = epoch_indices(epoch_);
  all.erase(all.begin(), all.begin() + std::min<int64_t>(start_, static_cast<int64_t>(all.size())));
  return all;
}

std::vector<int64_t> SequentialSampler::epoch_indices(uint64_t) const {
  std::vector<int64_t> p(static_cast<size_t>(n_));
  std::iota(p.begin(), p.end(), int64_t{0});
  return p;
}

std::vector<int64_t> RandomSampler::epoch_indices(uint64_t epoch) const { return permutation(n_, seed_, epoch); }

DistributedSampler::DistributedSampler(int64_t n, int num_replicas, int rank, bool shuffle, uint64_t seed,
                                       bool drop_last)
    : n_(n), replicas_(num_replicas), rank_(rank), shuffle_(shuffle), seed_(seed) {
  HPDL_CHECK(num_replicas >= 1 && rank >= 0 && rank < num_replicas,
             "DistributedSampler: rank {} of {} replicas is invalid", rank, num_replicas);
  HPDL_CHECK(n > 0, "DistributedSampler: the dataset is empty");
  per_rank_ = drop_last ? n / num_replicas : (n + num_replicas - 1) / num_replicas;
  HPDL_CHECK(per_rank_ > 0, "DistributedSampler: {} samples cannot feed {} replicas with drop_last", n, num_replicas);
}

std::vector<int64_t> DistributedSampler::epoch_indices(uint64_t epoch) const {
  std::vector<int64_t> global;
  if (shuffle_) {
    global = permutation(n_, seed_, epoch);
  } else {
    global.resize(static_cast<size_t>(n_));
    std::iota(global.begin(), global.end(), int64_t{0});
  }
  std::vector<int64_t> mine(static_cast<size_t>(per_rank_));
  for (int64_t k = 0; k < per_rank_; ++k)  // wrap around for the padding
    mine[static_cast<size_t>(k)] = global[static_cast<size_t>((rank_ + k * replicas_) % n_)];
  return mine;
}

}  // namespace hpdl::data
