// Shared by the GAN tests: four 8x8 patterns as a tiny data set, the per-pixel
// statistics a generator's samples are compared with, and a one-thread scope.
#pragma once

#include <cmath>
#include <utility>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/core/threading.h"

namespace hpdl::test {

// 256 images [256, 1, 8, 8] in {-1, 1}: four patterns (a horizontal bar, a
// vertical bar, the main diagonal, a centre square), 64 copies each.
inline Tensor four_patterns() {
  std::vector<float> v;
  for (int i = 0; i < 256; ++i)
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) {
        bool on = false;
        switch (i % 4) {
          case 0: on = r == 2 || r == 3; break;
          case 1: on = c == 5 || c == 6; break;
          case 2: on = r == c; break;
          default: on = r >= 3 && r <= 4 && c >= 3 && c <= 4; break;
        }
        v.push_back(on ? 1.0f : -1.0f);
      }
  return Tensor::from_vector(v, {256, 1, 8, 8});
}

// Per-pixel mean and standard deviation over the images of [M, 1, S, S].
inline std::pair<std::vector<double>, std::vector<double>> pixel_stats(const Tensor& images) {
  const int64_t m = images.dim(0), p = images.numel() / m;
  std::vector<double> v = images.to_vector<double>(), mean(p, 0.0), sd(p, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < p; ++j) mean[j] += v[i * p + j] / m;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < p; ++j) sd[j] += (v[i * p + j] - mean[j]) * (v[i * p + j] - mean[j]) / m;
  for (double& s : sd) s = std::sqrt(s);
  return {mean, sd};
}

// Mean absolute per-pixel difference of the mean images and of the std images.
inline std::pair<double, double> stats_gap(const Tensor& a, const Tensor& b) {
  auto [ma, sa] = pixel_stats(a);
  auto [mb, sb] = pixel_stats(b);
  double dm = 0, ds = 0;
  for (size_t j = 0; j < ma.size(); ++j) dm += std::abs(ma[j] - mb[j]) / ma.size(), ds += std::abs(sa[j] - sb[j]) / ma.size();
  return {dm, ds};
}

// One thread within its scope, whatever OMP_NUM_THREADS says: these tiny
// convolutions only lose time to thread hand-offs (the 1200-step run took 4 s
// on one thread and 91 s on two on a loaded 2-core machine; same numbers).
struct OneThread {
  int before = num_threads();
  OneThread() { set_num_threads(1); }
  ~OneThread() { set_num_threads(before); }
};

}  // namespace hpdl::test
