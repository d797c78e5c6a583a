// float16 (IEEE binary16): float -> half rounding against hand-computed bit
// patterns (subnormals, the largest finite 65504, overflow to inf, NaN, ties
// to even), every rounding boundary, half -> float exactness over all 65536
// patterns, and the dtype plumbing (name, size, Tensor conversions).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "hpdl/core/dtype.h"
#include "hpdl/core/tensor.h"

using namespace hpdl;

namespace {

uint16_t bits_of(float f) { return f16(f).bits; }
float from_bits(uint16_t b) {
  f16 h;
  h.bits = b;
  return static_cast<float>(h);
}
float float_from_u32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

TEST(Float16, ConversionTable) {
  const float p24 = std::ldexp(1.0f, -24), p25 = std::ldexp(1.0f, -25);
  struct Case {
    float in;
    uint16_t out;
  };
  const Case cases[] = {
      {0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000}, {0.5f, 0x3800}, {0.1f, 0x2e66},
      {3.14159265f, 0x4248}, {1.0f / 3.0f, 0x3555},
      // largest finite, and just below / at the overflow threshold 65520 = 65504 + half an ulp
      {65504.0f, 0x7bff}, {-65504.0f, 0xfbff}, {65519.0f, 0x7bff}, {65519.996f, 0x7bff}, {65520.0f, 0x7c00},
      {-65520.0f, 0xfc00}, {1e6f, 0x7c00}, {3.0e38f, 0x7c00},
      {std::numeric_limits<float>::infinity(), 0x7c00}, {-std::numeric_limits<float>::infinity(), 0xfc00},
      // normals at the bottom, subnormals, and their rounding
      {std::ldexp(1.0f, -14), 0x0400}, {1023 * p24, 0x03ff}, {1023.5f * p24, 0x0400}, {p24, 0x0001},
      {-p24, 0x8001}, {p25, 0x0000}, {-p25, 0x8000}, {1.5f * p25, 0x0001}, {3 * p25, 0x0002}, {5 * p25, 0x0002},
      {7 * p25, 0x0004}, {std::ldexp(1.0f, -26), 0x0000}, {1e-10f, 0x0000}, {float_from_u32(1), 0x0000},
      // ties to even in the normal range
      {1.0f + std::ldexp(1.0f, -11), 0x3c00}, {1.0f + 3 * std::ldexp(1.0f, -11), 0x3c02},
      {1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20), 0x3c01}, {2049.0f, 0x6800}, {2051.0f, 0x6802},
      {2047.5f, 0x6800},  // a carry out of the mantissa bumps the exponent
  };
  for (const auto& c : cases)
    EXPECT_EQ(bits_of(c.in), c.out) << "f16(" << c.in << ") = 0x" << std::hex << bits_of(c.in) << ", expected 0x"
                                    << c.out;
}

TEST(Float16, NaNStaysQuietNaN) {
  for (uint32_t u : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fbfffffu, 0x7fffffffu}) {
    const uint16_t b = bits_of(float_from_u32(u));
    EXPECT_EQ(b & 0x7c00u, 0x7c00u) << std::hex << u;
    EXPECT_NE(b & 0x03ffu, 0u) << std::hex << u;   // not inf
    EXPECT_NE(b & 0x0200u, 0u) << std::hex << u;   // quiet
    EXPECT_EQ(b & 0x8000u, (u >> 16) & 0x8000u) << std::hex << u;  // sign kept
    EXPECT_TRUE(std::isnan(from_bits(b)));
  }
}

TEST(Float16, HalfToFloatIsExactForAllPatterns) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    const float f = from_bits(h);
    const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    const float sign = (h & 0x8000) ? -1.0f : 1.0f;
    if (e == 0x1f) {
      if (m == 0) EXPECT_EQ(f, sign * std::numeric_limits<float>::infinity()) << std::hex << h;
      else EXPECT_TRUE(std::isnan(f)) << std::hex << h;
      continue;
    }
    const float want = e == 0 ? sign * std::ldexp(static_cast<float>(m), -24)
                              : sign * std::ldexp(static_cast<float>(1024 + m), static_cast<int>(e) - 25);
    ASSERT_EQ(f, want) << std::hex << h;
    EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0);
    ASSERT_EQ(bits_of(f), h) << "round trip of 0x" << std::hex << h;  // every half is a float exactly
  }
}

// Every rounding boundary: the midpoint between two neighbouring halves rounds
// to the even one, the floats just beside it to the nearer one.
TEST(Float16, MidpointsRoundToEven) {
  for (uint16_t h = 0; h < 0x7bff; ++h) {
    const float lo = from_bits(h), hi = from_bits(static_cast<uint16_t>(h + 1));
    const float mid = lo + (hi - lo) / 2;  // exact: one bit more than a half has
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : h;
    ASSERT_EQ(bits_of(mid), even) << std::hex << h;
    ASSERT_EQ(bits_of(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(bits_of(std::nextafter(mid, 1e30f)), h + 1) << std::hex << h;
    ASSERT_EQ(bits_of(-mid), even | 0x8000) << std::hex << h;
  }
}

TEST(Float16, DTypePlumbing) {
  EXPECT_EQ(dtype_size(DType::f16), 2u);
  EXPECT_STREQ(dtype_name(DType::f16), "float16");
  EXPECT_EQ(dtype_from_name("float16"), DType::f16);
  EXPECT_EQ(dtype_from_name("fp16"), DType::f16);
  EXPECT_EQ(dtype_from_name("half"), DType::f16);
  EXPECT_TRUE(dtype_is_float(DType::f16));
  EXPECT_EQ(dtype_of<f16>(), DType::f16);
  // Appended at the end: the older dtypes keep their numbers (checkpoints, kern::Dt).
  EXPECT_EQ(static_cast<int>(DType::u8), 5);
  EXPECT_EQ(static_cast<int>(DType::f16), 6);
}

TEST(Float16, TensorConversions) {
  Tensor x = Tensor::from_vector<float>({1.0f, -0.1f, 65504.0f, 1e5f, 1e-8f, 3e-8f}, {6});
  Tensor h = x.to(DType::f16);
  EXPECT_EQ(h.dtype(), DType::f16);
  const f16* p = h.data<f16>();
  EXPECT_EQ(p[0].bits, 0x3c00);
  EXPECT_EQ(p[1].bits, 0xae66);
  EXPECT_EQ(p[2].bits, 0x7bff);
  EXPECT_EQ(p[3].bits, 0x7c00);
  EXPECT_EQ(p[4].bits, 0x0000);
  EXPECT_EQ(p[5].bits, 0x0001);
  auto back = h.to_vector<float>();
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_TRUE(std::isinf(back[3]));
  // f16 <-> other storage types go through float32.
  EXPECT_EQ(h.to(DType::f64).to_vector<double>()[2], 65504.0);
  EXPECT_EQ(h.to(DType::bf16).to(DType::f32).to_vector<float>()[0], 1.0f);
  EXPECT_EQ(Tensor::from_vector<int64_t>({-3, 7}, {2}).to(DType::f16).to_vector<float>(), (std::vector<float>{-3, 7}));
  EXPECT_EQ(Tensor::from_vector<double>({0.5, 2048.5}, {2}).to(DType::f16).to_vector<double>(),
            (std::vector<double>{0.5, 2048.0}));
}
