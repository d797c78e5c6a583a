// Element types and devices. float32 is the training type, float64 serves the
// reference kernels and gradient checks, bfloat16 and float16 (IEEE binary16)
// are storage types for mixed precision, int64 holds labels and indices, uint8
// raw image bytes. New types go at the end of the enum: the numbers are
// mirrored by the CUDA kernels (kern::Dt).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace hpdl {

enum class DType : uint8_t { f32, f64, bf16, i64, i32, u8, f16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "float32", "float64", "bfloat16", "int64", "int32", "uint8", "float16"
DType dtype_from_name(const std::string& name);  // throws on unknown names
inline bool dtype_is_float(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}

// bfloat16: the upper half of an IEEE float32, rounded to nearest even.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40);  // keep NaN a quiet NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  explicit operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// float16 (IEEE 754 binary16): 1 sign, 5 exponent (bias 15), 10 mantissa bits.
// float -> half rounds to nearest even, with subnormals (down to 2^-24),
// overflow to infinity (anything that rounds above 65504) and NaN kept a quiet
// NaN (sign and top payload bits preserved).
struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) {  // inf or NaN
      bits = static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0u));
      return;
    }
    if (abs >= 0x477ff000u) {  // >= 65520 = 65504 + half an ulp: rounds (ties to even) to infinity
      bits = static_cast<uint16_t>(sign | 0x7c00u);
      return;
    }
    if (abs < 0x38800000u) {  // below 2^-14: subnormal half (or zero)
      if (abs < 0x33000000u) {  // <= 2^-25 exactly rounds to zero (a tie with zero, which is even)
        bits = static_cast<uint16_t>(sign);
        return;
      }
      const uint32_t e = abs >> 23;               // 102..112
      const uint32_t m = (abs & 0x7fffffu) | 0x800000u;  // 24-bit significand
      const uint32_t shift = 126 - e;             // value = m * 2^(e-150); half ulp = 2^-24 -> m >> (126 - e)
      uint32_t h = m >> shift;
      const uint32_t rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
      if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
      bits = static_cast<uint16_t>(sign | h);
      return;
    }
    // normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even;
    // a carry out of the mantissa correctly bumps the exponent.
    uint32_t h = ((abs - 0x38000000u) >> 13);
    const uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    bits = static_cast<uint16_t>(sign | h);
  }
  explicit operator float() const {
    const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    const uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    uint32_t u;
    if (e == 0x1f) {
      u = sign | 0x7f800000u | (m << 13);  // inf, or NaN with its payload
    } else if (e != 0) {
      u = sign | ((e + 112) << 23) | (m << 13);
    } else if (m == 0) {
      u = sign;
    } else {  // subnormal: m * 2^-24, normalized for float32
      int shift = 0;
      uint32_t mm = m;
      while (!(mm & 0x400u)) {
        mm <<= 1;
        ++shift;
      }
      u = sign | static_cast<uint32_t>(113 - shift) << 23 | ((mm & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<f16>() { return DType::f16; }

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  bool operator==(const Device&) const = default;
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  std::string str() const;  // "cpu", "cuda:0"
  static Device parse(const std::string& s);  // "cpu", "cuda", "cuda:1"; throws otherwise
};

inline constexpr Device kCPU{DeviceType::cpu, 0};

}  // namespace hpdl
