// Recurrent networks over a whole sequence: stacks of LSTM (Hochreiter &
// Schmidhuber 1997, with the forget gate of Gers et al. 2000) or GRU (Cho et
// al. 2014) layers, optionally bidirectional (Schuster & Paliwal 1997).
// Equations, gate order (LSTM i, f, g, o; GRU r, z, n) and the weight layout
// are PyTorch's and are written out at RnnParams in hpdl/backend/backend.h.
// One fused backend call runs the whole stack (reference loops, GEMMs through
// oneDNN on the CPU, cuDNN's RNN API on CUDA); backward is an opaque node that
// calls the backend's fused backward kernels: first-order only.
#pragma once

#include <cstdint>
#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl {

struct RnnOptions {
  int64_t num_layers = 1;
  bool bidirectional = false;
  bool batch_first = false;  // input and output [N, T, ...] instead of [T, N, ...]
};

struct RnnResult {
  Tensor output;  // [T, N, H * dirs] ([N, T, H * dirs] with batch_first): the last layer's h at every step
  Tensor h_n;     // [L * dirs, N, H]: the final hidden state of every (layer, direction), l0, l0_reverse, l1, ...
  Tensor c_n;     // [L * dirs, N, H]: the final cell state (LSTM; undefined for GRU)
};

// x [T, N, I] (or [N, T, I] with batch_first), float32 or float64; bfloat16 input (autocast
// activations) and states are widened to float32 and the result is float32.
// weights: 4 per (layer, direction) in the order l0, l0_reverse, l1, ...:
//   w_ih [4H, I or H*dirs], w_hh [4H, H], b_ih [4H], b_hh [4H]   (rows: i, f, g, o)
// H is read from w_hh. h0, c0: [L * dirs, N, H] or undefined (zeros); never batch-first.
// Gradients flow to x, h0, c0 and every weight. Throws naming the argument and the
// expected shape for any mismatch (input rank, sizes, weight count, dtype, device).
RnnResult lstm(const Tensor& x, const std::vector<Tensor>& weights, const Tensor& h0 = Tensor(),
               const Tensor& c0 = Tensor(), const RnnOptions& options = {});

// As lstm with 3 gates (rows r, z, n of w_ih, w_hh, b_ih, b_hh [3H, ...]) and no cell state.
RnnResult gru(const Tensor& x, const std::vector<Tensor>& weights, const Tensor& h0 = Tensor(),
              const RnnOptions& options = {});

}  // namespace hpdl
