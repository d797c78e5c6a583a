// The pipeline benches' model and batch: a wide MLP (`hidden` layers of
// `width`, 10 classes, ReLU, seed 7, identical on every rank) and a random
// batch of `batch` rows with labels in [0, 10).
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/nn/models/models.h"

namespace hpdl::bench {

inline std::shared_ptr<nn::Sequential> wide_mlp(int64_t width, int hidden) {
  return std::dynamic_pointer_cast<nn::Sequential>(
      nn::models::mlp(width, std::vector<int64_t>(hidden, width), 10, "relu", 0.0, 7));
}

inline std::pair<Tensor, Tensor> random_batch(int64_t batch, int64_t width, uint64_t seed) {
  Generator g(seed);
  Tensor x = Tensor::randn({batch, width}, g);
  std::vector<int64_t> labels(batch);
  for (auto& v : labels) v = static_cast<int64_t>(g.next_u64() % 10);
  return {x, Tensor::from_vector(labels, {batch})};
}

}  // namespace hpdl::bench
