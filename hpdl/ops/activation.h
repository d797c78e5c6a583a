// Softmax family and dropout. (Pointwise activations are in elementwise.h.)
#pragma once

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

namespace hpdl {

Tensor softmax(const Tensor& x, int64_t axis = -1);
Tensor log_softmax(const Tensor& x, int64_t axis = -1);
// Inverted dropout: zeroes each element with probability p and scales the rest
// by 1/(1-p) in training; identity otherwise. The mask comes from `gen`
// (counter-based: reproducible for any thread count).
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);

}  // namespace hpdl
