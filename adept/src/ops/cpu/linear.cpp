// The CPU engine's linear layer, forward and backward, as three products of one register-
// tiled kernel, C[M][L] (= or +=) A[M][K] B[K][L]:
//   forward      out = in · Wᵀ           A = in,    B = Wᵀ (transposed a panel of kPanelCols
//                                                     output rows at a time: bounded memory)
//   input grad   din = dout · W          A = dout,  B = W
//   weight grad  dW += doutᵀ · in        A = doutᵀ (transposed once per call), B = in
// Each tile keeps kTileRows x kTileCols sums in registers while it walks K, so a B row is
// loaded once per kTileRows rows of A and no partial sum goes back to memory (the earlier
// loops re-read and re-wrote a row of sums for every term: ~40% of the tiny study's CPU time
// went to them). Every element is summed by one thread, in K order, so results do not depend
// on the thread count. The tile kernel is compiled for AVX-512, AVX2 + FMA and baseline
// x86-64 and picked at run time (GCC's target_clones), as the binary is built for baseline.
#include <algorithm>
#include <vector>

#include "ops/cpu/ops.hpp"

namespace adept::cpu {

namespace {

constexpr int kTileRows = 4;   // rows of A (and C) a tile holds
constexpr int kTileCols = 16;  // columns of B (and C): one AVX-512 float vector, two AVX2

// One tile: C[r][c] for r < rows, c < cols (rows <= kTileRows, cols <= kTileCols), from
// A rows at a (stride lda), B at b (stride ldb), C at c (stride ldc). Full tiles take the
// fixed-size loops the compiler vectorises; edge tiles the same sums in the same order.
template <typename T>
__attribute__((always_inline)) inline void gemm_tile(T* c, int64_t ldc, const T* a, int64_t lda, const T* b,
                                                     int64_t ldb, int64_t K, int rows, int cols, bool accumulate) {
  T acc[kTileRows][kTileCols] = {};
  if (rows == kTileRows && cols == kTileCols) {
    for (int64_t k = 0; k < K; ++k) {
      const T* bk = b + k * ldb;
      for (int r = 0; r < kTileRows; ++r) {
        const T x = a[r * lda + k];
#pragma omp simd
        for (int j = 0; j < kTileCols; ++j) acc[r][j] += x * bk[j];
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const T* bk = b + k * ldb;
      for (int r = 0; r < rows; ++r) {
        const T x = a[r * lda + k];
        for (int j = 0; j < cols; ++j) acc[r][j] += x * bk[j];
      }
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < cols; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
}

// The tiles of rows [m0, m0 + rows) of C, every column block: one call per row block, the
// unit of the parallel loop below.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ADEPT_TILE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ADEPT_TILE_CLONES
#endif
template <typename T>
__attribute__((always_inline)) inline void gemm_row_block(T* c, int64_t ldc, const T* a, int64_t lda, const T* b,
                                                          int64_t ldb, int64_t K, int64_t L, int rows,
                                                          bool accumulate) {
  for (int64_t l0 = 0; l0 < L; l0 += kTileCols)
    gemm_tile(c + l0, ldc, a, lda, b + l0, ldb, K, rows, int(std::min<int64_t>(kTileCols, L - l0)), accumulate);
}
ADEPT_TILE_CLONES void row_block(float* c, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                                 int64_t K, int64_t L, int rows, bool accumulate) {
  gemm_row_block(c, ldc, a, lda, b, ldb, K, L, rows, accumulate);
}
ADEPT_TILE_CLONES void row_block(double* c, int64_t ldc, const double* a, int64_t lda, const double* b,
                                 int64_t ldb, int64_t K, int64_t L, int rows, bool accumulate) {
  gemm_row_block(c, ldc, a, lda, b, ldb, K, L, rows, accumulate);
}

// C[M][L] (= or +=) A[M][K] B[K][L], row-major with row strides ldc, lda (= K), ldb.
template <typename T>
void gemm(T* c, int64_t ldc, const T* a, const T* b, int64_t ldb, int64_t M, int64_t K, int64_t L, bool accumulate) {
  const int64_t blocks = (M + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t m0 = blk * kTileRows;
    row_block(c + m0 * ldc, ldc, a + m0 * K, K, b, ldb, K, L, int(std::min<int64_t>(kTileRows, M - m0)), accumulate);
  }
}

// Output rows of the weight transposed at a time by the forward (IC x 256 elements: 0.5 MB
// at IC 512, 2 MB at 2048), so a large matrix (an LM head) needs no transposed copy whole.
constexpr int64_t kPanelCols = 256;

// t[cols][rows] = m[rows][cols]ᵀ.
template <typename T>
std::vector<T> transposed(const T* m, int64_t rows, int64_t cols) {
  std::vector<T> t(size_t(rows * cols));
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t i = 0; i < rows; ++i) t[size_t(j * rows + i)] = m[i * cols + j];
  return t;
}

}  // namespace

template <typename T>
void linear_forward(T* out, const T* in, const T* weight, const T* bias, int64_t N, int64_t IC, int64_t OC) {
  for (int64_t o0 = 0; o0 < OC; o0 += kPanelCols) {
    const int64_t cols = std::min(kPanelCols, OC - o0);
    const std::vector<T> panel = transposed(weight + o0 * IC, cols, IC);  // [IC][cols]
    gemm(out + o0, OC, in, panel.data(), cols, N, IC, cols, false);
  }
  if (bias) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o) out[n * OC + o] += bias[o];
  }
}

template <typename T>
void linear_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, int64_t N,
                     int64_t IC, int64_t OC) {
  if (din) gemm(din, IC, dout, weight, IC, N, OC, IC, false);
  if (!dweight && !dbias) return;
  const std::vector<T> dout_t = transposed(dout, N, OC);  // [OC][N]
  if (dweight) gemm(dweight, IC, dout_t.data(), in, IC, OC, N, IC, true);
  if (dbias) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < OC; ++o) {
      T sum = 0;  // in token order, as dweight's
      for (int64_t n = 0; n < N; ++n) sum += dout_t[size_t(o * N + n)];
      dbias[o] += sum;
    }
  }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      int64_t, int64_t, int64_t);

}  // namespace adept::cpu
