// RunningMeanStd: a batch is summarised with the two-pass formulas (mean,
// then the squared deviations from it) and merged into the running summary,
// which stays exact in the sense that merging two halves gives the summary of
// the whole up to rounding, in any grouping.
#include "hpdl/rl/normalize.h"

#include <algorithm>
#include <cmath>

#include "hpdl/core/error.h"

namespace hpdl::rl {

RunningMeanStd::RunningMeanStd(int64_t size) {
  HPDL_CHECK(size >= 1, "rl::RunningMeanStd: size {} must be >= 1", size);
  mean_.assign(static_cast<size_t>(size), 0.0);
  m2_.assign(static_cast<size_t>(size), 0.0);
}

void RunningMeanStd::clear() {
  count_ = 0;
  std::fill(mean_.begin(), mean_.end(), 0.0);
  std::fill(m2_.begin(), m2_.end(), 0.0);
}

void RunningMeanStd::update(const std::vector<double>& x) {
  HPDL_CHECK(x.size() == mean_.size(), "rl::RunningMeanStd::update: got {} values, the statistics have {}", x.size(),
             mean_.size());
  update(x.data(), 1);
}

void RunningMeanStd::update(const double* rows, int64_t n) {
  HPDL_CHECK(n >= 0, "rl::RunningMeanStd::update: row count {} must be >= 0", n);
  if (n == 0) return;
  const auto d = mean_.size();
  RunningMeanStd batch(size());
  batch.count_ = static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i)
    for (size_t j = 0; j < d; ++j) batch.mean_[j] += rows[static_cast<size_t>(i) * d + j];
  for (size_t j = 0; j < d; ++j) batch.mean_[j] /= batch.count_;
  for (int64_t i = 0; i < n; ++i)
    for (size_t j = 0; j < d; ++j) {
      const double dev = rows[static_cast<size_t>(i) * d + j] - batch.mean_[j];
      batch.m2_[j] += dev * dev;
    }
  merge(batch);
}

void RunningMeanStd::merge(const RunningMeanStd& other) {
  HPDL_CHECK(other.mean_.size() == mean_.size(), "rl::RunningMeanStd::merge: sizes differ ({} and {})", mean_.size(),
             other.mean_.size());
  if (other.count_ == 0) return;
  if (count_ == 0) {
    *this = other;
    return;
  }
  const double n = count_ + other.count_;
  for (size_t j = 0; j < mean_.size(); ++j) {
    const double delta = other.mean_[j] - mean_[j];
    mean_[j] += delta * other.count_ / n;
    m2_[j] += other.m2_[j] + delta * delta * count_ * other.count_ / n;
  }
  count_ = n;
}

std::vector<double> RunningMeanStd::variance() const {
  std::vector<double> v(mean_.size(), 1.0);
  if (count_ > 0)
    for (size_t j = 0; j < v.size(); ++j) v[j] = m2_[j] / count_;
  return v;
}

std::vector<double> RunningMeanStd::normalize(const std::vector<double>& x, double clip, double eps) const {
  HPDL_CHECK(x.size() == mean_.size(), "rl::RunningMeanStd::normalize: got {} values, the statistics have {}",
             x.size(), mean_.size());
  const auto var = variance();
  std::vector<double> out(x.size());
  for (size_t j = 0; j < x.size(); ++j) {
    double z = (x[j] - mean_[j]) / std::sqrt(var[j] + eps);
    if (clip > 0) z = std::clamp(z, -clip, clip);
    out[j] = z;
  }
  return out;
}

std::vector<double> RunningMeanStd::pack() const {
  std::vector<double> p;
  p.reserve(1 + 2 * mean_.size());
  p.push_back(count_);
  p.insert(p.end(), mean_.begin(), mean_.end());
  p.insert(p.end(), m2_.begin(), m2_.end());
  return p;
}

void RunningMeanStd::unpack(const std::vector<double>& packed, const char* what) {
  const auto d = mean_.size();
  HPDL_CHECK(packed.size() == 1 + 2 * d, "rl::RunningMeanStd: {} holds {} values; statistics of size {} need {}", what,
             packed.size(), d, 1 + 2 * d);
  for (size_t i = 0; i < packed.size(); ++i)
    HPDL_CHECK(std::isfinite(packed[i]), "rl::RunningMeanStd: {} value {} is {}", what, i, packed[i]);
  HPDL_CHECK(packed[0] >= 0, "rl::RunningMeanStd: {} has a negative count {}", what, packed[0]);
  for (size_t j = 0; j < d; ++j)
    HPDL_CHECK(packed[1 + d + j] >= 0, "rl::RunningMeanStd: {} has a negative M2 {} at {}", what, packed[1 + d + j], j);
  count_ = packed[0];
  std::copy(packed.begin() + 1, packed.begin() + 1 + static_cast<std::ptrdiff_t>(d), mean_.begin());
  std::copy(packed.begin() + 1 + static_cast<std::ptrdiff_t>(d), packed.end(), m2_.begin());
}

}  // namespace hpdl::rl
