// Shared-memory tiles and warp-level GEMMs on them. A tile is ROWS x COLS 16-bit values,
// row-major with a leading dimension of COLS + 8: the 16-byte pad puts the 8 rows an
// ldmatrix reads in 8 different bank groups (row pitch an odd multiple of 16 bytes for
// every COLS we use), so no swizzle is needed and any COLS multiple of 16 works.
#pragma once

#include <cstdint>

#include "fa4_softmax.cuh"
#include "ptx.cuh"

namespace flash4::cuda {

template <int COLS>
inline constexpr int padded_ld = COLS + 8;

// Asynchronously copies rows [0, valid_rows) x cols [0, valid_cols) of a tile into smem
// (16 bytes per cp.async) and zero-fills the rest. row_ptr(r) gives row r's first
// element in global memory; it is only called for valid rows.
template <int ROWS, int COLS, int THREADS, typename T, class RowPtr>
__device__ __forceinline__ void load_tile_async(T* smem, RowPtr&& row_ptr, int valid_rows, int valid_cols,
                                                const void* any_global) {
  constexpr int kChunks = COLS / 8;
  constexpr int kTotal = ROWS * kChunks;
  static_assert(COLS % 8 == 0 && kTotal % THREADS == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < kTotal / THREADS; ++it) {
    const int idx = it * THREADS + int(threadIdx.x);
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = r < valid_rows && c * 8 < valid_cols;
    const void* src = valid ? static_cast<const void*>(row_ptr(r) + c * 8) : any_global;
    cp_async_16(smem + r * padded_ld<COLS> + c * 8, src, valid);
  }
}

// The same for rows that sit row_stride elements apart from `first` (every layout but
// the paged one): one pointer increment per row instead of an address computation.
template <int ROWS, int COLS, int THREADS, typename T>
__device__ __forceinline__ void load_rows_async(T* smem, const T* first, int64_t row_stride, int valid_rows,
                                                int valid_cols, const void* any_global) {
  constexpr int kChunks = COLS / 8;
  constexpr int kTotal = ROWS * kChunks;
  static_assert(COLS % 8 == 0 && kTotal % THREADS == 0, "tile must split evenly over the threads");
  const int tid = int(threadIdx.x);
  if constexpr (THREADS % kChunks == 0) {
    // Each thread keeps one 16-byte column and walks down the rows.
    constexpr int kRowStep = THREADS / kChunks;
    const int c = tid % kChunks, r0 = tid / kChunks;
    const bool col_ok = c * 8 < valid_cols;
    const T* src = first + r0 * row_stride + c * 8;
    const int64_t src_step = kRowStep * row_stride;
    T* dst = smem + r0 * padded_ld<COLS> + c * 8;
#pragma unroll
    for (int it = 0; it < kTotal / THREADS; ++it) {
      const bool valid = col_ok && r0 + it * kRowStep < valid_rows;
      cp_async_16(dst + it * kRowStep * padded_ld<COLS>, valid ? static_cast<const void*>(src) : any_global, valid);
      src += src_step;
    }
  } else {
#pragma unroll
    for (int it = 0; it < kTotal / THREADS; ++it) {
      const int idx = it * THREADS + tid;
      const int r = idx / kChunks, c = idx % kChunks;
      const bool valid = r < valid_rows && c * 8 < valid_cols;
      const void* src = valid ? static_cast<const void*>(first + r * row_stride + c * 8) : any_global;
      cp_async_16(smem + r * padded_ld<COLS> + c * 8, src, valid);
    }
  }
}

// Copies rows [0, valid_rows) x cols [0, valid_cols) of an smem tile to global memory,
// 16 bytes per store.
template <int ROWS, int COLS, int THREADS, typename T, class RowPtr>
__device__ __forceinline__ void store_tile(const T* smem, RowPtr&& row_ptr, int valid_rows, int valid_cols) {
  constexpr int kChunks = COLS / 8;
  constexpr int kTotal = ROWS * kChunks;
  static_assert(COLS % 8 == 0 && kTotal % THREADS == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < kTotal / THREADS; ++it) {
    const int idx = it * THREADS + int(threadIdx.x);
    const int r = idx / kChunks, c = idx % kChunks;
    if (r < valid_rows && c * 8 < valid_cols)
      *reinterpret_cast<uint4*>(row_ptr(r) + c * 8) =
          *reinterpret_cast<const uint4*>(smem + r * padded_ld<COLS> + c * 8);
  }
}

__device__ __forceinline__ int lane_id() { return int(threadIdx.x) & 31; }

// --- Fragment loads (layouts in ptx.cuh) -------------------------------------------------
// A (16x16) at rows r0.., cols k0.. of a row-major tile.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int ld, int r0, int k0) {
  const int l = lane_id();
  ldmatrix_x4(a, s + (r0 + (l & 15)) * ld + k0 + (l >> 4) * 8);
}

// A (16x16) whose element (r, k) is stored at s[k][r] (the tile holds A transposed).
template <typename T>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* s, int ld, int r0, int k0) {
  const int l = lane_id(), m = l >> 3;
  ldmatrix_x4_trans(a, s + (k0 + (l & 7) + (m >> 1) * 8) * ld + r0 + (m & 1) * 8);
}

