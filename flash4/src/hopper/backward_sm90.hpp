// Launchers of the Hopper (sm90a) backward (backward_sm90.cuh), one explicit instantiation
// per head dim in its own .cu file. Called by backward_sm90_host.cpp with params it has
// checked are covered, tensor maps it has encoded and a workspace it has carved.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/params.hpp"
#include "hopper/varlen_tiles.hpp"

namespace flash4::hopper {

// Tensor maps: 4-d (D, S, H, B) views (packed: (D, T, H, 1)) with the 128-byte swizzle and a
// box 64 columns wide; q and dout kBackwardQBoxRows rows high (the query block), k and v
// kTmaBoxRows (the key block, launch.hpp; d 256: kBackwardSplitKeyBoxRows).
struct BackwardTensorMaps {
  CUtensorMap q, k, v, dout;
  CUtensorMap dq_accum;  // DqAdd::bulk only: see kDqBulkBoxCols
};

// How the main kernel adds its dQ tiles to the fp32 workspace dq_accum [token][Hq][d]:
//  atomics  each consumer thread, float2 atomicAdd from its accumulator registers
//           (FLASH4_HOPPER_DQ=atomics; deterministic d 256);
//  bulk     the consumers stage the tile in shared memory, one thread of the producer
//           warpgroup adds it with cp.reduce.async.bulk.tensor (FLASH4_HOPPER_DQ=bulk; the
//           deterministic d 128 default).
//  bulk_per_warpgroup  the same adds, but the writer hands each consumer warpgroup its
//           buffers through barriers of its own, so the two warpgroups are not held in step
//           at every query block (FLASH4_HOPPER_DQ=per_warpgroup; not deterministic calls:
//           their order keeps both warpgroups' tiles together). Written without a GPU.
//  flat     the per-warpgroup hand-over, but each warpgroup stores its tile thread-major (8 float4
//           stores a thread, no swizzle, no bank conflict) and the writer adds it with one 1-D
//           bulk reduce-add into dq_accum laid out as the layout below says (FlashAttention-4's
//           scheme); backward_sm90_dq_flat_finish converts it. The default (since 2026-12-02,
//           scripts/hopper_dq_flat_check.sh: 1.049x the tensor-map bulk layout): d 64 / 128 at
//           64-query blocks, not deterministic (the per-warpgroup hand-over); d 64 at 128-query
//           blocks, deterministic too (lock-step); d 256, not deterministic (one buffer the
//           warpgroups fill in turn; 1.154x its float2 atomics). The swizzled staging it
//           replaced cost ~110 of the d 128 kernel's ~570 instructions per warp and step.
enum class DqAdd : int { atomics = 0, bulk = 1, bulk_per_warpgroup = 2, flat = 3 };

// DqAdd::flat: dq_accum as [Hq][slot][D / 64 parts][64 rows x 64 columns] fp32, slot the
// query block's dq_order_slots slot ((q_token(b) + 64 m) / 64 + b: one per 64-row block of a
// sequence, rows past its end unused), part p = columns 64 p .. 64 p + 63 of the kernel's D
// (d 128: consumer warpgroup p's columns; d 64: one part, both warpgroups' partial sums added
// into it). A part is stored in the consumers' accumulator order: float4 number n * 128 + tid
// holds thread tid's (= 32 wq + 4 g + t) n8 column tile n: rows 16 wq + g and + 8, columns
// 8n + 2t, + 1 ({row g: c, c + 1, row g + 8: c, c + 1}).
inline constexpr int kDqFlatPartFloats = 64 * 64;
inline int64_t dq_flat_floats(int64_t heads_q, int64_t slots, int kernel_dim) {
  return heads_q * slots * (kernel_dim / 64) * kDqFlatPartFloats;
}
// Index of element (row r, column c) of a part in that order.
__host__ __device__ inline constexpr int dq_flat_index(int r, int c) {
  return ((c / 8) * 128 + 32 * (r / 16) + 4 * (r % 8) + (c % 8) / 2) * 4 + 2 * ((r / 8) % 2) + c % 2;
}

// DqAdd::bulk: dq_accum as a 3-d fp32 tensor map (d, tokens_q, Hq) -- the layout the
// portable finish reads, unchanged -- with a box of kDqBulkBoxCols columns (128 bytes, the
// widest box the 128-byte swizzle takes) x kBackwardQBoxRows tokens x 1 head.
inline constexpr int kDqBulkBoxCols = 32;

inline constexpr int kBackwardQBoxRows = 64;  // = BackwardSm90Config::kBlockM
// The d = 256 kernel (host.hpp's backward_kernel_dim): key blocks of 64, so k / v boxes of
// 64 rows (the d 64 / 128 kernels: kTmaBoxRows).
inline constexpr int kBackwardSplitKeyBoxRows = 64;
// The d = 64 kernel at BM = 128 (wide_m below; the default at d = 64 but for varlen without
// determinism): q / dout boxes of 128 rows.
inline constexpr int kBackwardWideQBoxRows = 128;

// Floats per query head of the per-row arrays (lse2, D), indexed by the workspace token
// (dense b Sq + i, packed the token): every token, then room for one block's copy of
// kBackwardWideQBoxRows + 4 floats past the last one (the wider block, so either kernel
// fits); a multiple of 4 (16-byte aligned heads).
inline int64_t backward_sm90_row_pitch(int64_t tokens_q) {
  return (tokens_q + kBackwardWideQBoxRows + 4 + 3) / 4 * 4;
}

// The per-row inputs lse2 / D, [Hq][row_pitch] floats (p.lse_log2, p.d_rows), from out,
// dout and lse (dense or packed).
void backward_sm90_rows(const cuda::AttentionParams& p, int64_t row_pitch, cudaStream_t stream);

// Deterministic dQ (backward_sm90.cuh, "Deterministic dQ"): per (query head, query block) the
// count of dQ tiles added to it so far, and the ticket that hands the CTAs their tiles in
// the order they start. Workspace ints the caller zeroes before each launch.
struct DqOrder {
  int* counts = nullptr;  // [Hq][slots]
  int* ticket = nullptr;  // one int
  int64_t slots = 0;      // per query head: dq_order_slots
};

// Slots per query head: query block m (64 rows) of sequence b has slot
// (q_token(b) + 64 m) / 64 + b, q_token(b) its first workspace token (dense b Sq, packed
// cu_seqlens_q[b]). Two blocks of one sequence start 64 tokens apart; a block of a later
// sequence b' > b starts at a later token and adds b' > b: no two blocks share a slot, and
// every slot is below ceil(tokens_q / 64) + batch.
inline int64_t dq_order_slots(int64_t tokens_q, int64_t batch) {
  return (tokens_q + kBackwardQBoxRows - 1) / kBackwardQBoxRows + batch;
}

// The slot of the 64 query rows from `row` of the sequence whose first workspace token is
// q_token (sequence b): dq_order_slots' numbering, shared by the flat layout's writer and finish.
__host__ __device__ inline constexpr int64_t dq_slot(int64_t q_token, int64_t row, int b) {
  return (q_token + row) / kBackwardQBoxRows + b;
}
// Part `part` of `slot` for query head h in the flat dq_accum (`slots` per head, `parts` per slot).
__host__ __device__ inline float* dq_flat_part(float* dq_accum, int64_t slots, int parts, int h, int64_t slot,
                                               int part) {
  return dq_accum + ((int64_t(h) * slots + slot) * parts + part) * int64_t(kDqFlatPartFloats);
}

// The main kernel: dk, dv written (rows of the sequences' keys), dQ added to p.dq_accum
// (zeroed by the caller). `list`: the varlen work list (pairs == nullptr for a dense call),
// at most `list_capacity` pairs; for a deterministic call built with
// TileKind::key_blocks_in_dq_order. `order`: nullptr for atomic dQ (any order), else the
// deterministic dQ's counts and ticket, zeroed. `dq_add`: how the tiles are added (bulk:
// maps.dq_accum encoded, tokens_q < 2^31). `wide_m`: d = 64 only, with dq_add == bulk and q /
// dout encoded with kBackwardWideQBoxRows-row boxes: the BM = 128 kernel (backward_sm90.cuh,
// BackwardSm90Config; the default at d = 64 but for varlen without determinism).
template <int D>
void backward_sm90(const BackwardTensorMaps& maps, const cuda::AttentionParams& p, int64_t row_pitch,
                   const VarlenTiles& list, int64_t list_capacity, const DqOrder* order, DqAdd dq_add,
                   bool wide_m, cudaStream_t stream);

// DqAdd::flat's finish: dq = scale * dq_accum (the layout above, `slots` per head, parts of the
// d `kernel_dim` kernel) in dq's dtype for every row of every sequence, d_qk columns. Rows of
// no sequence are the portable finish's to zero.
void backward_sm90_dq_flat_finish(const cuda::AttentionParams& p, int64_t slots, int kernel_dim,
                                  cudaStream_t stream);

// Whether this binary's backward kernels are sm_90a machine code the current device runs.
bool backward_sm90_runs_here();

}  // namespace flash4::hopper
