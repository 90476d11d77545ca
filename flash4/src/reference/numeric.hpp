// Portable fp16 / bf16 <-> float conversions (round-to-nearest-even) and typed row
// loads/stores for the CPU reference and the CPU kernels. Header-only so tests can build inputs with the
// same bit-exact rounding.
#pragma once

#include <flash4/flash4.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace flash4::detail {

inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(float(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t f32_to_f16_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN stays a (quiet) NaN
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {
    // Below 2^-14: a half subnormal, m * 2^-24. Scaling by 2^24 is exact; nearbyint
    // rounds half to even in the default rounding mode. m = 1024 is the smallest normal.
    const float scaled = std::bit_cast<float>(ax) * 16777216.0f;
    return uint16_t(sign | uint16_t(std::nearbyint(scaled)));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to even; a
  // carry out of the mantissa correctly bumps the exponent.
  const uint32_t rounded = ax + 0xfffu + ((ax >> 13) & 1u);
  return uint16_t(sign | ((rounded - 0x38000000u) >> 13));
}

inline float bf16_bits_to_f32(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

inline uint16_t f32_to_bf16_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// double -> float rounding to odd: truncate, then set the last bit if inexact. Rounding
// that float again to a format with at least 2 fewer mantissa bits (fp16: 13 fewer,
// bf16: 16 fewer) gives the correctly rounded result of the double (no double rounding).
inline float f64_to_f32_round_to_odd(double d) {
  if (std::isnan(d)) return float(d);
  float f = float(d);
  if (std::fabs(double(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  if (double(f) != d) f = std::bit_cast<float>(std::bit_cast<uint32_t>(f) | 1u);
  return f;
}

inline uint16_t f64_to_f16_bits(double d) { return f32_to_f16_bits(f64_to_f32_round_to_odd(d)); }
inline uint16_t f64_to_bf16_bits(double d) { return f32_to_bf16_bits(f64_to_f32_round_to_odd(d)); }

inline int64_t dtype_size(flash4_dtype dtype) {
  switch (dtype) {
    case FLASH4_F64: return 8;
    case FLASH4_F32: return 4;
    case FLASH4_F16:
    case FLASH4_BF16: return 2;
  }
  return 0;
}

// Reads n contiguous elements starting at element `offset` of `base`, converted to Dst
// (double for the reference, float for the CPU kernels: exact but for f64 -> float).
template <typename Dst>
void load_row(flash4_dtype dtype, const void* base, int64_t offset, int64_t n, Dst* dst) {
  switch (dtype) {
    case FLASH4_F64: {
      const double* p = static_cast<const double*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = Dst(p[i]);
      return;
    }
    case FLASH4_F32: {
      const float* p = static_cast<const float*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = p[i];
      return;
    }
    case FLASH4_F16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_bits_to_f32(p[i]);
      return;
    }
    case FLASH4_BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_f32(p[i]);
      return;
    }
  }
}

// One element rounded to nearest-even fp16 / bf16 bits: from double through round-to-odd
// float (no double rounding), from float directly.
inline uint16_t f16_bits(double x) { return f64_to_f16_bits(x); }
inline uint16_t f16_bits(float x) { return f32_to_f16_bits(x); }
inline uint16_t bf16_bits(double x) { return f64_to_bf16_bits(x); }
inline uint16_t bf16_bits(float x) { return f32_to_bf16_bits(x); }

// Writes n contiguous elements at element `offset` of `base`, each rounded once to
// nearest-even from Src (double for the reference, float for the CPU kernels).
template <typename Src>
void store_row(flash4_dtype dtype, void* base, int64_t offset, int64_t n, const Src* src) {
  switch (dtype) {
    case FLASH4_F64: {
      double* p = static_cast<double*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) p[i] = src[i];
      return;
    }
    case FLASH4_F32: {
      float* p = static_cast<float*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) p[i] = float(src[i]);
      return;
    }
    case FLASH4_F16: {
      uint16_t* p = static_cast<uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) p[i] = f16_bits(src[i]);
      return;
    }
    case FLASH4_BF16: {
      uint16_t* p = static_cast<uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) p[i] = bf16_bits(src[i]);
      return;
    }
  }
}

}  // namespace flash4::detail
