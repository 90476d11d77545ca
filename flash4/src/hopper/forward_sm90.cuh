// Hopper (sm90a) forward kernel, FlashAttention-3 style warp specialisation:
//  - warpgroup 0, the producer: one thread issues TMA loads -- Q once, then K and V blocks
//    through a two-stage ring of shared-memory buffers, each with a "full" mbarrier (TMA
//    bytes landed) and an "empty" one (both consumer warpgroups are done reading it);
//    the warpgroup gives most of its registers away (setmaxnreg.dec);
//  - warpgroups 1 and 2, the consumers: 64 query rows each (M tile 128 per CTA).
//    S = Q K^T by wgmma with both operands in shared memory, online softmax on the
//    accumulators in registers (FA4's conditional rescaling, optionally part of the
//    exponentials emulated on the FMA pipe: fa4_softmax.cuh), O += P V by wgmma with P
//    from registers. Intra-warpgroup overlap: block j's S = Q K^T is issued before block
//    j-1's P V is, and block j's softmax runs while that P V is on the tensor cores.
// Key blocks run from the last (the causal diagonal, masked) down, so only the first
// blocks of a row tile pay for per-element masks (and, with a left window, the last ones:
// a tile visits only the key blocks [kb_begin, kb_end) its rows see). Persistent CTAs (one per SM) walk the
// tiles in a static round-robin, heaviest (causal) first; Q is double-buffered so the next
// tile's Q and first K / V blocks load while this tile finishes. With a tile counter
// (the default; FLASH4_HOPPER_SCHEDULE=static goes without) the CTAs take their tiles from it
// instead (the dynamic schedule, see the kernel).
//
// Varlen (cu_seqlens): the tensor maps cover the packed token axis ([T, H, D] as (D, T, H, 1));
// the tiles come from the work list (varlen_tiles.hpp: only the (sequence, query block) pairs
// that exist, heaviest first). A box that runs past its sequence's end reads the next
// sequence's rows: their keys are masked like keys past Sk, their query rows are never
// written, and the V rows are zeroed in shared memory before P V (P = 0 there, but 0 * NaN
// would not be 0 if the neighbour held one).
//
// Covered here: dense (B, S, H, D) and packed (T, H, D) tensors with any 16-byte-multiple
// strides (the column blocks of a fused qkv buffer included), bf16 / fp16, any d_qk and d_v
// that are multiples of 8 up to 256 (run on the kernel of D = 64, 128 or 256 that holds both,
// TMA zero-filling the columns past each: padded_head_dim in host.hpp; passed
// scripts/hopper_padded_dims_check.sh on an H200, 2026-12-01), GQA / MQA, causal
// (bottom-right) or not, sliding window (left / right, aligned like causal), softcap, a
// learnable sink, LSE. Everything else runs on the portable kernels (hopper.cpp decides).
// Verified on an H200 (2026-11-30): d 64 / 128 dense, varlen and window (the whole flash4 gpu
// suite with this path on; scripts/hopper_varlen_check.sh); d = 256, softcap and sink
// (scripts/hopper_fwd256_check.sh, 2026-12-01).
//
// Softcap is a template parameter (its tanh runs on every score of every block); without it
// the main loop is the one it was before softcap existed. The sink joins the denominator only,
// once per row in the finish, outside the loop.
//
// Pingpong (FA3): the consumer warpgroups alternate their wgmma batches (named barriers).
// Dynamic (atomic) tile schedule: the default (scripts/hopper_sched_check.sh, H200 2026-12-01).
// seqused_k (dense or packed): each sequence attends to its first seqused_k[b] keys (Sequence
// sk); passed scripts/hopper_seqused_check.sh on an H200 (2026-12-01).
// d = 64 with three consumer warpgroups (ForwardSm90Config<64, 3>: 192-row tiles, 160
// registers; not with softcap): passed scripts/hopper_fwd_warpgroups_check.sh on an H200
// (2026-12-01), the default but for short causal / windowed problems (hopper.cpp).
// Paged KV (k / v [pages, page_size, Hkv, D], a page table; page_size a multiple of 8): the
// producer gathers each key block box by box from the sequence's pages (load_key_block).
// Packed GQA (dense q, short Sq): a KV head's query heads share one tile's rows (kPackGqa);
// in those kernels split-KV (flash-decoding: a tile's key blocks cut into p.num_splits runs,
// merged by split_combine.cu) for decode, where the packed tiles fill few SMs.
// The TMA store of O (d <= 128, dense unpacked q): each finished tile through its Q buffer.
// These four passed scripts/hopper_fwd_features_check.sh on an H200 (2026-12-01) and are the
// defaults (FLASH4_HOPPER_PAGED=0, FLASH4_HOPPER_PACK_GQA=0, FLASH4_HOPPER_SPLIT_KV=1,
// FLASH4_HOPPER_TMA_STORE_O=0 switch them off).
// Missing vs issue 4 (follow-ups): native (unpadded) d 96 / 192 tiles.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "cuda/fa4_softmax.cuh"
#include "cuda/params.hpp"
#include "cuda/ptx.cuh"
#include "cuda/sequence.cuh"
#include "hopper/blocks.cuh"
#include "hopper/ptx_sm90.cuh"
#include "hopper/ptx_sm90_wgmma_wide.cuh"
#include "hopper/varlen_tiles.hpp"

