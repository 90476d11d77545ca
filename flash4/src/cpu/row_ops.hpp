// The building blocks of flash4's CPU kernels (cpu/forward.cpp, cpu/backward.cpp): float32
// loops written so that GCC vectorises them and results do not depend on the vector width or
// the thread count (register-tiled products, sums in eight fixed lanes), and exp2 on the FMA
// units in the manner of FlashAttention-4's software exp2 (a polynomial and an exponent shift
// instead of a libm call per key).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

// The kernels that inline these are compiled for AVX-512, AVX2 + FMA and baseline x86-64 and
// picked at run time (GCC's target_clones), as the library is built for baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FLASH4_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FLASH4_CPU_CLONES
#endif

namespace flash4::detail::cpu {

inline constexpr float kLog2e = 1.4426950408889634f;  // exp(x) = 2^(x log2 e)

// Sum of x[0, n) in eight lanes (lane l takes x[8i + l]), then the lanes in order: the same
// bits whatever the vector width.
__attribute__((always_inline)) inline float lane_sum(const float* x, int64_t n) {
  float lanes[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
#pragma omp simd
    for (int l = 0; l < 8; ++l) lanes[l] += x[j + l];
  for (int l = 0; j < n; ++j, ++l) lanes[l] += x[j];
  float sum = 0;
  for (float lane : lanes) sum += lane;
  return sum;
}

// Dot product of x and y over [0, n), in the lanes of lane_sum.
__attribute__((always_inline)) inline float lane_dot(const float* x, const float* y, int64_t n) {
  float lanes[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
#pragma omp simd
    for (int l = 0; l < 8; ++l) lanes[l] += x[j + l] * y[j + l];
  for (int l = 0; j < n; ++j, ++l) lanes[l] += x[j] * y[j];
  float sum = 0;
  for (float lane : lanes) sum += lane;
  return sum;
}

// Register tiles: kTileRows x kTileCols sums held across the K loop (the CPU engine's linear
// layer's kernel shape): a B row is loaded once per kTileRows rows of A, no partial sum goes
// back to memory, and each sum runs in K order (the same bits at any thread count).
inline constexpr int kTileRows = 4, kTileCols = 16;

// C[r][j] (= or +=) sum_k A[r][k] B[k][j] for r < rows <= kTileRows, j < cols <= kTileCols
// (row strides lda, ldb, ldc).
__attribute__((always_inline)) inline void tile(float* c, int64_t ldc, const float* a, int64_t lda, const float* b,
                                                int64_t ldb, int64_t K, int rows, int cols, bool accumulate) {
  float acc[kTileRows][kTileCols] = {};
  if (rows == kTileRows && cols == kTileCols) {
    for (int64_t k = 0; k < K; ++k) {
      const float* bk = b + k * ldb;
      for (int r = 0; r < kTileRows; ++r) {
        const float x = a[r * lda + k];
#pragma omp simd
        for (int j = 0; j < kTileCols; ++j) acc[r][j] += x * bk[j];
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const float* bk = b + k * ldb;
      for (int r = 0; r < rows; ++r) {
        const float x = a[r * lda + k];
        for (int j = 0; j < cols; ++j) acc[r][j] += x * bk[j];
      }
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cols; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
}

// C[M][N] (= or +=) A[M][K] B[K][N], row-major with row strides ldc, lda, ldb: tiles of
// kTileRows rows by kTileCols columns.
__attribute__((always_inline)) inline void gemm(float* c, int64_t ldc, const float* a, int64_t lda, const float* b,
                                                int64_t ldb, int64_t M, int64_t K, int64_t N, bool accumulate) {
  for (int64_t i = 0; i < M; i += kTileRows) {
    const int rows = int(M - i < kTileRows ? M - i : kTileRows);
    for (int64_t j = 0; j < N; j += kTileCols)
      tile(c + i * ldc + j, ldc, a + i * lda, lda, b + j, ldb, K, rows, int(N - j < kTileCols ? N - j : kTileCols),
           accumulate);
  }
}

// Row stride (floats) for rows of n: a multiple of kTileCols, but not of 128 (512 bytes), so
// that a tile's column walk down the rows does not land every row in the same L1 sets (at
// 1024 keys the unpadded 4 KB stride halved the kernels' speed).
inline int64_t padded_stride(int64_t n) {
  const int64_t r = (n + kTileCols - 1) / kTileCols * kTileCols;
  return r % 128 == 0 ? r + kTileCols : r;
}

// Largest of x[0, n) (n > 0); exact in any order.
__attribute__((always_inline)) inline float row_max(const float* x, int64_t n) {
  float m = x[0];
  for (int64_t j = 1; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// 2^x for x <= 0 (a softmax's exponents), relative error below 2e-7 down to 2^-126; 0 below
// (the terms a float sum of at least one 1 cannot see). x = n + f with n = round(x) and
// |f| <= 1/2: 2^f by its Taylor series in f ln 2 to degree 7 (remainder under 6e-9), 2^n
// added to the exponent field. Rounding by the 1.5 * 2^23 shift, so no call and no branch
// stands in the way of vectorising. NaN stays NaN.
__attribute__((always_inline)) inline float exp2_softmax(float x) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: x + kShift rounds x to an integer
  const float clamped = x < -126.0f ? -126.0f : x;
  const float shifted = clamped + kShift;
  const float n = shifted - kShift;
  const float f = clamped - n;
  // (ln 2)^k / k!, k = 7 .. 1.
  float p = 1.5252734e-5f;
  p = p * f + 1.5403530e-4f;
  p = p * f + 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  // The low bits of `shifted` hold n (two's complement, |n| <= 126): n + 127 to the exponent.
  const int32_t biased = (std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kShift) + 127) << 23;
  const float scaled = p * std::bit_cast<float>(biased);
  return x < -126.0f ? 0.0f : scaled;
}

// y[j] = exp2(x[j] * a - b) for j in [0, n), each x <= b / a (p of the softmax).
__attribute__((always_inline)) inline void exp2_row(float* __restrict y, const float* __restrict x, float a, float b,
                                                    int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = exp2_softmax(x[j] * a - b);
}

}  // namespace flash4::detail::cpu
