// The CPU reference's view of a (validated) problem: where sequence b's rows live in each
// tensor (dense, packed or paged), which keys query row i may see, and the softmax of
// one query row in float64. Shared by reference_forward and reference_backward.
#pragma once

#include <flash4/flash4.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <vector>

#include "reference/numeric.hpp"
#include "validate.hpp"

namespace flash4::detail {

class SequenceMap {
 public:
  SequenceMap(const ProblemShape& shape, const flash4_varlen& varlen, const flash4_paged_kv* paged)
      : shape_(shape), varlen_(varlen) {
    if (shape.paged && paged != nullptr) paged_ = *paged;
  }

  int64_t seqlen_q(int64_t b) const {
    return shape_.varlen ? varlen_.cu_seqlens_q[b + 1] - varlen_.cu_seqlens_q[b] : shape_.seqlen_q;
  }
  // The number of keys sequence b attends to (after seqused_k); causal and window
  // alignment use this count as Sk.
  int64_t seqlen_k(int64_t b) const {
    if (varlen_.seqused_k != nullptr) return varlen_.seqused_k[b];
    if (shape_.varlen) return varlen_.cu_seqlens_k[b + 1] - varlen_.cu_seqlens_k[b];
    return shape_.seqlen_k;
  }

  // Element offset of row (b, i, h) of q, out, dq, dout (dense [B,S,H,D] or packed [T,H,D]).
  int64_t q_row(const flash4_tensor& t, int64_t b, int64_t i, int64_t h) const {
    if (shape_.varlen) return (varlen_.cu_seqlens_q[b] + i) * t.stride[0] + h * t.stride[1];
    return b * t.stride[0] + i * t.stride[1] + h * t.stride[2];
  }
  // Element offset of key row (b, j, h) of k, v, dk, dv (dense, packed or paged).
  int64_t k_row(const flash4_tensor& t, int64_t b, int64_t j, int64_t h) const {
    if (shape_.paged) {
      const int64_t page = paged_.page_table[b * paged_.max_pages_per_seq + j / paged_.page_size];
      return page * t.stride[0] + (j % paged_.page_size) * t.stride[1] + h * t.stride[2];
    }
    if (shape_.varlen) return (varlen_.cu_seqlens_k[b] + j) * t.stride[0] + h * t.stride[1];
    return b * t.stride[0] + j * t.stride[1] + h * t.stride[2];
  }
  // Element offset of lse (b, h, i): dense [B, Hq, Sq] or packed [Hq, Tq].
  int64_t lse_index(const flash4_tensor& t, int64_t b, int64_t h, int64_t i) const {
    if (shape_.varlen) return h * t.stride[0] + (varlen_.cu_seqlens_q[b] + i) * t.stride[1];
    return b * t.stride[0] + h * t.stride[1] + i * t.stride[2];
  }

