// Recurrent layers: parameter registration with PyTorch's names and init, and
// input checks that name the layer before the fused op runs.
#include "hpdl/nn/rnn.h"

#include <cmath>

#include "hpdl/nn/init.h"

namespace hpdl::nn {

RNNBase::RNNBase(RnnMode mode_, int64_t input, int64_t hidden, const RnnOptions& o, Generator& gen)
    : mode(mode_), input_size(input), hidden_size(hidden), options(o) {
  const char* kind = mode == RnnMode::lstm ? "LSTM" : "GRU";
  HPDL_CHECK(input > 0 && hidden > 0, "{}: input_size ({}) and hidden_size ({}) must be positive", kind, input, hidden);
  HPDL_CHECK(o.num_layers >= 1, "{}({}, {}): num_layers must be >= 1, got {}", kind, input, hidden, o.num_layers);
  const int64_t G = mode == RnnMode::lstm ? 4 : 3, D = o.bidirectional ? 2 : 1;
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const int64_t in = l == 0 ? input : hidden * D;
    for (int64_t d = 0; d < D; ++d) {
      const std::string sfx = "_l" + std::to_string(l) + (d ? "_reverse" : "");
      weights.push_back(register_parameter("weight_ih" + sfx, Tensor::empty({G * hidden, in})));
      weights.push_back(register_parameter("weight_hh" + sfx, Tensor::empty({G * hidden, hidden})));
      weights.push_back(register_parameter("bias_ih" + sfx, Tensor::empty({G * hidden})));
      weights.push_back(register_parameter("bias_hh" + sfx, Tensor::empty({G * hidden})));
    }
  }
  for (Tensor& w : weights) init::uniform_(w, gen, -bound, bound);
}

RnnResult RNNBase::forward_state(const Tensor& x, const Tensor& h0, const Tensor& c0) {
  HPDL_CHECK(x.defined() && x.ndim() == 3 && x.dim(2) == input_size,
             "{}({}, {}): input {} must be {} with {} features", type_name(), input_size, hidden_size,
             x.defined() ? shape_str(x.shape()) : std::string("(undefined)"),
             options.batch_first ? "[N, T, features] (batch_first)" : "[T, N, features]", input_size);
  if (mode == RnnMode::lstm) return lstm(x, weights, h0, c0, options);
  HPDL_CHECK(!c0.defined(), "GRU({}, {}): has no cell state, but c0 was given", input_size, hidden_size);
  return gru(x, weights, h0, options);
}

Tensor RNNBase::forward(const Tensor& x) { return forward_state(x).output; }

}  // namespace hpdl::nn
