// Device-side view of one sequence of a (dense, packed or paged) problem: its lengths,
// where its rows live, and which keys each query row sees (causal and window aligned to
// the bottom-right corner, as in flash4.h), so every kernel applies the same mask.
#pragma once

#include <cstdint>

#include "params.hpp"

namespace flash4::cuda {

struct Sequence {
  int sq = 0;           // queries
  int sk = 0;           // keys attended (after seqused_k): the alignment's Sk
  int sk_rows = 0;      // key rows the sequence owns in k / dk (>= sk; dense: Sk)
  int64_t q_start = 0;  // start(b) of q-like tensors (RowLayout)
  int64_t k_start = 0;  // start(b) of k-like tensors
  int64_t q_token = 0;  // workspace token index of the sequence's first query row
};

__device__ __forceinline__ Sequence sequence_of(const AttentionParams& p, int b) {
  Sequence s;
  if (p.cu_seqlens_q != nullptr) {
    const int q0 = p.cu_seqlens_q[b];
    s.sq = p.cu_seqlens_q[b + 1] - q0;
    s.q_start = q0;
    s.q_token = q0;
  } else {
    s.sq = p.seqlen_q;
    s.q_start = b;
    s.q_token = int64_t(b) * p.seqlen_q;
  }
  if (p.page_table != nullptr) {
    s.sk_rows = p.seqused_k[b];
  } else if (p.cu_seqlens_k != nullptr) {
    const int k0 = p.cu_seqlens_k[b];
    s.sk_rows = p.cu_seqlens_k[b + 1] - k0;
    s.k_start = k0;
  } else {
    s.sk_rows = p.seqlen_k;
    s.k_start = b;
  }
  s.sk = p.seqused_k != nullptr ? p.seqused_k[b] : s.sk_rows;
  return s;
}

// Keys [lo, hi) that query row i sees (empty when lo >= hi). 64-bit intermediates: the
// window sides may be as large as INT_MAX.
struct KeyInterval {
  int lo, hi;
};

__device__ __forceinline__ KeyInterval visible_keys(const AttentionParams& p, int i, const Sequence& s) {
  const int64_t diagonal = int64_t(i) + s.sk - s.sq;
  int64_t lo = 0, hi = s.sk;
  if (p.causal) hi = min(hi, diagonal + 1);
  if (p.window_right >= 0) hi = min(hi, diagonal + p.window_right + 1);
  if (p.window_left >= 0) lo = max(lo, diagonal - p.window_left);
  lo = min(max(lo, int64_t(0)), int64_t(s.sk));
  hi = max(hi, lo);
  return {int(lo), int(hi)};
}

// Queries [begin, end) that see at least one key of [n0, n1) (n1 <= sk). Both bounds of
// visible_keys grow with i, so the set is an interval.
struct QueryInterval {
  int begin, end;
};

__device__ __forceinline__ QueryInterval queries_seeing(const AttentionParams& p, int n0, int n1, const Sequence& s) {
  const int64_t shift = int64_t(s.sk) - s.sq;  // query i sits at key i + shift
  int64_t begin = 0, end = s.sq;
  // hi_i > n0  <=>  i + shift + reach >= n0 with reach = 0 (causal) or window_right.
  int64_t reach = -1;
  if (p.causal) reach = 0;
  if (p.window_right >= 0) reach = reach < 0 ? p.window_right : min(reach, int64_t(p.window_right));
  if (reach >= 0) begin = max(begin, n0 - shift - reach);
  // lo_i < n1  <=>  i + shift - window_left < n1.
  if (p.window_left >= 0) end = min(end, n1 - shift + p.window_left);
  begin = min(begin, int64_t(s.sq));
  end = max(end, begin);
  return {int(begin), int(end)};
}

// Pointer to row (b, i, h) of a q-like tensor (q, out, dout, dq).
template <typename T>
__device__ __forceinline__ T* query_row(const RowLayout& L, const Sequence& s, int i, int h) {
  return static_cast<T*>(L.data) + (s.q_start * L.batch_stride + int64_t(i) * L.row_stride + int64_t(h) * L.head_stride);
}

// Pointer to key row j of KV head hk (k, v, dk, dv); through the page table when paged.
template <typename T>
__device__ __forceinline__ T* key_row(const AttentionParams& p, const RowLayout& L, const Sequence& s, int b, int j,
                                      int hk) {
  int64_t offset;
  if (p.page_table != nullptr) {
    const int64_t page = p.page_table[int64_t(b) * p.page_table_stride + j / p.page_size];
    offset = page * L.batch_stride + int64_t(j % p.page_size) * L.row_stride;
  } else {
    offset = s.k_start * L.batch_stride + int64_t(j) * L.row_stride;
  }
  return static_cast<T*>(L.data) + offset + int64_t(hk) * L.head_stride;
}

}  // namespace flash4::cuda