// B fragments of two n8 tiles (n0.. and n0+8..) for k0..k0+15, B(k, n) = s[n][k].
// b[0], b[1]: first tile; b[2], b[3]: second.
template <typename T>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const T* s, int ld, int n0, int k0) {
  const int l = lane_id(), m = l >> 3;
  ldmatrix_x4(b, s + (n0 + (l & 7) + (m >> 1) * 8) * ld + k0 + (m & 1) * 8);
}

// Same, with B(k, n) = s[k][n] (a row-major K x N tile, e.g. V in O = P V).
template <typename T>
__device__ __forceinline__ void load_b_trans(uint32_t (&b)[4], const T* s, int ld, int n0, int k0) {
  const int l = lane_id(), m = l >> 3;
  ldmatrix_x4_trans(b, s + (k0 + (l & 7) + (m & 1) * 8) * ld + n0 + (m >> 1) * 8);
}

// --- Warp GEMMs -----------------------------------------------------------------------
// acc[mt][nt] (16x8 tiles) += A[a_r0 + 16 mt .., 0 .. 16 KSTEPS) * B[0 .. 16 KSTEPS, b_n0 + 8 nt ..)
// A_TRANS: A(r, k) = sA[k][r]; B_TRANS: B(k, n) = sB[k][n] (else sB[n][k]).
template <typename T, int MT, int NT, int KSTEPS, bool A_TRANS, bool B_TRANS>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], const T* sA, int lda, int a_r0, const T* sB, int ldb,
                                          int b_n0) {
  static_assert(NT % 2 == 0, "n8 tiles are loaded in pairs");
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if constexpr (A_TRANS)
        load_a_trans(a[mt], sA, lda, a_r0 + 16 * mt, 16 * ks);
      else
        load_a(a[mt], sA, lda, a_r0 + 16 * mt, 16 * ks);
    }
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      if constexpr (B_TRANS)
        load_b_trans(b, sB, ldb, b_n0 + 16 * np, 16 * ks);
      else
        load_b(b, sB, ldb, b_n0 + 16 * np, 16 * ks);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_m16n8k16<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
        mma_m16n8k16<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// Same with A already in registers as mma fragments (P or dS converted from accumulators).
template <typename T, int MT, int NT, int KSTEPS, bool B_TRANS>
__device__ __forceinline__ void warp_gemm_a_regs(float (&acc)[MT][NT][4], const uint32_t (&a)[MT][KSTEPS][4], const T* sB,
                                                 int ldb, int b_n0) {
  static_assert(NT % 2 == 0, "n8 tiles are loaded in pairs");
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      if constexpr (B_TRANS)
        load_b_trans(b, sB, ldb, b_n0 + 16 * np, 16 * ks);
      else
        load_b(b, sB, ldb, b_n0 + 16 * np, 16 * ks);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_m16n8k16<T>(acc[mt][2 * np], a[mt][ks], b[0], b[1]);
        mma_m16n8k16<T>(acc[mt][2 * np + 1], a[mt][ks], b[2], b[3]);
      }
    }
  }
}

// Accumulators of a 16 x (16 KSTEPS) block -> A fragments for the next product: columns
// 16 ks .. 16 ks + 15 are accumulator tiles 2 ks and 2 ks + 1 (layouts in ptx.cuh).
template <typename T, int MT, int KSTEPS>
__device__ __forceinline__ void accumulators_to_a(uint32_t (&a)[MT][KSTEPS][4], const float (&c)[MT][2 * KSTEPS][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
      a[mt][ks][0] = pack2<T>(c[mt][2 * ks][0], c[mt][2 * ks][1]);
      a[mt][ks][1] = pack2<T>(c[mt][2 * ks][2], c[mt][2 * ks][3]);
      a[mt][ks][2] = pack2<T>(c[mt][2 * ks + 1][0], c[mt][2 * ks + 1][1]);
      a[mt][ks][3] = pack2<T>(c[mt][2 * ks + 1][2], c[mt][2 * ks + 1][3]);
    }
}

// Writes a warp's accumulator tiles (rows r0 + 16 mt.., cols c0 + 8 nt..) into an smem tile
// as 16-bit values, times `scale`.
template <typename T, int MT, int NT>
__device__ __forceinline__ void store_accumulators(T* s, int ld, int r0, int c0, const float (&c)[MT][NT][4],
                                                   float scale = 1.0f) {
  const int l = lane_id(), g = l >> 2, t = l & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      T* p = s + (r0 + 16 * mt + g) * ld + c0 + 8 * nt + 2 * t;
      *reinterpret_cast<uint32_t*>(p) = pack2<T>(c[mt][nt][0] * scale, c[mt][nt][1] * scale);
      *reinterpret_cast<uint32_t*>(p + 8 * ld) = pack2<T>(c[mt][nt][2] * scale, c[mt][nt][3] * scale);
    }
}

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&c)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[mt][nt][e] = 0.0f;
}

// Sum / max over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

// tanh for soft-capping: 1 - 2 / (2^(2|y| log2 e) + 1) with the sign of y. Absolute
// error ~1e-7, which is what matters (the capped logit's absolute error becomes P's
// relative error).
__device__ __forceinline__ float tanh_softcap(float y) {
  const float e = exp2_hardware(2.0f * 1.4426950408889634f * fabsf(y));
  const float r = 1.0f - __fdividef(2.0f, e + 1.0f);
  return copysignf(r, y);
}

}  // namespace flash4::cuda
