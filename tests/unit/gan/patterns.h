// Shared by the GAN tests: small GANs for 8x8 images, four 8x8 patterns as a tiny data set, the per-pixel
// statistics a generator's samples are compared with, a one-thread scope, and
// the generator averages worked out by hand.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/core/threading.h"
#include "hpdl/gan/dcgan.h"
#include "hpdl/gan/wgan_gp.h"
#include "hpdl/nn/module.h"
#include "hpdl/optim/ema.h"

namespace hpdl::test {

// The sizes of a small GAN for 8x8 images (G 16 -> [32, 2, 2] -> [16, 4, 4] -> [1, 8, 8]),
// batch 32, for either trainer's options.
template <typename Options>
Options tiny_gan_options(uint64_t seed) {
  Options o;
  o.image_size = 8;
  o.latent_dim = 16;
  o.g_features = 16;
  o.d_features = 16;
  o.batch_size = 32;
  o.seed = seed;
  return o;
}

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

// A module's state dict as values (integer buffers too, exactly as doubles).
using Snapshot = std::map<std::string, std::vector<double>>;
inline Snapshot values_of(const std::map<std::string, Tensor>& state) {
  Snapshot out;
  for (const auto& [name, t] : state) out[name] = t.to_vector<double>();
  return out;
}
inline Snapshot snapshot(const nn::Module& m) { return values_of(m.state_dict()); }

// The EMA of the snapshots history[0] (the start) .. history[n] (after update n) by the
// definition in optim/ema.h: avg <- d_n avg + (1 - d_n) w_n with d_n = min(decay, (1 + n) / (10 + n))
// under warmup, else decay. Integer buffers are not averaged (expect_averages skips them).
inline Snapshot hand_ema(const std::vector<Snapshot>& history, double decay, bool warmup) {
  Snapshot avg = history.front();
  for (size_t n = 1; n < history.size(); ++n) {
    const double d = warmup ? std::min(decay, (1.0 + n) / (10.0 + n)) : decay;
    for (auto& [name, v] : avg)
      for (size_t i = 0; i < v.size(); ++i) v[i] = d * v[i] + (1 - d) * history[n].at(name)[i];
  }
  return avg;
}

// The averages `ema` holds against `expected` (float tensors, to float rounding), and its
// integer buffers (batch norm's counters) against the live model's `live`.
inline void expect_averages(const optim::ModelEma& ema, const Snapshot& expected, const Snapshot& live) {
  const std::map<std::string, Tensor> state = ema.state_dict();
  ASSERT_EQ(state.size(), expected.size());
  for (const auto& [name, t] : state) {
    const std::vector<double> got = t.to_vector<double>(), &want = expected.at(name);
    ASSERT_EQ(got.size(), want.size()) << name;
    if (!dtype_is_float(t.dtype())) {
      EXPECT_EQ(got, live.at(name)) << name << " is copied from the live model";
      continue;
    }
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-6 * (1 + std::abs(want[i]))) << name << "[" << i << "]";
  }
}

}  // namespace hpdl::test
