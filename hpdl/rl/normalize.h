// Running mean and variance of a stream of vectors, for PPO's observation and
// return normalisation. Samples are folded in with the pairwise update of Chan,
// Golub & LeVeque (1979, "Updating formulae and a pairwise algorithm for
// computing sample variances"): two summaries (n_a, mean_a, M2_a) and
// (n_b, mean_b, M2_b) of disjoint data merge exactly into the summary of
// their union, so batches, single samples and other ranks' statistics all go
// through one `merge`.
#pragma once

#include <cstdint>
#include <vector>

namespace hpdl::rl {

class RunningMeanStd {
 public:
  // Statistics of vectors of `size` values (size >= 1), empty at first.
  explicit RunningMeanStd(int64_t size = 1);

  // Folds in one vector (size values) or n vectors stored row after row
  // (n * size values). Throws hpdl::Error on a wrong length.
  void update(const std::vector<double>& x);
  void update(const double* rows, int64_t n);
  // Folds in another summary of disjoint data (Chan et al.):
  //   n = n_a + n_b, d = mean_b - mean_a,
  //   mean = mean_a + d n_b / n,   M2 = M2_a + M2_b + d^2 n_a n_b / n.
  // Throws when the sizes differ.
  void merge(const RunningMeanStd& other);
  void clear();

  int64_t size() const { return static_cast<int64_t>(mean_.size()); }
  double count() const { return count_; }
  const std::vector<double>& mean() const { return mean_; }
  const std::vector<double>& m2() const { return m2_; }  // sum of squared deviations from the mean
  // Population variance M2 / n; 1 while empty (so normalising nothing leaves values as they are).
  std::vector<double> variance() const;
  // (x - mean) / sqrt(var + eps), each value clipped to [-clip, clip] (clip <= 0: no clip).
  std::vector<double> normalize(const std::vector<double>& x, double clip, double eps = 1e-8) const;

  // The whole state as 1 + 2 size doubles: count, mean..., M2... (for checkpoints and allgather).
  std::vector<double> pack() const;
  // Restores pack(); throws naming `what` on a wrong length, a negative count or M2, or a non-finite value.
  void unpack(const std::vector<double>& packed, const char* what);

 private:
  double count_ = 0;
  std::vector<double> mean_, m2_;
};

}  // namespace hpdl::rl
