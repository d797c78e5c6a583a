// Inline float math for the CPU kernels' inner loops, in forms the compiler
// vectorizes (libm's expf is a scalar call: it took about 40% of an LSTM step).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace hpdl::cpu {

// exp(x) = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 in
// [-ln2/2, ln2/2] (ln 2 split in a high and a low part, Cody and Waite 1980),
// e^r by its degree-6 Taylor polynomial (relative error below 2e-7), 2^n built
// in the exponent bits. x is clamped to [-87, 88] so 2^n stays a normal float:
// exp_clamped(-inf) is about 1.6e-38, not 0.
inline float exp_clamped(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(xc * 1.44269504f + 0.5f);
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const auto bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// exp_clamped, but 0 below -87 (where expf would give a denormal), so a masked
// score of -inf contributes exactly nothing to a softmax sum.
inline float exp_underflow_zero(float x) { return x < -87.0f ? 0.0f : exp_clamped(x); }

}  // namespace hpdl::cpu