 private:
  ProblemShape shape_;
  flash4_varlen varlen_;
  flash4_paged_kv paged_{};
};

// Keys [begin, end) that query i of a sequence with Sq queries and Sk keys may see:
// causal and the window are aligned to the bottom-right corner (query i sits at key
// position i + Sk - Sq), so the visible set is always one interval.
struct KeyRange {
  int64_t begin = 0, end = 0;
  bool empty() const { return begin >= end; }
};

inline KeyRange visible_keys(int64_t i, int64_t Sq, int64_t Sk, const flash4_options& o) {
  const int64_t diagonal = i + Sk - Sq;
  KeyRange r{0, Sk};
  if (o.causal) r.end = std::min(r.end, diagonal + 1);
  if (o.window_right >= 0) r.end = std::min(r.end, diagonal + o.window_right + 1);
  if (o.window_left >= 0) r.begin = std::max(r.begin, diagonal - o.window_left);
  return r;
}

// One query row's softmax in float64. For j in `keys`, s[j] is the (soft-capped) score
// and p[j] = exp(s[j] - lse); the sink joins the denominator only.
struct RowSoftmax {
  double lse = -std::numeric_limits<double>::infinity();  // -inf: no key and no sink
  double p_sink = 0;                                        // exp(sink - lse)
};

inline RowSoftmax softmax_row(const double* q_i, const double* K, int64_t d_qk, KeyRange keys, double scale,
                              double softcap, const float* sink, double* s, double* p) {
  RowSoftmax row;
  double max_score = -std::numeric_limits<double>::infinity();
  for (int64_t j = keys.begin; j < keys.end; ++j) {
    const double* k_j = K + j * d_qk;
    double dot = 0;
    for (int64_t d = 0; d < d_qk; ++d) dot += q_i[d] * k_j[d];
    double score = scale * dot;
    if (softcap > 0) score = softcap * std::tanh(score / softcap);
    s[j] = score;
    max_score = std::max(max_score, score);
  }
  if (sink != nullptr) max_score = std::max(max_score, double(*sink));
  if (max_score == -std::numeric_limits<double>::infinity()) return row;  // nothing visible
  // One exp per key (half of the CPU engine's exp time went to a second pass of them):
  // p_j = exp(s_j - max) / sum, equal to exp(s_j - lse) up to float64 rounding.
  const double sink_term = sink != nullptr ? std::exp(double(*sink) - max_score) : 0.0;
  double sum = sink_term;
  for (int64_t j = keys.begin; j < keys.end; ++j) {
    p[j] = std::exp(s[j] - max_score);
    sum += p[j];
  }
  row.lse = max_score + std::log(sum);
  const double inv_sum = 1.0 / sum;
  for (int64_t j = keys.begin; j < keys.end; ++j) p[j] *= inv_sum;
  if (sink != nullptr) row.p_sink = sink_term * inv_sum;
  return row;
}

// Loads rows [0, n) of a key-like tensor for (b, h) into dst[n][width] (row stride ld,
// default width).
template <typename Dst>
void load_key_rows(const SequenceMap& map, const flash4_tensor& t, int64_t b, int64_t h, int64_t n, int64_t width,
                   Dst* dst, int64_t ld = 0) {
  if (ld == 0) ld = width;
  for (int64_t j = 0; j < n; ++j) load_row(t.dtype, t.data, map.k_row(t, b, j, h), width, dst + j * ld);
}

// The same rows transposed: dst[d * ld + j] for d < width, j < n (the CPU kernels' [d][j]).
inline void load_key_rows_transposed(const SequenceMap& map, const flash4_tensor& t, int64_t b, int64_t h, int64_t n,
                                     int64_t width, float* dst, int64_t ld) {
  std::vector<float> row(width);
  for (int64_t j = 0; j < n; ++j) {
    load_row(t.dtype, t.data, map.k_row(t, b, j, h), width, row.data());
    for (int64_t d = 0; d < width; ++d) dst[d * ld + j] = row[d];
  }
}

// Writes zeros to every element of t (any rank, last dimension contiguous): the backward's
// gradients before the rows that sequences cover are written.
inline void zero_fill(const flash4_tensor& t) {
  const int64_t width = t.shape[t.rank - 1];
  int64_t rows = 1;
  for (int d = 0; d + 1 < t.rank; ++d) rows *= t.shape[d];
  const std::vector<double> zeros(width, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t offset = 0, rest = r;
    for (int d = t.rank - 2; d >= 0; --d) {
      offset += (rest % t.shape[d]) * t.stride[d];
      rest /= t.shape[d];
    }
    store_row(t.dtype, t.data, offset, width, zeros.data());
  }
}

// Runs body(item) for item in [0, count) on OpenMP threads; the first exception thrown
// by any item is rethrown on the calling thread (none may escape an OpenMP region).
template <class Body>
void parallel_for(int64_t count, Body&& body) {
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t item = 0; item < count; ++item) {
    try {
      body(item);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace flash4::detail