namespace flash4::hopper {

using cuda::AttentionParams;

// Tile shapes. One consumer thread holds (a warpgroup of 128 threads owns 64 query rows):
//   O accumulator 64 x D fp32           D / 2 registers   (d 64: 32, d 128: 64, d 256: 128)
//   S block 64 x BN fp32                BN / 2            (BN 128: 64, BN 80: 40)
//   P as 16-bit A fragments 64 x BN     BN / 4            (BN 128: 32, BN 80: 20)
// and S of block j is live beside P of block j - 1 (intra-warpgroup overlap), so the three
// add up, plus ~30 for row max / sum, masks and addresses, under setmaxnreg's 240.
//   d <= 128: BN = 128: 64 + 64 + 32 = 160 at d 128.
//   d = 256:  BN = 128 would be 128 + 64 + 32 = 224 + ~30 > 240; BN = 80 gives
//             128 + 40 + 20 = 188 (FA3 and FA4 pick 128 x 80 at d 256 too). BN must be a
//             multiple of 16 (the P V k-steps) and of 8 (wgmma N, 8-row swizzle groups).
// Shared memory (227 KB = 232448 bytes a block on sm_90): Q 128 x D x 2, K and V stages
// BN x D x 2 each, two stages of each.
//   d 128: 2 Q buffers 64 KB + 4 x 32 KB = 192 KB.
//   d 256: Q 128 x 256 x 2 = 64 KB, one buffer only (a second would not fit); K / V stages
//          80 x 256 x 2 = 40 KB, 4 of them = 160 KB; 224 KB + 1 KB alignment slack + 88 bytes
//          of barriers, 16 of tile slot and store coordinates, 8 of padding, 48 of decoded tile
//          = 230560 bytes. BN = 96 would need 192 KB of stages: too much.
// Swizzle: each 64-column (128-byte) block of a tile ("chunk", ptx_sm90.cuh) is rows x 128
// bytes: 80 x 128 = 10240 is a multiple of the 1024-byte swizzle atom, so every chunk and
// stage stays 1024-aligned and the descriptors keep base offset 0.
// kWarpgroups: consumer warpgroups of 64 rows each -- 2 (the default), or 3 at d = 64
// (FlashAttention-3's 192 x 128 tile there: 50% more warps to hide the softmax, which at
// d = 64 costs as much as the wgmmas; chosen by forward_warpgroups in hopper.cpp). Three
// warpgroups get 160 registers each (128 * 24 + 384 * 160 <= 64K): O 32 + S 64 + P 32 fit.
// The producer's handoff of a decoded tile to the consumers, a Q buffer's worth: three 16-byte
// words (TileHandoff, after Tile below).
inline constexpr uint32_t kTileHandoffBytes = 48;

template <int D, int kWarpgroups = 2>
struct ForwardSm90Config {
  static_assert(kWarpgroups == 2 || (kWarpgroups == 3 && D == 64), "three consumer warpgroups at d = 64 only");
  static constexpr int kConsumerWarpgroups = kWarpgroups;
  static constexpr int kConsumerThreads = 128 * kWarpgroups;
  static constexpr int kBlockM = 64 * kWarpgroups;
  static constexpr int kBlockN = D <= 128 ? 128 : 80;
  static constexpr int kStages = 2;
  static constexpr int kThreads = 128 + kConsumerThreads;  // producer warpgroup + the consumer warpgroups
  static constexpr int kChunks = D / 64;  // 128-byte swizzle blocks along the head dim
  static constexpr uint32_t kQBytes = kBlockM * D * 2;
  static constexpr uint32_t kKVBytes = kBlockN * D * 2;  // one stage of K (or of V)
  static constexpr uint32_t kQChunkBytes = kBlockM * 128, kKVChunkBytes = kBlockN * 128;
  static constexpr int kQStages = D <= 128 ? 2 : 1;  // 2: the next tile's Q loads during this tile
  static constexpr int kBarriers = 3 * kQStages + 4 * kStages;  // q full / empty, K / V, o full
  // After the barriers: the tile index of each Q buffer (the dynamic schedule's handoff), then
  // each Q buffer's O store coordinates (the store warp's handoff: q row, head, batch), then,
  // 16-aligned, each Q buffer's decoded Tile (the producer's handoff to the consumers).
  static constexpr uint32_t kTileSlotOffset = kQStages * kQBytes + 2 * kStages * kKVBytes + 8 * kBarriers;
  static constexpr uint32_t kTileInfoOffset = (kTileSlotOffset + 16 * kQStages + 15) / 16 * 16;
  // 1024 bytes of slack to align the tiles to the swizzle atom.
  static constexpr size_t kSmemBytes = 1024 + kTileInfoOffset + kQStages * kTileHandoffBytes;
  // Registers per thread after setmaxnreg: 128 * 24 + 256 * 240 <= 64K (3 warpgroups: 160).
  static constexpr int kProducerRegs = 24, kConsumerRegs = kWarpgroups == 2 ? 240 : 160;
  static_assert(D == 64 || D == 128 || D == 256, "d = 64, 128 or 256");
  static_assert(kBlockN % 16 == 0 && kKVChunkBytes % 1024 == 0, "chunks stay 1024-aligned");
  static_assert(kSmemBytes <= 232448, "sm_90's shared memory per block");
};

// Kernel flags (run-time switches, for A/B measurements).
inline constexpr int kEmulateExp2 = 1;  // FA4's exp2 emulation for one 8-column tile in four
inline constexpr int kPingpong = 2;     // consumer warpgroups alternate their wgmma batches
inline constexpr int kTmaStoreO = 4;    // O through its Q buffer and a TMA store (ForwardSchedule)
inline constexpr int kStoreWarpO = 8;   // with kTmaStoreO: a producer warp issues the stores

// TMA stores of consumer warpgroup cw's 64 finished O rows from its half of a Q buffer
// (`tile`: the buffer; 128-byte swizzled 64-column chunks of kChunkBytes), the tile's query
// rows from q_row, of head h and batch b: a box per 64-column chunk; rows past Sq and
// columns past d_v are outside the map and not written. One thread issues them.
template <int kChunks, uint32_t kChunkBytes>
__device__ __forceinline__ void store_o_boxes(const CUtensorMap* map, const unsigned char* tile, int cw, int q_row, int h,
                                              int b) {
#pragma unroll
  for (int c = 0; c < kChunks; ++c) tma_store_4d(map, 64 * c, q_row + 64 * cw, h, b, tile + 64 * cw * 128 + c * kChunkBytes);
}

// Row max / sum of one consumer thread's two rows (g and g + 8 of its warp).
struct SoftmaxRows {
  cuda::RowMax max[2];
  float sum[2] = {0.0f, 0.0f};
};

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// tanh for the softcap, y = s * scale / c: 1 - 2 / (2^(2 |y| log2 e) + 1) with y's sign
// (as the portable kernels' tanh_softcap). Absolute error ~1e-7, which is what matters: the
// capped logit's absolute error c * 1e-7 becomes P's relative error. tanh.approx.f32 would
// be one MUFU op instead of two, but its relative error (~2^-11) times logits of ~10 gives
// lse errors near the tests' 2e-3.
__device__ __forceinline__ float softcap_tanh(float y) {
  const float e = cuda::exp2_hardware(2.0f * cuda::kLog2e * fabsf(y));
  return copysignf(1.0f - __fdividef(2.0f, e + 1.0f), y);
}

// Softcap constants (AttentionParams::softcap_log2 / softcap_inv_scale), read by
// softmax_block only when it is instantiated with SOFTCAP.
struct Softcap {
  float log2_c = 0, inv_scale = 0;  // c log2 e, scale / c
};

// One block of scores (m64nN accumulators, raw Q.K) -> unnormalised P = 2^(x - m) in
// place, with x = s * scale_log2, or with SOFTCAP x = c log2(e) tanh(s * scale / c) (the cap
// comes first: max, conditional rescaling and exp2 all see capped logits); masked elements
// (key outside the row's [key_lo, key_end): causal, window, the sequence's end) -> 0.
// Returns each row's rescale factor for O (1 when the stale max is kept).
template <bool EMULATE, bool SOFTCAP, int N>
__device__ __forceinline__ void softmax_block(float (&s)[N / 2], bool masked, bool mask_lo, int n0, int t,
                                              const int (&key_lo)[2],
                                              const int (&key_end)[2], float scale_log2, const Softcap& cap, float tau,
                                              SoftmaxRows& rows, float (&factor)[2]) {
  if constexpr (SOFTCAP) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) s[i] = cap.log2_c * softcap_tanh(s[i] * cap.inv_scale);
    scale_log2 = 1.0f;  // s now holds log2-domain logits
  }
  if (masked) {
    // Element (i, e) holds key n0 + 2t + c with c = 8i + (e & 1), a constant of the unrolled
    // loop: bounds moved to c's side once per row leave one compare with an immediate per
    // bound and element (the key's own add and the compare of two registers were 3.5
    // instructions an element, SASS of the d 64 kernel). The left bound only where the block
    // reaches below some row's first key (a left window, the sequence's start in varlen).
    const int hi[2] = {key_end[0] - n0 - 2 * t, key_end[1] - n0 - 2 * t};
    const int lo[2] = {key_lo[0] - n0 - 2 * t, key_lo[1] - n0 - 2 * t};
    if (mask_lo) {
#pragma unroll
      for (int i = 0; i < N / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = 8 * i + (e & 1);
          if (c >= hi[e >> 1] || c < lo[e >> 1]) s[4 * i + e] = -__builtin_huge_valf();
        }
    } else {
#pragma unroll
      for (int i = 0; i < N / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (8 * i + (e & 1) >= hi[e >> 1]) s[4 * i + e] = -__builtin_huge_valf();
    }
  }
  float offset[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float block_max = -__builtin_huge_valf();
#pragma unroll
    for (int i = 0; i < N / 8; ++i) block_max = fmaxf(block_max, fmaxf(s[4 * i + 2 * half], s[4 * i + 2 * half + 1]));
    block_max = quad_max(block_max) * scale_log2;
    factor[half] = rows.max[half].update(block_max, tau);
    rows.sum[half] *= factor[half];
    offset[half] = rows.max[half].offset();
  }
#pragma unroll
  for (int i = 0; i < N / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float x = fmaf(s[4 * i + e], scale_log2, -offset[e >> 1]);
      // With EMULATE, one 8-column tile in four goes to the FMA-pipe polynomial so the
      // MUFU and the FMA units work side by side (FA4's split).
      const float y = (EMULATE && (i & 3) == 3) ? cuda::exp2_emulated<3>(x) : cuda::exp2_hardware(x);
      s[4 * i + e] = y;
      rows.sum[e >> 1] += y;
    }
}

