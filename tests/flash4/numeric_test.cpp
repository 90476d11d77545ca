// The reference's fp16 / bf16 conversions: round-to-nearest-even, overflow to infinity,
// subnormals, NaN, and correct (single) rounding from float64.
#include <cmath>

#include "reference/numeric.hpp"
#include <gtest/gtest.h>

namespace flash4_test {
namespace {

using namespace flash4::detail;

TEST(Fp16Conversion, EveryFiniteHalfRoundTripsThroughFloat) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const uint16_t h = uint16_t(bits);
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0) continue;  // NaN
    EXPECT_EQ(f32_to_f16_bits(f16_bits_to_f32(h)), h) << std::hex << bits;
  }
}

TEST(Fp16Conversion, KnownValues) {
  EXPECT_EQ(f32_to_f16_bits(1.0f), 0x3c00u);
  EXPECT_EQ(f32_to_f16_bits(-2.0f), 0xc000u);
  EXPECT_EQ(f32_to_f16_bits(65504.0f), 0x7bffu);
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -24)), 0x0001u);  // smallest subnormal
  EXPECT_EQ(f16_bits_to_f32(0x0001u), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_bits_to_f32(0x7c00u), INFINITY);
}

TEST(Fp16Conversion, TiesRoundToEven) {
  EXPECT_EQ(f32_to_f16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00u);      // halfway, even stays
  EXPECT_EQ(f32_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02u);  // halfway, odd rounds up
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -25)), 0x0000u);             // half the smallest subnormal
  EXPECT_EQ(f32_to_f16_bits(3 * std::ldexp(1.0f, -25)), 0x0002u);
}

TEST(Fp16Conversion, OverflowGoesToInfinityAndNaNStaysNaN) {
  EXPECT_EQ(f32_to_f16_bits(65519.0f), 0x7bffu);
  EXPECT_EQ(f32_to_f16_bits(65520.0f), 0x7c00u);
  EXPECT_EQ(f32_to_f16_bits(-1e30f), 0xfc00u);
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(f32_to_f16_bits(NAN))));
}

TEST(Bf16Conversion, KnownValuesAndTies) {
  EXPECT_EQ(f32_to_bf16_bits(1.0f), 0x3f80u);
  EXPECT_EQ(bf16_bits_to_f32(0x3f80u), 1.0f);
  EXPECT_EQ(f32_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80u);      // halfway, even stays
  EXPECT_EQ(f32_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82u);  // halfway, odd rounds up
  EXPECT_EQ(f32_to_bf16_bits(3.0e38f), 0x7f62u);
  EXPECT_EQ(f32_to_bf16_bits(3.4e38f), 0x7f80u);  // past the largest bf16 (3.39e38): infinity
  EXPECT_TRUE(std::isnan(bf16_bits_to_f32(f32_to_bf16_bits(NAN))));
}

// Rounding a double to float first and then to bf16 can round twice in the same
// direction; the reference must round once.
TEST(Bf16Conversion, DoubleRoundsOnceNotTwice) {
  // 1 + 2^-8 + 2^-30: just above the bf16 halfway point, so it rounds up to 1 + 2^-7.
  // As a float it becomes exactly 1 + 2^-8 (a tie), which would then round down to 1.
  const double x = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30);
  EXPECT_EQ(f64_to_bf16_bits(x), 0x3f81u);
  const double y = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  EXPECT_EQ(f64_to_f16_bits(y), 0x3c01u);
}

}  // namespace
}  // namespace flash4_test
