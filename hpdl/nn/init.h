// Weight initialization. Every function fills a tensor in place (on any
// device, no autograd) from an explicit Generator, so a model built from one
// seed is bit-identical on every run and every thread count.
// Kaiming (He et al. 2015, "Delving Deep into Rectifiers") keeps the variance
// of activations constant through ReLU layers; Xavier (Glorot & Bengio 2010)
// balances forward and backward variance for symmetric activations.
#pragma once

#include <string>

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

namespace hpdl::nn::init {

enum class FanMode { fan_in, fan_out };

// Fans of a weight: [out, in] for linear, [out, in/groups, kh, kw] for conv
// (fan_in = in * kh * kw, fan_out = out * kh * kw). Needs ndim >= 2.
struct Fans {
  int64_t fan_in = 0, fan_out = 0;
};
Fans compute_fans(const Tensor& w);

// Recommended gain for a nonlinearity: "linear"/"conv2d"/"sigmoid"/"identity" 1,
// "tanh" 5/3, "relu" sqrt(2), "leaky_relu" sqrt(2 / (1 + a^2)), "selu" 3/4.
// Throws naming the unknown nonlinearity.
double calculate_gain(const std::string& nonlinearity, double a = 0.0);

void zeros_(Tensor& t);
void ones_(Tensor& t);
void constant_(Tensor& t, double value);
void uniform_(Tensor& t, Generator& gen, double low = 0.0, double high = 1.0);
void normal_(Tensor& t, Generator& gen, double mean = 0.0, double stddev = 1.0);

// Kaiming: std = gain / sqrt(fan); uniform bound = sqrt(3) * std.
// `a` is the negative slope used by gain("leaky_relu", a) when nonlinearity is
// "leaky_relu" (a = 0 gives ReLU's sqrt(2)).
void kaiming_uniform_(Tensor& w, Generator& gen, double a = 0.0, FanMode mode = FanMode::fan_in,
                      const std::string& nonlinearity = "leaky_relu");
void kaiming_normal_(Tensor& w, Generator& gen, double a = 0.0, FanMode mode = FanMode::fan_in,
                     const std::string& nonlinearity = "leaky_relu");
// Xavier: std = gain * sqrt(2 / (fan_in + fan_out)); uniform bound = sqrt(3) * std.
void xavier_uniform_(Tensor& w, Generator& gen, double gain = 1.0);
void xavier_normal_(Tensor& w, Generator& gen, double gain = 1.0);

// PyTorch's default for Linear and Conv2d, so initial states are comparable:
// weight kaiming_uniform with a = sqrt(5) (bound 1/sqrt(fan_in)), bias uniform
// in +-1/sqrt(fan_in). `bias` may be undefined.
void default_linear_init_(Tensor& weight, Tensor& bias, Generator& gen);

}  // namespace hpdl::nn::init