// P (fp32 accumulator layout) -> 16-bit A fragments of the P V wgmma, k16 slice by slice.
template <typename T, int N>
__device__ __forceinline__ void scores_to_a(uint32_t (&a)[N / 16][4], const float (&s)[N / 2]) {
#pragma unroll
  for (int k = 0; k < N / 16; ++k) {
    a[k][0] = cuda::pack2<T>(s[8 * k + 0], s[8 * k + 1]);
    a[k][1] = cuda::pack2<T>(s[8 * k + 2], s[8 * k + 3]);
    a[k][2] = cuda::pack2<T>(s[8 * k + 4], s[8 * k + 5]);
    a[k][3] = cuda::pack2<T>(s[8 * k + 6], s[8 * k + 7]);
  }
}

// One row of O, 16-bit, D columns: packed[n] holds columns 8n + 2t, 8n + 2t + 1 (n8 tile n,
// the accumulator layout; t = lane % 4, the four lanes of a quad share the row). Stored as
// they are, a warp's 4-byte stores fill 16 of every 32 bytes of the sectors they touch (ncu,
// 2026-12-01: half the sectors of O wasted). Instead, per group of four n8 tiles, a 4 x 4
// transpose within the quad (three shuffle rounds: lane t swaps its piece of tile 4k + (t ^ r)
// for lane t ^ r's piece of tile 4k + t) gives lane t tile 4k + t whole: one 16-byte store,
// and the quad's four fill 64 contiguous bytes. Every lane of the warp must call it (the
// shuffles); `keep` = the row exists (only then is anything written). Only the first `columns`
// (d_v, a multiple of 8: whole 16-byte pieces) are stored; the rest are the zero padding of a
// head dim the kernel's D rounds up (padded_head_dim in host.hpp).
template <int D>
__device__ __forceinline__ void store_o_row(void* row_ptr, const uint32_t (&packed)[D / 8], int t, bool keep,
                                            int columns) {
  static_assert(D % 32 == 0, "whole groups of four n8 tiles");
#pragma unroll
  for (int k = 0; k < D / 32; ++k) {
    const uint32_t e[4] = {packed[4 * k], packed[4 * k + 1], packed[4 * k + 2], packed[4 * k + 3]};
    // piece[j] = lane j's piece of tile 4k + t (columns 8 (4k + t) + 2j, + 1); selects keep the
    // run-time indices out of local memory.
    uint32_t piece[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) piece[j] = e[j];  // j == t is right; the others are replaced below
#pragma unroll
    for (int r = 1; r < 4; ++r) {
      const int other = t ^ r;  // the lane we trade with, and the tile it gets from us
      const uint32_t give = other == 0 ? e[0] : other == 1 ? e[1] : other == 2 ? e[2] : e[3];
      const uint32_t got = __shfl_xor_sync(0xffffffffu, give, r);
#pragma unroll
      for (int j = 0; j < 4; ++j) piece[j] = j == other ? got : piece[j];
    }
    if (keep && 8 * (4 * k + t) < columns) {
      // piece[t] still holds e[t], this lane's own piece of tile 4k + t.
      *reinterpret_cast<uint4*>(static_cast<unsigned char*>(row_ptr) + 2 * (32 * k + 8 * t)) =
          make_uint4(piece[0], piece[1], piece[2], piece[3]);
    }
  }
}

// The work of one CTA tile: BM query rows of one (sequence, head), the key blocks
// [kb_begin, kb_end) that hold every key its rows see, and its tensor-map coordinates.
struct Tile {
  int m0, h, b, kb_begin, kb_end;
  int split;  // split-KV: which run of the key blocks (0 without)
  int q_row, k_row, tma_b;  // row of query m0, row of key 0, and the batch coordinate (dense: b; packed: 0)
  cuda::Sequence seq;
};

// What the consumers use of a Tile, as the producer hands it over in shared memory: three
// 16-byte words at a 32-bit shared address (the dropped fields, and a 32-bit q_start, spare
// the producer's 24 registers: the whole Tile spilled there).
struct TileHandoff {
  __device__ __forceinline__ static void store(uint32_t addr, const Tile& w) {
    st_shared_v4(addr, make_int4(w.m0, w.h, w.b, w.split));
    st_shared_v4(addr + 16, make_int4(w.kb_begin, w.kb_end, w.q_row, w.tma_b));
    st_shared_v4(addr + 32, make_int4(w.seq.sq, w.seq.sk, int(w.seq.q_start), 0));
  }
  __device__ __forceinline__ static Tile load(uint32_t addr) {
    const int4 a = ld_shared_v4(addr), b = ld_shared_v4(addr + 16), c = ld_shared_v4(addr + 32);
    Tile w{};
    w.m0 = a.x, w.h = a.y, w.b = a.z, w.split = a.w;
    w.kb_begin = b.x, w.kb_end = b.y, w.q_row = b.z, w.tma_b = b.w;
    w.seq.sq = c.x, w.seq.sk = c.y, w.seq.q_start = c.z;
    return w;
  }
};

