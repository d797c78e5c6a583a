// Initializers: compute a bound or standard deviation from the fans and a
// gain, draw on the CPU from the given Generator (counter-based, so the values
// do not depend on threads), and copy into the tensor on its device.
#include "hpdl/nn/init.h"

#include <cmath>

#include "hpdl/autograd/node.h"

namespace hpdl::nn::init {

Fans compute_fans(const Tensor& w) {
  HPDL_CHECK(w.ndim() >= 2, "init: fan computation needs a weight with at least 2 dims, got shape {}",
             shape_str(w.shape()));
  int64_t receptive = 1;
  for (int i = 2; i < w.ndim(); ++i) receptive *= w.dim(i);
  return {w.dim(1) * receptive, w.dim(0) * receptive};
}

double calculate_gain(const std::string& nl, double a) {
  if (nl == "linear" || nl == "identity" || nl == "conv2d" || nl == "sigmoid") return 1.0;
  if (nl == "tanh") return 5.0 / 3.0;
  if (nl == "relu") return std::sqrt(2.0);
  if (nl == "leaky_relu") return std::sqrt(2.0 / (1.0 + a * a));
  if (nl == "selu") return 0.75;
  HPDL_FAIL("calculate_gain: unknown nonlinearity '{}' (known: linear, identity, conv2d, sigmoid, tanh, relu, "
            "leaky_relu, selu)", nl);
}

namespace {

void fill_from(Tensor& t, const Tensor& values) {
  NoGradGuard no_grad;
  t.copy_(values);
}

double fan_of(const Tensor& w, FanMode mode) {
  Fans f = compute_fans(w);
  int64_t fan = mode == FanMode::fan_in ? f.fan_in : f.fan_out;
  HPDL_CHECK(fan > 0, "init: zero fan for weight of shape {}", shape_str(w.shape()));
  return static_cast<double>(fan);
}

}  // namespace

void zeros_(Tensor& t) { t.fill_(0.0); }
void ones_(Tensor& t) { t.fill_(1.0); }
void constant_(Tensor& t, double value) { t.fill_(value); }

void uniform_(Tensor& t, Generator& gen, double low, double high) {
  HPDL_CHECK(low <= high, "init::uniform_: low {} > high {}", low, high);
  fill_from(t, Tensor::rand(t.shape(), gen, low, high, t.dtype()));
}

void normal_(Tensor& t, Generator& gen, double mean, double stddev) {
  HPDL_CHECK(stddev >= 0, "init::normal_: negative stddev {}", stddev);
  fill_from(t, Tensor::randn(t.shape(), gen, mean, stddev, t.dtype()));
}

void kaiming_uniform_(Tensor& w, Generator& gen, double a, FanMode mode, const std::string& nonlinearity) {
  const double stddev = calculate_gain(nonlinearity, a) / std::sqrt(fan_of(w, mode));
  const double bound = std::sqrt(3.0) * stddev;
  uniform_(w, gen, -bound, bound);
}

void kaiming_normal_(Tensor& w, Generator& gen, double a, FanMode mode, const std::string& nonlinearity) {
  normal_(w, gen, 0.0, calculate_gain(nonlinearity, a) / std::sqrt(fan_of(w, mode)));
}

void xavier_uniform_(Tensor& w, Generator& gen, double gain) {
  Fans f = compute_fans(w);
  const double bound = gain * std::sqrt(6.0 / static_cast<double>(f.fan_in + f.fan_out));
  uniform_(w, gen, -bound, bound);
}

void xavier_normal_(Tensor& w, Generator& gen, double gain) {
  Fans f = compute_fans(w);
  normal_(w, gen, 0.0, gain * std::sqrt(2.0 / static_cast<double>(f.fan_in + f.fan_out)));
}

void default_linear_init_(Tensor& weight, Tensor& bias, Generator& gen) {
  // gain(leaky_relu, sqrt(5)) = sqrt(1/3), so the bound is sqrt(3) * sqrt(1/3) / sqrt(fan_in) = 1/sqrt(fan_in).
  kaiming_uniform_(weight, gen, std::sqrt(5.0));
  if (bias.defined()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(compute_fans(weight).fan_in));
    uniform_(bias, gen, -bound, bound);
  }
}

}  // namespace hpdl::nn::init
