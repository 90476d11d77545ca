// The integer side of the Hopper backward's per-element mask, host and device: which queries
// see a key row, solved once per masked step, so that each element of S^T / dP^T costs two
// 32-bit compares with immediates (backward_sm90.cuh, mask_outside_visible). Host-callable so
// that tests/flash4/hopper_mask_bounds_test.cpp checks it against brute force in CI.
#pragma once

#include <algorithm>
#include <cstdint>

#ifndef __CUDACC__
#define FLASH4_MASK_HD inline
#else
#define FLASH4_MASK_HD __host__ __device__ __forceinline__
#endif

namespace flash4::hopper {

// max(lo, min(x, hi)) in 64 bits: CUDA's min / max in device code (std::min compiles to other
// SASS there, for the same arithmetic), the standard library's on the host.
FLASH4_MASK_HD int64_t clamp64(int64_t x, int64_t lo, int64_t hi) {
#ifdef __CUDA_ARCH__
  return ::max(lo, ::min(x, hi));
#else
  return std::max(lo, std::min(x, hi));
#endif
}

struct VisibleQueries {
  int begin, end;  // [begin, end), within [0, sq]; empty when begin >= end
};

// The queries that see key row j, [begin, end) clamped into [0, sq] (none past the keys:
// the K / Q rows past the ends are TMA zeros or the next sequence's rows, whose P = 2^(-lse2)
// is not 0). From visible_keys (sequence.cuh): query i sees key j when
// i + shift - left <= j <= i + shift + right (shift = sk - sq), i.e.
// j - shift - right <= i <= j - shift + left; has_right / has_left: that side is bounded
// (causal: right 0). In 64 bits: a window side may be INT_MAX.
FLASH4_MASK_HD VisibleQueries queries_seeing_key(int j, int sq, int sk, bool has_right, int64_t right, bool has_left,
                                                int64_t left) {
  const int64_t shift = int64_t(sk) - sq;
  const int64_t begin = has_right ? int64_t(j) - shift - right : 0;
  const int64_t end = j >= sk ? 0 : has_left ? int64_t(j) - shift + left + 1 : int64_t(sq);
  return {int(clamp64(begin, 0, sq)), int(clamp64(end, 0, sq))};
}

// Whether the element of column c (query q0 + 2t + c) lies outside its key row's visible
// queries, with lo = begin - q0 - 2t and hi = end - q0 - 2t formed once per step: c is a
// constant of the unrolled element loop, so this is two compares with immediates.
FLASH4_MASK_HD bool column_outside(int c, int lo, int hi) { return c < lo || c >= hi; }

}  // namespace flash4::hopper