// Tiles in launch order. Dense, causal: the heaviest (last) query blocks of every head first,
// so the static round-robin over CTAs hands every CTA tiles of similar cost at each step and
// ends on light ones; dense otherwise: the query blocks of one head side by side (their K / V
// stay in L2). Varlen: the work list's pairs (heaviest first), the query heads of one pair
// side by side (under GQA they share K / V). The dynamic schedule takes the dense tiles in
// another order (dynamic_tile).
// log2 of the query heads packed into a tile's rows: p.q_pack_shift in the packed-GQA kernels,
// 0 (a compile-time constant, so the dense kernels' code is what it was) in the others.
template <bool kPackGqa>
__device__ __forceinline__ int pack_shift(const AttentionParams& p) {
  return kPackGqa ? p.q_pack_shift : 0;
}
// log2 of the split-KV runs a tile's key blocks are cut into: p.split_shift in the packed-GQA
// kernels (the decode kernels), 0 (a constant) in the others.
template <bool kPackGqa>
__device__ __forceinline__ int split_shift(const AttentionParams& p) {
  return kPackGqa ? p.split_shift : 0;
}

template <bool kPackGqa>
__device__ __forceinline__ Tile tile_at(const AttentionParams& p, const VarlenTiles& list, int index, int m_blocks,
                                        int block_m, int block_n) {
  const int shift = pack_shift<kPackGqa>(p), run_shift = split_shift<kPackGqa>(p);
  Tile w;
  int m_block;
  // Split-KV (dense q only): index = tile * splits + split, splits a power of two.
  w.split = index & ((1 << run_shift) - 1);
  index >>= run_shift;
  if (list.pairs != nullptr) {
    const int2 pair = list.pairs[index / p.heads_q];
    w.h = index % p.heads_q;
    w.b = pair.x;
    m_block = pair.y;
  } else {
    // Packed GQA (q_pack > 1): a tile row is a (token, head) pair, so a tile stands for one
    // KV head's group of query heads and m_block counts packed rows.
    const int row_heads = p.heads_q >> shift, heads = row_heads * p.batch;
    int hb;
    if (p.causal) {
      m_block = m_blocks - 1 - index / heads;
      hb = index % heads;
    } else {
      m_block = index % m_blocks;
      hb = index / m_blocks;
    }
    w.h = (hb % row_heads) << shift;  // packed: the group's first query head
    w.b = hb / row_heads;
  }
  w.m0 = m_block * block_m;
  w.seq = cuda::sequence_of(p, w.b);
  // The queries of rows [m0, m0 + block_m): tokens m0 / q_pack .. (q_pack divides block_m).
  const BlockRange kb =
      key_blocks_of_query_tile(p, w.seq, w.m0 >> shift, block_m >> shift, block_n);
  w.kb_begin = kb.begin;
  w.kb_end = kb.end > kb.begin ? kb.end : kb.begin;
  if (run_shift > 0) {  // this split's run of ceil(blocks / splits) blocks (possibly none)
    const int run = (w.kb_end - w.kb_begin + (1 << run_shift) - 1) >> run_shift;
    w.kb_begin = min(w.kb_end, w.kb_begin + w.split * run);
    w.kb_end = min(w.kb_end, w.kb_begin + run);
  }
  const bool packed = p.cu_seqlens_q != nullptr;
  w.q_row = packed ? int(w.seq.q_start) + w.m0 : w.m0 >> shift;
  w.k_row = packed ? int(w.seq.k_start) : 0;
  w.tma_b = packed ? 0 : w.b;
  return w;
}

// Key block nb (BN rows from key nb * BN) of a tile into a K or V stage through `map`, one TMA
// box per 64-column chunk. Dense / packed: the box at row key0 + nb * BN of batch `batch`
// (Tile::k_row, Tile::tma_b). Paged (kPaged: p.page_table): key0 = the sequence, batch = its
// key count (seqused_k), and the block is gathered box by box from the sequence's pages;
// slots past the pages its keys fill read page number `pages`, past the tensor, so TMA fills
// zeros (a table's unused entries may hold anything). Every box counts its full bytes towards
// `bar`, as the dense loads do.
template <bool kPaged, int BN, int kChunks, uint32_t kChunkBytes>
__device__ __forceinline__ void load_key_block(unsigned char* dst, const CUtensorMap* map, const AttentionParams& p,
                                               int key0, int batch, int nb, int hk, uint64_t* bar) {
  if constexpr (!kPaged) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) tma_load_4d(dst + c * kChunkBytes, map, 64 * c, key0 + nb * BN, hk, batch, bar);
  } else {
    // Box rows (p.page_box_rows: paged_box_rows in launch.hpp, what the host encoded the maps
    // with) and the page count come from the parameters, not registers: the producer has 24.
    // page_size is a multiple of 8 (the host's gap), so each box starts on a 1024-byte
    // swizzle atom of the stage.
#pragma unroll 1
    for (int r = 0; r < BN; r += p.page_box_rows) {
      const int key = nb * BN + r, slot = key / p.page_size, row = key - slot * p.page_size;
      // The slot holds keys of the sequence (row 0 of it is one: key - row < batch) or not.
      const int page = key - row < batch ? __ldg(p.page_table + (key0 * int(p.page_table_stride) + slot)) : p.pages;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) tma_load_4d(dst + c * kChunkBytes + r * 128, map, 64 * c, row, hk, page, bar);
    }
  }
}

// The dynamic schedule's order: its `position`-th tile, as a tile_at index. Dense: the query
// blocks of one (sequence, head) side by side, under causal the heaviest (last) first -- the
// CTAs running at once then share a few heads' K / V (L2), and the counter, not the order,
// evens out the costs. Under causal that is tile_at's index rank * heads + head; without
// causal tile_at's order is already this one. Varlen: the work list's order (heaviest first).
// Positions past the last tile stay as they are (the sentinel). Both roles map the same way:
// the producer maps, the consumers read the mapped index from the slot.
template <bool kPackGqa>
__device__ __forceinline__ int dynamic_tile(const AttentionParams& p, const VarlenTiles& list, int position,
                                            int m_blocks, int tiles) {
  if (list.pairs != nullptr || !p.causal || split_shift<kPackGqa>(p) > 0 || unsigned(position) >= unsigned(tiles))
    return position;
  const int head = position / m_blocks;
  return (position - head * m_blocks) * ((p.heads_q >> pack_shift<kPackGqa>(p)) * p.batch) + head;
}

