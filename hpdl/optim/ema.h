// ModelEma: an exponential moving average of a model's weights (Polyak averaging
// with exponential weights), the model evaluated and exported at the end of
// training in many recipes: after each optimizer step, every average becomes
//   avg <- d avg + (1 - d) w   (one fused axpby per tensor)
// for the model's parameters and floating-point buffers (batch-norm running
// statistics); integer buffers (counters) are copied. With warmup the decay of
// update n (counted from 1) is min(decay, (1 + n) / (10 + n)), so the early,
// random weights fade out quickly instead of over ~1 / (1 - decay) steps.
// The averages live on the model's device, in its dtypes, and take no part in
// autograd.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/nn/module.h"

namespace hpdl::optim {

struct EmaOptions {
  double decay = 0.999;  // in [0, 1)
  bool warmup = true;
};

class ModelEma {
 public:
  // Starts the averages at the model's current weights. Throws on a decay outside [0, 1).
  ModelEma(nn::Module& model, EmaOptions options);

  // One update from the model's current weights (call after each optimizer step).
  void update();
  // The decay the next update() uses.
  double next_decay() const;
  int64_t updates() const { return updates_; }

  // Exchanges the model's weights with the averages; a second call restores them.
  // Evaluation of the averaged model runs between the two (see Applied).
  void swap();

  // The averages by the model's state-dict names (CPU copies).
  std::map<std::string, Tensor> state_dict() const;
  // Restores averages saved by state_dict() after `updates` updates. Throws naming
  // the entry when a name is missing or unknown or a shape differs from the model's.
  void load_state_dict(const std::map<std::string, Tensor>& state, int64_t updates);

  // Swaps the averages in for the life of the guard.
  class Applied {
   public:
    explicit Applied(ModelEma* ema) : ema_(ema) {
      if (ema_) ema_->swap();
    }
    ~Applied() {
      if (ema_) ema_->swap();
    }
    Applied(const Applied&) = delete;
    Applied& operator=(const Applied&) = delete;

   private:
    ModelEma* ema_;
  };

 private:
  struct Slot {
    std::string name;
    Tensor live;     // shares the model's TensorImpl
    Tensor average;  // same shape, dtype and device
  };
  std::vector<Slot> slots_;
  EmaOptions options_;
  int64_t updates_ = 0;
};

}  // namespace hpdl::optim
