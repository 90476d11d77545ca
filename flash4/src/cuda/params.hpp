// The portable CUDA kernels' view of one attention problem: raw pointers and element
// strides, built on the host from validated flash4 args (portable.cpp) and passed by
// value to every kernel. Plain data, shared by host and device code.
#pragma once

#include <flash4/flash4.h>

#include <cstdint>

namespace flash4::cuda {

enum class DType : int { f16 = 0, bf16 = 1 };

// Where row (sequence b, position i, head h) of a tensor lives:
//   element offset = start(b) * batch_stride + i * row_stride + h * head_stride
// with start(b) = b for dense tensors and cu_seqlens[b] for packed ones (whose
// batch_stride is then the row stride). Paged k / v use the page table instead.
struct RowLayout {
  void* data = nullptr;
  int64_t batch_stride = 0;
  int64_t row_stride = 0;
  int64_t head_stride = 0;
};

struct AttentionParams {
  DType dtype = DType::bf16;
  RowLayout q, k, v, out;       // forward and backward
  RowLayout dout, dq, dk, dv;   // backward
  // lse element offset = start_q(b) * lse_batch_stride + h * lse_head_stride + i * lse_row_stride
  float* lse = nullptr;
  int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_row_stride = 0;

  int batch = 0, heads_q = 0, heads_kv = 0, group = 1;  // group = Hq / Hkv
  int d_qk = 0, d_v = 0;                                 // actual head dims (kernels may pad)
  int seqlen_q = 0, seqlen_k = 0;  // dense extents; varlen: max sequence lengths (grid size)
  int64_t tokens_q = 0, tokens_k = 0;  // rows of the packed (or B*S dense) q / k tensors

  const int32_t* cu_seqlens_q = nullptr;  // device; NULL = dense
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;
  const int32_t* page_table = nullptr;  // device [batch][page_table_stride]; NULL = not paged
  int64_t page_table_stride = 0;
  int page_size = 0;
  int page_box_rows = 0, pages = 0;  // Hopper forward: rows of a paged TMA box; page count (k.shape[0])
  // Hopper forward, dense q: the query heads of one KV head packed into a tile's rows (row r =
  // token r >> q_pack_shift, head r % q_pack of the group; 1 = one head a tile). A power of
  // two, so that the tile arithmetic is shifts (the producer has 24 registers).
  int q_pack = 1, q_pack_shift = 0;
  // Hopper forward, packed-GQA kernels: split-KV (flash-decoding). Each tile's key blocks are
  // cut into num_splits runs, one tile each; a tile writes its rows' O (normalised, fp32) to
  // o_partial [split][B][Hq][Sq][d_v] and their natural-log LSE to lse_partial [split][B][Hq][Sq]
  // (-inf: no key in the run), which hopper/split_combine.cu merges into out and lse.
  int num_splits = 1, split_shift = 0;  // a power of two: the producer's tile arithmetic is shifts
  float* o_partial = nullptr;
  float* lse_partial = nullptr;

  // Scores: x = s * scale_log2 (log2 units), or with softcap c:
  //   x = softcap_log2 * tanh(s * softcap_inv_scale)   (softcap_log2 = c log2 e, softcap_inv_scale = scale / c)
  float scale = 0, scale_log2 = 0;
  float softcap = 0, softcap_inv_scale = 0, softcap_log2 = 0;
  bool causal = false;
  int window_left = -1, window_right = -1;  // < 0: unbounded
  const float* sink = nullptr;              // device [Hq] (natural-log units)

  // Forward tuning (FA4 techniques).
  bool emulate_exp2 = false;
  float rescale_tau = 0;

  // Backward workspace (device, fp32), row index = h * tokens_q + token.
  float* dq_accum = nullptr;   // [tokens_q][Hq][d_qk], atomic mode only
  float* d_rows = nullptr;     // D = rowsum(dO * O)
  float* lse_log2 = nullptr;   // lse * log2 e, +inf where lse = -inf
  float* dsink_rows = nullptr; // -exp(sink - lse) * D per row
  float* dsink = nullptr;      // [Hq] output, or NULL
  bool deterministic = false;
  // Hopper backward: dK / dV rows stored 16 bytes a lane after a transpose within each quad
  // (full 32-byte sectors) instead of 4 bytes a lane (half of each sector: ncu counted the
  // other half as excess); the default, FLASH4_HOPPER_BWD_QUAD_STORE=0 turns it off.
  bool quad_stores = false;
  // Hopper backward, flat dQ, not deterministic: how many of each consumer warpgroup's
  // 64-column dQ chunks a step go by float4 atomics straight into the flat layout instead of
  // through the staging buffer and the dQ writer's bulk reduce-add: d 64 / 128 0 or 1 (its one
  // chunk), d 256 0 - 2 (hopper/host.hpp's flat_atomic_chunks_rule).
  int flat_atomic_chunks = 0;
  // Hopper backward, dense, not deterministic: the grid's x walks the KV heads and y the key
  // blocks, so that the CTAs running at once spread over the heads (their dQ adds over more
  // addresses) instead of walking one head's key blocks (hopper/host.hpp's
  // backward_heads_first_rule).
  bool heads_first_grid = false;
  // Hopper backward, d 256, flat dQ with both chunks by atomics: each consumer warpgroup
  // computes S^T / dP^T for its own 32 of a step's 64 queries, P^T and dS^T shared through
  // shared memory (backward_sm90.cuh); hopper/host.hpp's d256_split_queries_rule.
  bool d256_split_queries = false;
};

// The softcap fields of p from the cap c (0: off) and the softmax scale: the kernels take
// x = c log2(e) tanh(s scale / c).
inline void set_softcap(AttentionParams& p, float softcap, double scale) {
  if (!(softcap > 0)) return;
  p.softcap = softcap;
  p.softcap_inv_scale = float(scale / softcap);
  p.softcap_log2 = float(double(softcap) * 1.4426950408889634);
}

// Host side, shared by the portable and Hopper backends: where a validated flash4 tensor's rows
// live. q-like [B, S, H, D], packed [T, H, D] (packed = true), or paged k-like
// [pages, page_size, H, D] (packed = false).
inline RowLayout row_layout(const flash4_tensor& t, bool packed) {
  RowLayout L;
  L.data = t.data;
  if (packed) {
    L.batch_stride = t.stride[0];
    L.row_stride = t.stride[0];
    L.head_stride = t.stride[1];
  } else {
    L.batch_stride = t.stride[0];
    L.row_stride = t.stride[1];
    L.head_stride = t.stride[2];
  }
  return L;
}

// p.lse and its strides from lse [B, Hq, Sq], or [Hq, Tq] when packed (start(b) =
// cu_seqlens_q[b] counts tokens). A NULL lse leaves p as it is.
inline void set_lse(AttentionParams& p, const flash4_tensor& lse, bool packed) {
  if (lse.data == nullptr) return;
  p.lse = static_cast<float*>(lse.data);
  if (packed) {  // [Hq, Tq]
    p.lse_batch_stride = lse.stride[1];
    p.lse_head_stride = lse.stride[0];
    p.lse_row_stride = lse.stride[1];
  } else {  // [B, Hq, Sq]
    p.lse_batch_stride = lse.stride[0];
    p.lse_head_stride = lse.stride[1];
    p.lse_row_stride = lse.stride[2];
  }
}

}  // namespace flash4::cuda