// Persistent: gridDim.x CTAs (one per SM) walk the tiles index = blockIdx.x, + gridDim.x, ...
// (the static schedule), or, with `tile_counter` (zeroed on the stream before the launch),
// the dynamic one: CTA i starts with tile i, then its producer takes the next one from the
// counter (an atom, relaxed: a ticket) when it has issued the current tile's last K / V block -- the CTAs that finish
// early take more tiles -- and hands it to the consumers in tile_slot[q stage], written before
// the arrival on that stage's q_full (mbarrier arrive releases, the wait acquires). The slot
// shares the Q buffer's life: the producer rewrites it only after q_empty says both consumer
// warpgroups are done with the tile kQStages back, so a consumer can read only the index of
// the tile it waits for. An index >= tiles (the sentinel, with a bare arrival: no Q load)
// ends both loops on the same tile count. In every consumer warp lane 0 alone reads the slot
// and shuffles it to the others: the lane that later arrives on q_empty has read it first.
// The producer runs ahead across tile boundaries (the next tile's Q and first K / V blocks
// load while the consumers finish and store the current one). The K / V ring's stage and
// phase follow one running block count per CTA, shared by producer and consumers.
// kPackGqa: dense q with the query heads of a KV head packed into the tile's rows (p.q_pack,
// a power of two dividing BM; the q map is (D, H, S, B), boxes of q_pack heads x BM / q_pack
// tokens), for short Sq under GQA (decode): a 1-token tile no longer wastes 127 of 128 rows,
// and the group reads its K / V once. Its own instantiation for the same reason as kPaged.
// kPaged: k / v paged (p.page_table); its own instantiation, since the gather's extra live
// values do not fit the producer's 24 registers beside the dense path's (ptxas spilled the
// dense kernels with one branch for both). The paged / packed kernels themselves spill 0 to 8
// bytes in the producer (a few local loads per tile or key block; ptxas, CUDA 13).
template <int D, typename T, bool SOFTCAP, int kWarpgroups = 2, bool kPaged = false, bool kPackGqa = false>
__global__ void __launch_bounds__(ForwardSm90Config<D, kWarpgroups>::kThreads, 1)
    attention_forward_sm90_kernel(const __grid_constant__ CUtensorMap tma_q, const __grid_constant__ CUtensorMap tma_k,
                                  const __grid_constant__ CUtensorMap tma_v, const __grid_constant__ CUtensorMap tma_o,
                                  const AttentionParams p,
                                  const VarlenTiles list, int* tile_counter, const int flags) {
#if defined(FLASH4_SM90A)
  // Pingpong pairs two warpgroups: not with three.
  const bool emulate_exp2 = (flags & kEmulateExp2) != 0, pingpong = kWarpgroups == 2 && (flags & kPingpong) != 0;
  // O by TMA store through the tile's Q buffer (d <= 128: two buffers, released at the tile's
  // end; dense, unpacked q: the host sets the flag only then).
  const bool tma_store_o = ForwardSm90Config<D, kWarpgroups>::kQStages == 2 && !kPackGqa && (flags & kTmaStoreO) != 0;
  // The store warp (opt-in, written without a GPU): the TMA stores of O are issued by warp 1
  // of the producer warpgroup, not by a consumer thread. The consumers write their rows into
  // the Q buffer, fence them and arrive on o_full[q stage] -- no barrier, no wait -- and go on
  // to the next tile; the store warp waits there, stores the tile, waits until the stores
  // have read the buffer and hands it back to the loading warp (q_empty, its only arrival).
  // With the consumers' wait for the read and their two barriers gone, a short tile's end
  // overlaps the next one's start. The tile's coordinates come with it (o_coords, written by
  // the first consumer thread), a q row of -1 at the end, so the store warp, at 24 registers,
  // neither walks the schedule nor decodes tiles.
  const bool store_warp_o = tma_store_o && (flags & kStoreWarpO) != 0;
  using C = ForwardSm90Config<D, kWarpgroups>;
  constexpr int BM = C::kBlockM, BN = C::kBlockN, kStages = C::kStages;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = align_smem_1024(smem_raw);
  constexpr int kQStages = C::kQStages;
  // One Q buffer (d 256): it is handed back as soon as the tile's last S = Q K^T is done, so
  // the next tile's Q (and, behind it, its first K / V blocks) load during the last P V and the
  // finish. With two buffers the release waits for the end of the tile, as before.
  constexpr bool kEarlyQRelease = kQStages == 1;
  T* sQ = reinterpret_cast<T*>(smem);                                                // [q stage][chunk][BM][64]
  T* sK = reinterpret_cast<T*>(smem + kQStages * C::kQBytes);                        // [stage][chunk][BN][64]
  T* sV = reinterpret_cast<T*>(smem + kQStages * C::kQBytes + kStages * C::kKVBytes);  // [stage][chunk][BN][64]
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + kQStages * C::kQBytes + 2 * kStages * C::kKVBytes);
  uint64_t* q_full = bars;
  uint64_t* q_empty = bars + kQStages;
  uint64_t* k_full = bars + 2 * kQStages;
  uint64_t* v_full = k_full + kStages;
  uint64_t* k_empty = k_full + 2 * kStages;
  uint64_t* v_empty = k_full + 3 * kStages;
  uint64_t* o_full = k_full + 4 * kStages;  // [q stage]: the consumers' O rows are in (store warp)
  const uint32_t tile_slot = smem_u32(bars + C::kBarriers);  // int [q stage], dynamic schedule
  const uint32_t o_coords = tile_slot + 4 * kQStages;         // int [q stage][3], store warp
  // [q stage]: the tile the producer decoded for that Q buffer (TileHandoff). The consumers
  // read it instead of decoding it in every warp (tile_at's integer divisions, the sequence's
  // bounds: ~370 instructions a warp and tile before, ncu 2026-12-03, most of them a dependent
  // chain in front of the tile's first wgmma; cuDNN reads its tile from shared memory too). It
  // shares the Q buffer's life, as tile_slot does. Its address is tile_slot's plus a constant:
  // a pointer of its own, live across the key-block loop, cost the loop a uniform register
  // (ptxas then recomputed the K / V base every iteration and rescheduled the loop).
  auto tile_info = [&](int qs) { return tile_slot + (C::kTileInfoOffset - C::kTileSlotOffset) + qs * kTileHandoffBytes; };
  const bool dynamic = tile_counter != nullptr;

  // Query blocks per head (dense only) and tiles, computed by each role after its setmaxnreg;
  // the producer recomputes m_blocks where it needs it (with the dynamic schedule's state, one
  // more value held in its 24 registers across the tile was spilled at d = 64).
  auto m_blocks_of = [&] { return ((p.seqlen_q << pack_shift<kPackGqa>(p)) + BM - 1) / BM; };
  auto tile_total = [&] {
    return list.pairs != nullptr ? *list.count * p.heads_q
                                 : (m_blocks_of() * (p.heads_q >> pack_shift<kPackGqa>(p)) * p.batch) << split_shift<kPackGqa>(p);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warpgroup = warp / 4;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kQStages; ++s) {
      mbarrier_init(&q_full[s], 1);
      // Lane 0 of each consumer warp; with the store warp, the store warp alone.
      mbarrier_init(&q_empty[s], store_warp_o ? 1 : 4 * kWarpgroups);
      mbarrier_init(&o_full[s], 4 * kWarpgroups);
    }
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&k_full[s], 1);
      mbarrier_init(&v_full[s], 1);
      mbarrier_init(&k_empty[s], 4 * kWarpgroups);
      mbarrier_init(&v_empty[s], 4 * kWarpgroups);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ---------------------------------------------------------------- producer
    setmaxnreg_dec<C::kProducerRegs>();
    if (warp == 0 && lane == 0) {
      const int tiles = tile_total();
      int loaded = 0;  // K / V blocks issued so far (all tiles)
      int index = dynamic ? dynamic_tile<kPackGqa>(p, list, blockIdx.x, m_blocks_of(), tiles) : blockIdx.x;
      for (int tile_count = 0;; ++tile_count) {
        // Q buffer qs (and its tile slot) is free once both consumer warpgroups are done with
        // tile tile_count - kQStages.
        const int qs = tile_count % kQStages;
        if (dynamic) {
          // The slot first, so that `index` is not held through tile_at (24 registers).
          if (tile_count >= kQStages) mbarrier_wait(&q_empty[qs], ((tile_count / kQStages) & 1) ^ 1);
          st_shared_b32(tile_slot + 4 * qs, index);
          if (unsigned(index) >= unsigned(tiles)) {  // the sentinel: the consumers stop here too
            mbarrier_arrive(&q_full[qs]);
            break;
          }
        } else if (unsigned(index) >= unsigned(tiles)) {
          break;
        }
        const Tile w = tile_at<kPackGqa>(p, list, index, m_blocks_of(), BM, BN);
        const int hk = w.h / p.group;
        // load_key_block's two coordinates (paged: the sequence and its key count).
        const int key0 = kPaged ? w.b : w.k_row, key_batch = kPaged ? w.seq.sk : w.tma_b;
        if (!dynamic && tile_count >= kQStages) mbarrier_wait(&q_empty[qs], ((tile_count / kQStages) & 1) ^ 1);
        // The decoded tile for the consumers (published by the q_full arrival below).
        TileHandoff::store(tile_info(qs), w);
        mbarrier_arrive_expect_tx(&q_full[qs], C::kQBytes);
#pragma unroll
        for (int c = 0; c < C::kChunks; ++c)
          // Packed GQA: the q map is (D, H, S, B) with a box of q_pack heads x BM / q_pack tokens,
          // so the box's rows come (token, head) in the tile's row order.
          tma_load_4d(reinterpret_cast<unsigned char*>(sQ) + qs * C::kQBytes + c * C::kQChunkBytes, &tma_q, 64 * c,
                      kPackGqa ? w.h : w.q_row, kPackGqa ? w.q_row : w.h, w.tma_b, &q_full[qs]);
        for (int nb = w.kb_end - 1; nb >= w.kb_begin; --nb, ++loaded) {
          const int stage = loaded % kStages;
          // The consumers' release of this stage's previous use (block loaded - kStages).
          const uint32_t empty_parity = ((loaded / kStages) & 1) ^ 1;
          unsigned char* k_dst = reinterpret_cast<unsigned char*>(sK) + stage * C::kKVBytes;
          unsigned char* v_dst = reinterpret_cast<unsigned char*>(sV) + stage * C::kKVBytes;
          if (loaded >= kStages) mbarrier_wait(&k_empty[stage], empty_parity);
          mbarrier_arrive_expect_tx(&k_full[stage], C::kKVBytes);
          load_key_block<kPaged, BN, C::kChunks, C::kKVChunkBytes>(k_dst, &tma_k, p, key0, key_batch, nb, hk,
                                                                   &k_full[stage]);
          if (loaded >= kStages) mbarrier_wait(&v_empty[stage], empty_parity);
          mbarrier_arrive_expect_tx(&v_full[stage], C::kKVBytes);
          load_key_block<kPaged, BN, C::kChunks, C::kKVChunkBytes>(v_dst, &tma_v, p, key0, key_batch, nb, hk,
                                                                   &v_full[stage]);
        }
        // Dynamic: the last takes reach tiles + gridDim.x - 1 < 2^31 + 132, so the sentinel may
        // wrap to a negative int: both sides compare it unsigned. Static: the next index from
        // tile_count, so that `index` is not held across the tile either.
        if (dynamic) {
          const int position = int(gridDim.x + unsigned(atom_relaxed_gpu_add(tile_counter, 1)));
          index = dynamic_tile<kPackGqa>(p, list, position, m_blocks_of(), tiles);
        } else {
          index = int(blockIdx.x + (tile_count + 1) * gridDim.x);
        }
      }
    } else if (store_warp_o && warp == 1 && lane == 0) {
      // The store warp: Q buffer after Q buffer, in the consumers' order, until the end mark.
      for (int tile_count = 0;; ++tile_count) {
        const int qs = tile_count % kQStages;
        mbarrier_wait(&o_full[qs], (tile_count / kQStages) & 1);
        const uint32_t coords = o_coords + 12 * qs;
        const int q_row = int(ld_shared_b32(coords));
        if (q_row < 0) break;
        const int h = int(ld_shared_b32(coords + 4)), b = int(ld_shared_b32(coords + 8));
        const unsigned char* tile = reinterpret_cast<const unsigned char*>(sQ) + qs * C::kQBytes;
#pragma unroll
        for (int cw = 0; cw < kWarpgroups; ++cw) store_o_boxes<C::kChunks, C::kQChunkBytes>(&tma_o, tile, cw, q_row, h, b);
        bulk_commit_group();
        bulk_wait_group_read<0>();  // the buffer may take the next Q
        mbarrier_arrive(&q_empty[qs]);
      }
      bulk_wait_group<0>();  // the stores complete before the CTA ends
    }
  } else {
    // ---------------------------------------------------------------- consumers
    setmaxnreg_inc<C::kConsumerRegs>();
    const int m_blocks = m_blocks_of(), tiles = tile_total();
    const int cw = warpgroup_index_uniform() - 1, wq = warp % 4, g = lane / 4, t = lane % 4;
    const float scale_log2 = p.scale_log2, tau = p.rescale_tau;
    const uint32_t q_base = smem_u32(sQ) + cw * 64 * 128;  // this warpgroup's 64 rows
    const uint32_t k_addr = smem_u32(sK), v_addr = smem_u32(sV);
    uint32_t q_addr = q_base;
    auto issue_qk = [&](float (&s)[BN / 2], int stage) {
      // Q's and K's descriptors are stepped from one base each (desc_advance). d = 256: Q's
      // base is made opaque here, so the compiler rebuilds its 16 descriptors with an add each
      // instead of holding all 16 (32 registers) across the loop (ptxas spilled them with
      // softcap).
      uint64_t q_desc = smem_descriptor(q_addr, 16, 1024);
      if constexpr (D == 256) asm volatile("" : "+l"(q_desc));
      const uint64_t k_desc = smem_descriptor(k_addr + stage * C::kKVBytes, 16, 1024);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < D / 16; ++k) {
        const uint32_t in_chunk = (k % 4) * 32;
        const uint64_t da = desc_advance(q_desc, (k / 4) * C::kQChunkBytes + in_chunk);
        const uint64_t db = desc_advance(k_desc, (k / 4) * C::kKVChunkBytes + in_chunk);
        if constexpr (BN == 128)
          wgmma_ss_m64n128k16<T>(s, da, db, k > 0);
        else
          wgmma_ss_m64n80k16<T>(s, da, db, k > 0);
      }
      wgmma_commit_group();
    };
    auto issue_pv = [&](float (&o)[D / 2], uint32_t (&pa)[BN / 16][4], int stage) {
      const uint64_t v_desc = smem_descriptor(v_addr + stage * C::kKVBytes, C::kKVChunkBytes, 1024);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < BN / 16; ++k) {
        const uint64_t db = desc_advance(v_desc, k * 16 * 128);
        // N = D: the D / 64 chunks of V are LBO = kKVChunkBytes apart.
        if constexpr (D == 256)
          wgmma_rs_m64n256k16<T>(o, pa[k], db, 1);
        else if constexpr (D == 128)
          wgmma_rs_m64n128k16<T>(o, pa[k], db, 1);
        else
          wgmma_rs_m64n64k16<T>(o, pa[k], db, 1);
      }
      wgmma_commit_group();
    };
    auto release = [&](uint64_t* bar) {
      if (lane == 0) mbarrier_arrive(bar);
    };

    // Pingpong (FA3): the two consumer warpgroups take turns issuing their wgmma batches
    // (named barriers 1 and 2: "warpgroup cw may issue"), so one's softmax runs while the
    // other's GEMMs hold the tensor cores. Warpgroup 1 lets warpgroup 0 go first.
    auto gemm_turn_begin = [&] {
      if (pingpong) named_barrier_sync(1 + cw, 256);
    };
    auto gemm_turn_end = [&] {
      if (pingpong) named_barrier_arrive(1 + (cw ^ 1), 256);
    };
    if (pingpong && cw == 1) named_barrier_arrive(1, 256);

    int consumed = 0;  // K / V blocks consumed so far (all tiles)
    int index = blockIdx.x;
    for (int tile_count = 0;; ++tile_count, index += gridDim.x) {
      const int qs = tile_count % kQStages;
      if (dynamic) {
        // The tile of Q buffer qs.
        mbarrier_wait(&q_full[qs], (tile_count / kQStages) & 1);
        index = __shfl_sync(0xffffffffu, lane == 0 ? ld_shared_b32(tile_slot + 4 * qs) : 0, 0);
      }
      if (unsigned(index) >= unsigned(tiles)) {
        if (store_warp_o) {
          // The end mark for the store warp, in the Q buffer it looks at next, once it is done
          // with that buffer's last tile (without a schedule to wait on, the static consumers
          // could otherwise complete o_full's next phase before it saw the last one).
          if (tile_count >= kQStages) mbarrier_wait(&q_empty[qs], ((tile_count / kQStages) & 1) ^ 1);
          if (threadIdx.x == 128) st_shared_b32(o_coords + 12 * qs, -1);
          __syncwarp();
          release(&o_full[qs]);
        }
        break;
      }
      // The producer's decoded tile, once its Q buffer is full (the static schedule waits here,
      // the dynamic one waited above). Every lane reads it at once; the warp's lane 0
      // releases the buffer (q_empty) only after the tile's last S, past these reads' uses.
      if (!dynamic) mbarrier_wait(&q_full[qs], (tile_count / kQStages) & 1);
      const Tile w = TileHandoff::load(tile_info(qs));
      const int wg_row0 = w.m0 + 64 * cw;
      // This thread's two rows: their queries (packed GQA: token row / q_pack of head
      // w.h + row % q_pack; otherwise the row itself, of head w.h).
      const int shift = pack_shift<kPackGqa>(p);
      const int row[2] = {(wg_row0 + 16 * wq + g) >> shift, (wg_row0 + 16 * wq + g + 8) >> shift};
      const cuda::KeyInterval keys[2] = {cuda::visible_keys(p, row[0], w.seq), cuda::visible_keys(p, row[1], w.seq)};
      const int key_lo[2] = {keys[0].lo, keys[1].lo}, key_end[2] = {keys[0].hi, keys[1].hi};
      // Blocks inside every row's [lo, hi) need no per-element mask: both bounds grow with
      // the row, so the first row's hi and the last row's lo bound them all.
      const int unmasked_end = cuda::visible_keys(p, wg_row0 >> shift, w.seq).hi;
      const int unmasked_begin = cuda::visible_keys(p, (wg_row0 + 63) >> shift, w.seq).lo;
      const int n_blocks = w.kb_end - w.kb_begin;

      float o[D / 2];
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
      float s[BN / 2];
      uint32_t pa[BN / 16][4];
      SoftmaxRows rows;

      auto softmax = [&](int nb, float (&factor)[2]) {
        const int n0 = nb * BN;
        const bool mask_lo = n0 < unmasked_begin;
        const bool masked = n0 + BN > unmasked_end || mask_lo;
        const Softcap cap{p.softcap_log2, p.softcap_inv_scale};  // read only with SOFTCAP
        if (emulate_exp2)
          softmax_block<true, SOFTCAP, BN>(s, masked, mask_lo, n0, t, key_lo, key_end, scale_log2, cap, tau, rows, factor);
        else
          softmax_block<false, SOFTCAP, BN>(s, masked, mask_lo, n0, t, key_lo, key_end, scale_log2, cap, tau, rows, factor);
      };

      q_addr = q_base + qs * C::kQBytes;
      if (n_blocks > 0) {
        // Block it = 0 (key block kb_end - 1): S, softmax, P.
        float factor[2];
        const int stage0 = consumed % kStages;
        mbarrier_wait(&k_full[stage0], (consumed / kStages) & 1);
        gemm_turn_begin();
        issue_qk(s, stage0);
        gemm_turn_end();
        wgmma_wait_group<0>();
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) fence_operand(s[i]);
        release(&k_empty[stage0]);
        if (kEarlyQRelease && n_blocks == 1) release(&q_empty[qs]);
        softmax(w.kb_end - 1, factor);  // O is still zero: its factor does not matter
        scores_to_a<T, BN>(pa, s);
        // Varlen: the first block (the highest) may run past the sequence's keys into the
        // next sequence's rows; with seqused_k (paged KV always has it), into the sequence's
        // own rows past the keys it uses (a cache's unwritten slots: anything, NaN included).
        // Zero those V rows before the first P V reads them, as P = 0 there but 0 * NaN is
        // not 0 (both warpgroups read the whole stage: split the stores, fence, then barrier
        // 3). Dense rows past Sk are TMA zeros already.
        const int first_n0 = (w.kb_end - 1) * BN;
        if ((p.cu_seqlens_k != nullptr || p.seqused_k != nullptr) && first_n0 + BN > w.seq.sk) {
          mbarrier_wait(&v_full[stage0], (consumed / kStages) & 1);
          zero_tile_rows(reinterpret_cast<unsigned char*>(sV) + stage0 * C::kKVBytes, C::kKVChunkBytes, C::kChunks,
                         w.seq.sk - first_n0, BN, threadIdx.x - 128, C::kConsumerThreads);
          fence_proxy_async();
          named_barrier_sync(3, C::kConsumerThreads);
        }

        for (int it = 1; it < n_blocks; ++it) {
          const int cur = consumed + it, prv = cur - 1;
          const int stage = cur % kStages, prev = prv % kStages;
          mbarrier_wait(&k_full[stage], (cur / kStages) & 1);
          mbarrier_wait(&v_full[prev], (prv / kStages) & 1);
          gemm_turn_begin();
          issue_qk(s, stage);     // S_it
          issue_pv(o, pa, prev);  // O += P_{it-1} V_{it-1}, on the tensor cores during softmax(S_it)
          gemm_turn_end();
          wgmma_wait_group<1>();  // S_it done (groups complete in order)
#pragma unroll
          for (int i = 0; i < BN / 2; ++i) fence_operand(s[i]);
          release(&k_empty[stage]);
          if constexpr (kEarlyQRelease)
            if (it == n_blocks - 1) release(&q_empty[qs]);
          softmax(w.kb_end - 1 - it, factor);
          wgmma_wait_group<0>();  // P V done: O and the P fragments are free again
#pragma unroll
          for (int i = 0; i < D / 2; ++i) fence_operand(o[i]);
#pragma unroll
          for (int k = 0; k < BN / 16; ++k)
#pragma unroll
            for (int r = 0; r < 4; ++r) fence_operand(pa[k][r]);
          release(&v_empty[prev]);
          // Conditional rescaling (FA4): most blocks keep every row's stale max.
          if (__any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < D / 8; ++i) {
              o[4 * i + 0] *= factor[0];
              o[4 * i + 1] *= factor[0];
              o[4 * i + 2] *= factor[1];
              o[4 * i + 3] *= factor[1];
            }
          }
          scores_to_a<T, BN>(pa, s);
        }
        const int last = consumed + n_blocks - 1;
        mbarrier_wait(&v_full[last % kStages], (last / kStages) & 1);
        gemm_turn_begin();
        issue_pv(o, pa, last % kStages);
        gemm_turn_end();
        wgmma_wait_group<0>();
