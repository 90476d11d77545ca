// FlashAttention-4's two softmax techniques (spec/flash4.md, "FA4's three ideas"), as
// __host__ __device__ functions so the host tests can run the very same arithmetic.
//
// 1. exp2 emulated on the FMA units. x = n + f, n = floor(x), f in [0, 1); 2^f by a
//    minimax polynomial (Horner, FMAs); 2^n added into the exponent field as an integer:
//    bits(result) = bits(p(f)) + (n << 23). floor comes from one add rounded toward -inf
//    of 1.5 * 2^23: the sum's low mantissa bits then hold 2^22 + n, and shifting the sum's
//    bits left by 23 leaves exactly n << 23 (mod 2^32). Coefficients are FA4's (sollya
//    fpminimax of 2^x on [0, 1], relative error, constant term fixed to 1).
//    Max relative error over every fp32 x in [-126, 128) (all 2.2e9 of them), measured
//    on the GPU by tests/gpu/flash4_fa4_softmax_test.cu (H100 and H200, 2026-11-24,
//    bench/RESULTS.md):
//      degree 3: 8.769e-05 (at x = 0.1007)   degree 4: 3.049e-06   degree 5: 1.557e-07
//    Degree 3 is below bf16's half-ulp (2^-9 = 2e-3) and fp16's (2^-12 = 2.4e-4), which is
//    all P needs: it is rounded to 16 bits before the P V product.
//    x < -127 (and -inf) gives exactly 0, as the MUFU's ex2.approx.ftz does below -126:
//    a masked score must contribute nothing, and an all-masked row must keep l = 0.
//
// 2. Conditional online-softmax rescaling. When a block raises a row's max by at most
//    tau (log2 units), keep the stale max: P = 2^(x - m_stale) <= 2^tau stays well inside
//    fp32 (and 16-bit P), O and l keep accumulating against the same stale max, and the
//    final O / l uses one max for numerator and denominator, so the result is exact.
//    Only when the max grows by more than tau are O and l rescaled. tau = 0 rescales
//    whenever the max grows (classic FlashAttention).
#pragma once

#include <cstdint>
#include <cstring>

#include <cmath>

#ifndef __CUDACC__
#define FLASH4_HD
#else
#define FLASH4_HD __host__ __device__
#endif

namespace flash4::cuda {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;
inline constexpr float kDefaultRescaleThreshold = 8.0f;
// 16-bit P must stay finite: 2^tau < 65504 (fp16's max), with margin.
inline constexpr float kMaxRescaleThreshold = 15.0f;

FLASH4_HD inline uint32_t float_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

FLASH4_HD inline float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

FLASH4_HD inline float fma_f32(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// 2^f for f in [0, 1): Horner's rule on FA4's coefficients.
template <int Degree>
FLASH4_HD inline float exp2_fraction_polynomial(float f) {
  static_assert(Degree >= 3 && Degree <= 5, "exp2 emulation: degree 3, 4 or 5");
  if constexpr (Degree == 3) {
    float p = fma_f32(0.077119089663028717041015625f, f, 0.227564394474029541015625f);
    p = fma_f32(p, f, 0.695146143436431884765625f);
    return fma_f32(p, f, 1.0f);
  } else if constexpr (Degree == 4) {
    float p = fma_f32(0.013434938155114650726318359375f, f, 0.052225358784198760986328125f);
    p = fma_f32(p, f, 0.2412912547588348388671875f);
    p = fma_f32(p, f, 0.693042695522308349609375f);
    return fma_f32(p, f, 1.0f);
  } else {
    float p = fma_f32(0.00186810153536498546600341796875f, f, 0.00901452265679836273193359375f);
    p = fma_f32(p, f, 0.055802188813686370849609375f);
    p = fma_f32(p, f, 0.24016360938549041748046875f);
    p = fma_f32(p, f, 0.693151414394378662109375f);
    return fma_f32(p, f, 1.0f);
  }
}

// 2^x on the FMA pipe. Valid for x < 128; x < -127 (and -inf) gives 0.
template <int Degree = 3>
FLASH4_HD inline float exp2_emulated(float x) {
  constexpr float kRoundConstant = 12582912.0f;  // 1.5 * 2^23
  const float xc = x > -127.0f ? x : -127.0f;      // also maps NaN-free -inf to -127
#ifdef __CUDA_ARCH__
  const float xr = __fadd_rd(xc, kRoundConstant);  // add.rm: low bits = 2^22 + floor(xc)
  const float n = xr - kRoundConstant;               // exact
#else
  const float n = std::floor(xc);
  const float xr = n + kRoundConstant;  // exact for |n| < 2^22
#endif
  const float f = xc - n;  // exact, in [0, 1)
  const float p = exp2_fraction_polynomial<Degree>(f);
  const float r = bits_float((float_bits(xr) << 23) + float_bits(p));
  return x < -127.0f ? 0.0f : r;
}

// 2^x on the special-function unit (MUFU.EX2); ex2.approx.ftz: 2 ulp, -inf -> 0.
FLASH4_HD inline float exp2_hardware(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

// tau as the kernels use it, from flash4_tuning.rescale_threshold (0 = default 8,
// negative = always rescale, capped so 16-bit P stays finite).
inline float effective_rescale_threshold(float requested) {
  if (requested == 0.0f) return kDefaultRescaleThreshold;
  if (requested < 0.0f) return 0.0f;
  return requested < kMaxRescaleThreshold ? requested : kMaxRescaleThreshold;
}

// The running max of one softmax row (log2 units: scores already times log2(e)).
// update() takes the block's row max and returns the factor O and l must be multiplied
// by (1 when the stale max is kept). -inf - -inf is NaN, and NaN > tau is false: a row
// that has seen no visible key yet keeps m = -inf.
struct RowMax {
  float m = -__builtin_huge_valf();

  FLASH4_HD float update(float block_max, float tau) {
    if (block_max - m > tau) {
      const float factor = exp2_hardware(m - block_max);  // m = -inf: 0
      m = block_max;
      return factor;
    }
    return 1.0f;
  }
  // The offset subtracted before exponentiating: 0 while the row has seen nothing,
  // so that 2^(-inf - offset) = 0 instead of NaN.
  FLASH4_HD float offset() const { return m == -__builtin_huge_valf() ? 0.0f : m; }
};

}  // namespace flash4::cuda

#undef FLASH4_HD
