// Element types and devices. float32 is the training type, float64 serves the
// reference kernels and gradient checks, bfloat16 is a storage type for mixed
// precision, int64 holds labels and indices, uint8 raw image bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace hpdl {

enum class DType : uint8_t { f32, f64, bf16, i64, i32, u8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "float32", "float64", "bfloat16", "int64", "int32", "uint8"
DType dtype_from_name(const std::string& name);  // throws on unknown names
inline bool dtype_is_float(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::bf16; }

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

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }

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