#pragma unroll
        for (int i = 0; i < D / 2; ++i) fence_operand(o[i]);
        release(&v_empty[last % kStages]);
        consumed += n_blocks;
      }
      // Every S = Q K^T of this tile is done; with the TMA store of O the buffer is released
      // once the store has read the O written into it (below).
      if ((!kEarlyQRelease || n_blocks == 0) && !tma_store_o) release(&q_empty[qs]);

      // Finish: O / l, lse = (m + log2 l) ln 2; a row with no visible key: O = 0, lse = -inf.
      // The sink x_s = sink_h log2 e joins l only: m' = max(m, x_s), l' = l 2^(m - m') +
      // 2^(x_s - m'), O scaled by 2^(m - m') / l'; a row with no visible key then has m = -inf,
      // l' = 1, O = 0 and lse = sink_h (flash4.h).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int h = w.h + ((wg_row0 + 16 * wq + g + 8 * half) & ((1 << shift) - 1));  // this row's query head
        float l = quad_sum(rows.sum[half]);
        float m = rows.max[half].m, f = 1.0f;
        if constexpr (kPackGqa) {
          // Split-KV: this run's O / l and LSE, fp32, for split_combine (the sink joins there).
          if (p.num_splits > 1) {
            const int i = row[half];
            if (i < w.seq.sq) {
              const int64_t slot = (int64_t(w.split) * p.batch + w.b) * p.heads_q + h;
              const float inv = l > 0.0f ? __fdividef(1.0f, l) : 0.0f;  // as below
              float* dst = p.o_partial + (slot * p.seqlen_q + i) * p.d_v;
#pragma unroll
              for (int n = 0; n < D / 8; ++n)
                if (8 * n < p.d_v)
                  *reinterpret_cast<float2*>(dst + 8 * n + 2 * t) =
                      make_float2(o[4 * n + 2 * half] * inv, o[4 * n + 2 * half + 1] * inv);
              if (t == 0) p.lse_partial[slot * p.seqlen_q + i] = l > 0.0f ? (m + __log2f(l)) * cuda::kLn2 : -__builtin_huge_valf();
            }
            continue;
          }
        }
        const float sink_log2 = p.sink != nullptr ? p.sink[h] * cuda::kLog2e : 0.0f;
        if (p.sink != nullptr) {
          const float m_new = fmaxf(m, sink_log2);
          f = cuda::exp2_hardware(m - m_new);  // m = -inf: 0
          l = l * f + cuda::exp2_hardware(sink_log2 - m_new);
          m = m_new;
        }
        // MUFU.RCP and a multiply (2 ulp; O is stored in 16 bits): `/` is IEEE division, a
        // branch to a slow-path subroutine and its convergence barrier in every tile's epilogue.
        // l <= the number of keys, far below where __fdividef returns 0 (2^126).
        const float inv = l > 0.0f ? __fdividef(f, l) : 0.0f;
        const int i = row[half];
        const bool keep = i < w.seq.sq;  // the whole quad agrees (one row); store_o_row shuffles
        uint32_t packed[D / 8];
