// Host-side helpers the Hopper forward and backward share (defined in hopper.cpp): TMA
// tensor maps through the driver's cuTensorMapEncodeTiled and the alignment TMA needs, the
// problem sizes both cover, the varlen work list in a call's workspace.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <flash4/flash4.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include "cuda/params.hpp"
#include "cuda/workspace.hpp"
#include "hopper/launch.hpp"
#include "hopper/varlen_tiles.hpp"
#include "validate.hpp"

namespace flash4::detail {

// The driver's cuTensorMapEncodeTiled (through the runtime's entry point: nothing links
// libcuda), or nullptr when the driver has none.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder();

// (D, S, H, B) view of a dense [B, S, H, D] 16-bit tensor, or (D, T, H, 1) of a packed
// [T, H, D] one (rank 3: varlen), box 64 columns x box_rows rows, 128-byte swizzle. Any row
// stride TMA accepts (a multiple of 16 bytes): the column blocks of a fused qkv buffer too.
// Returns the driver's error code (0 = success).
int encode_tensor_map(CUtensorMap* map, const flash4_tensor& t, int box_rows);

// Why `t` breaks TMA's alignment rules (16-byte aligned data, 16-byte multiple strides);
// "" when it does not.
std::string row_alignment_gap(const flash4_tensor& t, const char* name);

// Why this process cannot run an sm_90a kernel here: no device, a device other than
// sm_90, no sm_90a code in the binary (`kernel_present` false), or no tensor-map
// encoder in the driver; "" when it can.
std::string sm90_device_gap(bool kernel_present);

// Why the Hopper kernels do not take a call of `shape` for its size alone: no sequence, query
// or key ("empty problem"), or a length their 32-bit row indices do not reach (varlen: more
// than 2^30 tokens; dense: a sequence over 2^30); "" when they do. The forward and the
// backward each add their own limit on tiles.
std::string problem_size_gap(const ProblemShape& shape);

// The largest power of two at or below n (1 for n < 2).
inline int power_of_two_at_most(int64_t n) {
  int p = 1;
  while (2 * int64_t(p) <= n) p *= 2;
  return p;
}

// log2 of a power of two.
inline int log2_of_power_of_two(int n) {
  int shift = 0;
  while ((1 << shift) < n) ++shift;
  return shift;
}

// A GQA group the packed-GQA kernels take: a power of two from 2 to 16 (shifts; the tile's
// rows hold whole groups).
inline bool packable_group(int64_t group) { return group >= 2 && group <= 16 && (group & (group - 1)) == 0; }

// Packed GQA's rule (forward_q_pack in hopper.cpp applies it when asked): pack a KV head's
// `group` query heads into one tile's `rows` rows when that needs fewer tiles than one head a
// tile -- short Sq, decode above all -- so `group` (a packable one), else 1.
inline int pack_gqa_rule(int64_t seqlen_q, int64_t group, int64_t rows) {
  if (!packable_group(group)) return 1;
  const int64_t packed_tiles = (seqlen_q * group + rows - 1) / rows;
  const int64_t head_tiles = group * ((seqlen_q + rows - 1) / rows);
  return packed_tiles < head_tiles ? int(group) : 1;
}

// Split-KV's rule (forward_splits in hopper.cpp): when `tiles` fill under half of the `sms`
// and each has at least 2 `min_run` key blocks, runs of at least `min_run` blocks enough to
// cover the SMs, at most 16, rounded down to a power of two (the kernels' tile arithmetic is
// shifts); else 1. min_run 2 for packed q; 8 for unpacked q, whose runs write fp32 partial O
// for every query row: on an H200 its clear gains were all runs of 8 or more blocks (one
// head of 4096 queries 1.7x, chunked prefill of 128 queries over 8192 keys 2.0x, decode 1.3x,
// each twice), while prefills of 1024 queries cut into runs of 4 measured 0.62 - 1.05x,
// inside the noise of such 25 us calls (identical unsplit calls read 0.023 - 0.037 ms).
inline int split_kv_rule(int64_t tiles, int64_t key_blocks, int sms, int64_t min_run = 2) {
  if (tiles < 1 || 2 * tiles > sms || key_blocks < 2 * min_run) return 1;
  const int64_t cover = (sms + tiles - 1) / tiles, longest = key_blocks / min_run;
  return power_of_two_at_most(std::min<int64_t>(std::min<int64_t>(cover, longest), 16));
}

// The head dim of the kernel that runs d_qk / d_v: the smallest of 64, 128, 256 that holds
// both, or 0 (not multiples of 8, or over 256). The tensor maps keep the real widths, so TMA
// fills the columns past them with zeros: Q K^T is unchanged, P V's (and the gradients')
// extra columns come out 0 and the kernels store only d_v (d_qk) columns. d 96 on the d 128
// kernel spends a quarter of its wgmma work on the zeros, but runs at Hopper speed rather
// than on the portable mma.sync kernels.
inline int padded_head_dim(const ProblemShape& shape) {
  const int64_t widest = shape.d_qk > shape.d_v ? shape.d_qk : shape.d_v;
  if (shape.d_qk % 8 != 0 || shape.d_v % 8 != 0 || shape.d_qk < 8 || shape.d_v < 8 || widest > 256) return 0;
  return widest <= 64 ? 64 : widest <= 128 ? 128 : 256;
}

// The varlen work list (hopper/varlen_tiles.hpp) in a call's workspace: the list's scratch
// (pairs for `capacity` tiles, the count, first[batch + 1]) needs varlen_tiles_bytes;
// build_varlen_tiles_in takes it from `ws` -- at that point of the call's takes -- and builds
// the list of `kind` on `stream` (the backward's key blocks of `key_rows` keys).
inline size_t varlen_tiles_bytes(int64_t capacity, int64_t batch) {
  return Workspace::bytes_for(2 * size_t(capacity)) + Workspace::bytes_for(1) + Workspace::bytes_for(size_t(batch) + 1);
}
hopper::VarlenTiles build_varlen_tiles_in(Workspace& ws, const cuda::AttentionParams& p, hopper::TileKind kind,
                                          int64_t capacity, int64_t batch, cudaStream_t stream,
                                          int key_rows = hopper::kVarlenBlockRows);

// The row layout (cuda::RowLayout, strides in elements) of a dense [B, S, H, D] tensor, or of
// a packed [T, H, D] one (rank 3), whose start(b) = cu_seqlens[b] counts rows.
cuda::RowLayout row_layout(const flash4_tensor& t);

// Kernel parameters of a call (forward or backward arguments), dense or packed (varlen):
// dtype, q / k / v / out layouts, LSE ([B, Hq, Sq] or [Hq, Tq]) when given, cu_seqlens and
// sizes (varlen: seqlen_q / seqlen_k = max_seqlen, 0 when not given: the Hopper kernels take
// their tiles from the work list instead), seqused_k, scale, causal, window. Each caller adds what only
// it needs.
template <class Args>
cuda::AttentionParams attention_params(const Args& a, const ProblemShape& shape) {
  cuda::AttentionParams p;
  p.dtype = a.q.dtype == FLASH4_BF16 ? cuda::DType::bf16 : cuda::DType::f16;
  p.q = row_layout(a.q);
  p.k = row_layout(a.k);
  p.v = row_layout(a.v);
  p.out = row_layout(a.out);
  cuda::set_lse(p, a.lse, shape.varlen);
  if (shape.varlen) {
    p.cu_seqlens_q = a.varlen.cu_seqlens_q;
    p.cu_seqlens_k = a.varlen.cu_seqlens_k;
  }
  p.seqused_k = a.varlen.seqused_k;  // dense or packed (paged KV is not covered: the callers' gaps)
  p.batch = int(shape.batch);
  p.heads_q = int(shape.heads_q);
  p.heads_kv = int(shape.heads_kv);
  p.group = int(shape.heads_q / shape.heads_kv);
  p.d_qk = int(shape.d_qk);
  p.d_v = int(shape.d_v);
  p.seqlen_q = int(shape.seqlen_q);
  p.seqlen_k = int(shape.seqlen_k);
  p.tokens_q = shape.tokens_q;
  p.tokens_k = shape.tokens_k;
  p.scale = float(shape.softmax_scale);
  p.scale_log2 = float(shape.softmax_scale * 1.4426950408889634);
  p.causal = a.options.causal != 0;
  p.window_left = a.options.window_left < 0 ? -1 : a.options.window_left;
  p.window_right = a.options.window_right < 0 ? -1 : a.options.window_right;
  cuda::set_softcap(p, a.options.softcap, shape.softmax_scale);
  p.sink = a.options.sink;  // device [Hq] (the backward's rows preprocess reads it for dsink)
  return p;
}

// Reasons in messages: the parts streamed one after another.
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// seqused_k on the Hopper forward and backward (each sequence attends to its first
// seqused_k[b] keys; the kernels mask by Sequence::sk and zero the rows past it that they
// read): on since scripts/hopper_seqused_check.sh passed on an H200 (2026-12-01: 37 cases vs
// float64 with NaN past the keys used, memcheck clean); FLASH4_HOPPER_SEQUSED=0 (read at each
// call) sends it to the portable kernels, for A/B runs.
inline bool hopper_seqused_enabled() { return !env_is("FLASH4_HOPPER_SEQUSED", "0"); }

// Keys per sequence from which a deterministic backward at d 256 takes the Hopper kernel: its
// ordered dQ adds pass down the 64-key blocks of a sequence one after another (a wavefront as
// long as the key blocks and query blocks together), so short sequences lose to the portable
// backward (H200, scripts/hopper_bwd_d256_check.sh: 0.83 - 0.97x at S 512 - 2k, 1.04 - 1.28x
// from 4k).
inline constexpr int64_t kDeterministicD256MinKeys = 4096;

// The Hopper backward kernel's head dim for `shape` (padded_head_dim): 64, 128 or 256; 0 when
// no kernel covers it. d 256 (backward_sm90.cuh's kSplitHeadDim) is the default since
// scripts/hopper_bwd_d256_check.sh passed on an H200 (2026-12-02: 1.28x the portable backward,
// flash4 / cuDNN bwd 0.53 -> 0.67), but for deterministic calls whose sequences average fewer
// than kDeterministicD256MinKeys keys. FLASH4_HOPPER_BWD_D256=0 sends d 256 to the portable
// backward, =1 to the kernel even then. Read at each call.
inline int backward_kernel_dim(const ProblemShape& shape, bool deterministic) {
  const int d = padded_head_dim(shape);
  if (d != 256) return d;
  if (env_is("FLASH4_HOPPER_BWD_D256", "0")) return 0;
  if (env_is("FLASH4_HOPPER_BWD_D256", "1") || !deterministic) return d;
  return shape.tokens_k >= kDeterministicD256MinKeys * std::max<int64_t>(shape.batch, 1) ? d : 0;
}

// Whether the d = 64 backward takes 128-query blocks (BM = 128, FA3's 128 x 128 tile) rather
// than 64; hopper_backward applies it (and goes back to 64 should the dQ map be rejected).
// The default at d 64 (H200, flash4-bench: 1.04 - 1.09x BM 64, deterministic 1.05 - 1.20x)
// except varlen without determinism (adept's packed batch, 0.976x there) and softcap (BM = 128
// does not take it); never with FLASH4_HOPPER_DQ=atomics (BM = 128 adds dQ in bulk only) or
// 2^31 query tokens (the bulk adds' 32-bit coordinates). FLASH4_HOPPER_BWD_BM=64 | 128 forces
// either; FLASH4_HOPPER_DQ=per_warpgroup (a BM = 64 hand-over) asks for 64. Read at each call.
inline bool backward_wide_m_rule(const ProblemShape& shape, bool deterministic, bool softcap) {
  if (padded_head_dim(shape) != 64 || softcap || env_is("FLASH4_HOPPER_DQ", "atomics") ||
      shape.tokens_q >= (int64_t(1) << 31) || env_is("FLASH4_HOPPER_BWD_BM", "64"))
    return false;
  if (env_is("FLASH4_HOPPER_BWD_BM", "128")) return true;
  return (!shape.varlen || deterministic) && !env_is("FLASH4_HOPPER_DQ", "per_warpgroup");
}

// How many of each warpgroup's 64-column dQ chunks a step the flat, non-deterministic backward
// adds by float4 atomics straight into the flat layout (the rest go through the one staging
// buffer and the dQ writer's bulk reduce-adds). Measured on an H200 (tenth session,
// bench/env_ab.py, 12 shapes a dim): d 256 all 2 (the staging hand-over's waits were 45% of
// the warps' stalls) 1.207x, d 64 its one chunk 1.049x; d 128 keeps the staging (0.985x with
// atomics). FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=0 | 1 | 2 overrides (clamped to the chunks a
// warpgroup has: 1 at d 64 / 128, 2 at d 256).
inline int flat_atomic_chunks_rule(int kernel_dim) {
  const int chunks = kernel_dim == 256 ? 2 : 1;
  for (const char* asked : {"0", "1", "2"})
    if (env_is("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", asked)) return std::min(asked[0] - '0', chunks);
  return kernel_dim == 128 ? 0 : chunks;
}

// The split-query d 256 step (params.hpp's d256_split_queries; docs/hopper_backward_d256.md):
// each consumer warpgroup computes S^T / dP^T for its own 32 of a step's 64 queries. Its P^T
// tiles live in the dQ staging buffer, so only where both dQ chunks of a warpgroup go by
// float4 atomics (flat_atomic_chunks 2, not deterministic). Measured on an H200 (eleventh
// session, bench/env_ab.py, every d 256 shape): 1.055-1.143x, geometric mean 1.088. On by
// default there; FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES=0 keeps the step of both warpgroups
// computing all 64 queries.
inline bool d256_split_queries_rule(int kernel_dim, int flat_atomic_chunks) {
  return kernel_dim == 256 && flat_atomic_chunks == 2 && !env_is("FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES", "0");
}

// The dense, non-deterministic backward's grid: heads first (x walks the KV heads, y the key
// blocks; params.hpp's heads_first_grid) for causal calls at d 128 and 256 up to 8192 keys.
// Measured on an H200 (tenth session, bench/env_ab.py, two runs): causal S 512 - 8k 1.00-1.06x
// (geometric mean 1.02-1.04 a dim), but S 16k 0.94-1.00x, d 64 causal 0.93-1.02x and
// non-causal 0.88-0.99x at every dim. FLASH4_HOPPER_BWD_HEADS_FIRST=1 | 0 forces it either
// way; never past 65535 key blocks (grid y), nor for varlen or deterministic calls (their
// grids are one-dimensional).
inline constexpr int64_t kHeadsFirstMaxKeys = 8192;
inline bool backward_heads_first_rule(int kernel_dim, bool causal, const ProblemShape& shape, bool deterministic) {
  if (shape.varlen || deterministic || shape.seqlen_k >= int64_t(65535) * 64) return false;
  if (env_is("FLASH4_HOPPER_BWD_HEADS_FIRST", "1")) return true;
  if (env_is("FLASH4_HOPPER_BWD_HEADS_FIRST", "0")) return false;
  return causal && kernel_dim >= 128 && shape.seqlen_k <= kHeadsFirstMaxKeys;
}

// Split-KV runs of a forward call (forward_splits in hopper.cpp: the rule, its measurements
// and switches): 1 for unpacked q when FLASH4_HOPPER_SPLIT_KV_UNPACKED=0, varlen or softcap;
// FLASH4_HOPPER_SPLIT_KV=N forces the power of two at or below N (1 .. 64); else
// split_kv_rule over the tiles (128 rows of one query head, or packed of a KV head's q_pack
// query heads) and the key blocks of the kernel for `kernel_dim`, in runs of >= 2 blocks
// packed, >= 8 unpacked, on sm_count() multiprocessors -- asked only then, so calls that
// cannot split (adept's varlen ones) make no device query. Read at each call.
template <class SmCount>
int forward_split_count(const ProblemShape& shape, bool softcap, int q_pack, int kernel_dim, SmCount&& sm_count) {
  if (q_pack <= 1 && (env_is("FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0") || shape.varlen || softcap)) return 1;
  const char* asked = std::getenv("FLASH4_HOPPER_SPLIT_KV");
  if (asked != nullptr && std::strcmp(asked, "auto") != 0) return power_of_two_at_most(std::clamp(std::atoi(asked), 1, 64));
  const int64_t rows = hopper::forward_query_rows(2), block_n = hopper::forward_key_box_rows(kernel_dim);
  const int64_t tiles = (shape.seqlen_q * q_pack + rows - 1) / rows * (shape.heads_q / q_pack) * shape.batch;
  return split_kv_rule(tiles, (shape.seqlen_k + block_n - 1) / block_n, sm_count(), q_pack > 1 ? 2 : 8);
}

// The forward's and the backward's gap for seqused_k ("" when it runs on Hopper).
inline std::string seqused_gap(const flash4_varlen& varlen) {
  if (varlen.seqused_k == nullptr || hopper_seqused_enabled()) return "";
  return "seqused_k on the portable kernels (FLASH4_HOPPER_SEQUSED=0)";
}

}  // namespace flash4::detail
