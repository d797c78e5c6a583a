// Recurrent layers over the fused ops in hpdl/ops/rnn.h: a stack of LSTM or
// GRU layers, optionally bidirectional. Parameters per layer l and direction
// (suffix "_reverse" for the backward one), named and shaped as PyTorch's
// torch.nn.LSTM / torch.nn.GRU so state dicts load across:
//   weight_ih_l{l}[_reverse] [G*H, in_l]   weight_hh_l{l}[_reverse] [G*H, H]
//   bias_ih_l{l}[_reverse]   [G*H]         bias_hh_l{l}[_reverse]   [G*H]
// (G = 4 for LSTM, rows i, f, g, o; G = 3 for GRU, rows r, z, n; in_0 = input
// size, in_l = H * directions above). Init: PyTorch's default, every parameter
// uniform in +-1/sqrt(H).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hpdl/backend/backend.h"
#include "hpdl/core/random.h"
#include "hpdl/nn/module.h"
#include "hpdl/ops/rnn.h"

namespace hpdl::nn {

class RNNBase : public Module {
 public:
  RNNBase(RnnMode mode, int64_t input_size, int64_t hidden_size, const RnnOptions& options, Generator& gen);
  // x [T, N, I] ([N, T, I] with batch_first) -> output [T, N, H*dirs] (or [N, T, H*dirs]).
  Tensor forward(const Tensor& x) override;
  // Output and final states; h0 and c0 [L*dirs, N, H] or undefined (zeros). c0 must be
  // undefined for GRU. Throws naming the layer and the expected shapes.
  RnnResult forward_state(const Tensor& x, const Tensor& h0 = Tensor(), const Tensor& c0 = Tensor());
  std::string type_name() const override { return mode == RnnMode::lstm ? "LSTM" : "GRU"; }

  RnnMode mode;
  int64_t input_size, hidden_size;
  RnnOptions options;
  std::vector<Tensor> weights;  // the parameters in the order ops::lstm / ops::gru take them
};

class LSTM : public RNNBase {
 public:
  LSTM(int64_t input_size, int64_t hidden_size, const RnnOptions& options = {}, Generator& gen = default_generator())
      : RNNBase(RnnMode::lstm, input_size, hidden_size, options, gen) {}
};

class GRU : public RNNBase {
 public:
  GRU(int64_t input_size, int64_t hidden_size, const RnnOptions& options = {}, Generator& gen = default_generator())
      : RNNBase(RnnMode::gru, input_size, hidden_size, options, gen) {}
};

}  // namespace hpdl::nn