#pragma unroll
        for (int n = 0; n < D / 8; ++n) packed[n] = cuda::pack2<T>(o[4 * n + 2 * half] * inv, o[4 * n + 2 * half + 1] * inv);
        if (tma_store_o) {
          // Row r of the tile in the Q buffer's layout (the map's 128-byte swizzle: 16-byte unit
          // u of a row at u ^ (r % 8)); a warp's 4-byte stores of one n8 tile hit 32 banks.
          unsigned char* tile = reinterpret_cast<unsigned char*>(sQ) + qs * C::kQBytes;
          const int r = 64 * cw + 16 * wq + g + 8 * half;
#pragma unroll
          for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<uint32_t*>(tile + (n / 8) * C::kQChunkBytes + r * 128 + (((n % 8) ^ (r & 7)) << 4) + 4 * t) =
                packed[n];
        } else {
          store_o_row<D>(keep ? cuda::query_row<T>(p.out, w.seq, i, h) : nullptr, packed, t, keep, p.d_v);
        }
        if (!keep) continue;
        if (p.lse != nullptr && t == 0)
          p.lse[w.seq.q_start * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + int64_t(i) * p.lse_row_stride] =
              l > 0.0f ? (m + __log2f(l)) * cuda::kLn2 : -__builtin_huge_valf();
      }
      if (tma_store_o) {
        // The warpgroup's 64 rows are in its half of the Q buffer: fence them for the async
        // proxy (each thread its own stores).
        fence_proxy_async();
        if (store_warp_o) {
          // The store warp stores them: the first consumer thread leaves the tile's
          // coordinates, each warp's lane 0 arrives once the warp's lanes have fenced
          // (__syncwarp orders their stores and fences before the arrive).
          if (threadIdx.x == 128) {
            st_shared_b32(o_coords + 12 * qs, w.q_row);
            st_shared_b32(o_coords + 12 * qs + 4, w.h);
            st_shared_b32(o_coords + 12 * qs + 8, w.tma_b);
          }
          __syncwarp();
          release(&o_full[qs]);
        } else {
          // Meet (barrier 4 + cw, this warpgroup's 128 threads), one thread stores them and
          // waits until the boxes are read; the second meeting lets every warp release the
          // buffer to the producer after that.
          named_barrier_sync(4 + cw, 128);
          if (threadIdx.x % 128 == 0) {
            store_o_boxes<C::kChunks, C::kQChunkBytes>(
                &tma_o, reinterpret_cast<const unsigned char*>(sQ) + qs * C::kQBytes, cw, w.q_row, w.h, w.tma_b);
            bulk_commit_group();
            bulk_wait_group_read<0>();
          }
          named_barrier_sync(4 + cw, 128);
          release(&q_empty[qs]);
        }
      }
    }
    // The last TMA stores of O complete before the CTA ends.
    if (tma_store_o && !store_warp_o && threadIdx.x % 128 == 0) bulk_wait_group<0>();
    // Warpgroup 1's last turn_end arrived on warpgroup 0's barrier: consume it, so no
    // barrier is left half-complete at exit.
    if (pingpong && cw == 0) named_barrier_sync(1, 256);
  }
#else
  __trap();  // built without sm_90a code: the host never launches this (hopper.cpp checks)
#endif
}

}  // namespace flash4::hopper
