// Losses. Reduction "mean" (default), "sum" or "none".
// cross_entropy: logits [N, C], targets int64 [N] class indices; label
// smoothing eps spreads eps/C of the target mass uniformly (Szegedy et al. 2016).
// Regression losses, input and target float of one shape, r = input - target:
// mse_loss r^2; l1_loss |r| (gradient sign(r), 0 at r = 0);
// huber_loss 0.5 r^2 for |r| <= delta, delta (|r| - 0.5 delta) beyond (Huber 1964;
// continuous first derivative, also at |r| = delta; delta > 0, else throws).
// bce_with_logits: numerically stable max(x,0) - x*t + log(1 + exp(-|x|)).
#pragma once

#include <string>

#include "hpdl/core/tensor.h"

namespace hpdl {

enum class Reduction { mean, sum, none };
Reduction reduction_from_name(const std::string& name);

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing = 0.0,
                     Reduction reduction = Reduction::mean);
Tensor nll_loss(const Tensor& log_probs, const Tensor& targets, Reduction reduction = Reduction::mean);
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean);
Tensor l1_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::mean);
Tensor huber_loss(const Tensor& input, const Tensor& target, double delta = 1.0, Reduction reduction = Reduction::mean);
Tensor bce_with_logits(const Tensor& logits, const Tensor& targets, Reduction reduction = Reduction::mean);

}  // namespace hpdl
