// GradScaler: loss scaling for mixed-precision training (float16 compute).
// float16 flushes gradients below ~6e-8 to zero; multiplying the loss by a
// large scale S before backward shifts every gradient up by S, and dividing
// the gradients by S before the optimizer step undoes it. With dynamic
// scaling (Micikevicius et al. 2018, "Mixed Precision Training"; PyTorch's
// torch.amp.GradScaler), S starts large (2^16), halves whenever a step's
// gradients contain inf or NaN (that step is skipped), and doubles after
// `growth_interval` consecutive good steps.
//
// One step:
//   Tensor loss = ...;
//   scaler.scale(loss).backward();
//   if (scaler.unscale_and_check(params)) opt.step();   // or scaler.step(opt)
//   scaler.update();
//
// A skipped step leaves the parameters and the optimizer untouched: no
// parameter update, no momentum/Adam buffer change, no step counter advance
// (so Adam's bias correction counts only steps taken). The caller's own step
// counter (data position, lr schedule) still advances, as with PyTorch, where
// the scheduler steps even when optimizer.step() was skipped.
//
// The non-finite check costs one host synchronization per step, not one per
// tensor: each gradient contributes sum(g * 0) (0 when finite, NaN when any
// element is inf or NaN), summed on the device into one scalar that is read
// once. With DataParallel, call unscale_and_check after the gradients are
// all-reduced (DataParallel::finish): every rank then holds the same averaged
// gradients (an inf or NaN on any rank propagates through the sum), so every
// rank reaches the same decision without another collective.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/optim/optimizer.h"

namespace hpdl::optim {

struct GradScalerOptions {
  double init_scale = 65536.0;   // 2^16
  double growth_factor = 2.0;    // > 1
  double backoff_factor = 0.5;   // in (0, 1)
  int64_t growth_interval = 2000;  // good steps in a row before the scale grows; > 0
  // false: a fixed scale (init_scale) that never changes; steps with
  // non-finite gradients are still skipped.
  bool dynamic = true;
};

class GradScaler {
 public:
  // Throws naming the option when one is out of range.
  explicit GradScaler(const GradScalerOptions& options = {});

  // loss * scale (differentiable; call backward on the result).
  Tensor scale(const Tensor& loss) const;
  // Divides every defined gradient of `params` by the scale in place and
  // checks them for inf/NaN (one host sync). Returns true when all are finite,
  // i.e. the optimizer step should be taken. Must be followed by update().
  bool unscale_and_check(const std::vector<Tensor>& params);
  bool unscale_and_check(const Optimizer& opt);
  // unscale_and_check(opt), opt.step() when finite, update(). Returns whether the step was taken.
  bool step(Optimizer& opt);
  // After unscale_and_check: backs off (scale *= backoff_factor, growth
  // tracker reset) when the gradients were not finite, else counts a good
  // step and grows the scale after growth_interval of them. No-op for a
  // fixed scale apart from the counters.
  void update();

  double get_scale() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }  // good steps since the last change
  int64_t skipped_steps() const { return skipped_; }          // steps skipped so far
  bool last_step_finite() const { return last_finite_; }
  const GradScalerOptions& options() const { return options_; }

  // "scale" (float64 scalar), "growth_tracker" and "skipped_steps" (int64
  // scalars): CPU tensors for a checkpoint (stored under "scaler." by the trainer).
  std::map<std::string, Tensor> state_dict() const;
  // Restores a state_dict(); checks every entry first (missing or unknown key,
  // non-scalar, a non-positive or non-finite scale) and throws naming it.
  void load_state_dict(const std::map<std::string, Tensor>& state);

 private:
  GradScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
  int64_t skipped_ = 0;
  bool checked_ = false;      // unscale_and_check ran since the last update()
  bool last_finite_ = true;
};

}  // namespace hpdl::optim
