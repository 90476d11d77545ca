// Hopper (sm90a) backward kernel, FlashAttention-3 style. On by default for the calls it
// covers; FLASH4_HOPPER_BWD=0 turns it off (api.cpp). scripts/hopper_bwd_check.sh checks it.
//
// One CTA per (key block of BN = 128 keys, KV head, sequence); it loops over every query
// head of the KV head's GQA group and every query block of BM = 64 rows that sees its
// keys (so dK / dV are summed over the group inside the CTA, in a fixed order):
//  - warpgroup 0, the producer: one thread TMA-loads K and V once, then streams Q, dO and
//    the rows' lse (log2 units) and D = rowsum(dO o O) through a ring of kStages (d 64: 3,
//    d 128: 2; "full" mbarrier: the bytes landed; "empty": both consumer warpgroups are done
//    with it);
//  - warpgroups 1 and 2, the consumers: warpgroup w owns keys 64 w .. 64 w + 63 of the block
//    and keeps dV and dK for them in registers. Per query block, transposed (keys are the
//    wgmma M, so the results are already laid out as the A operand of dV / dK):
//      S^T  = K_w Q^T              wgmma SS, both K-major (as the forward's Q K^T)
//      dP^T = V_w dO^T             wgmma SS, both K-major
//      P^T  = 2^(S^T scale log2e - lse2[query]),  dS^T = P^T o (dP^T - D[query])
//      dV  += P^T dO               wgmma RS: P^T from registers, dO MN-major (as the forward's P V)
//      dK  += dS^T Q               wgmma RS: dS^T from registers, Q MN-major
//      dQ   = dS K                 dS^T goes to shared memory (16-bit, 128B-swizzled) and is
//                                  read back as an MN-major A operand; K MN-major.
//    (d = 128 issues dK after dQ, and hands dQ over while dK's wgmma runs.)
//    d = 128: warpgroup w computes dQ's columns 64 w .. 64 w + 63 over all 128 keys (both
//    warpgroups' dS^T: a named barrier between them); d = 64: warpgroup w computes the
//    part of dQ that its own 64 keys contribute (no barrier, twice the atomics).
//    dQ is added to an fp32 buffer [token][Hq][d] with float2 atomics; the portable
//    backward's finish kernel scales and converts it. Or, FLASH4_HOPPER_DQ=bulk
//    (DqAdd::bulk, a template argument: the atomic kernels are unchanged, the same SASS):
//    the consumers stage their dQ fp32 tiles in shared memory (dq_stage_tile, two buffers)
//    and warp 1 of the producer warpgroup, the dQ writer, adds them with one bulk tensor
//    reduce-add per 64 x 32 chunk through a tensor map of dq_accum (the layout unchanged:
//    the tensor form takes the [token][Hq][d] strides, where the non-tensor form would need
//    one op per row or a layout of our own with its own finish kernel); see the writer.
//    FLASH4_HOPPER_DQ=per_warpgroup (DqAdd::bulk_per_warpgroup, non-deterministic calls; written
//    without a GPU, scripts/hopper_dq_warpgroup_check.sh): the writer hands each consumer
//    warpgroup its buffers on barriers of its own instead of both at once. DqAdd::flat (the
//    default where it applies since scripts/hopper_dq_flat_check.sh and, at d 256,
//    scripts/hopper_d256_flat_check.sh passed on an H200, 2026-12-02): the same hand-over, each
//    warpgroup's tile stored thread-major and added by one 1-D bulk reduce-add into dq_accum in
//    a layout of its own (backward_sm90.hpp), converted by backward_sm90_dq_flat_finish.
// dK = scale dS^T Q and dV are written from registers at the end (rows past Sk skipped).
//
// The per-row inputs come from backward_sm90_rows_kernel: lse2 = lse log2 e (+inf for a
// row with no visible key and for rows of no sequence, so P = 0 there) and D, laid out
// [Hq][row pitch] by the workspace token (dense: b Sq + i; packed: the token), with room
// after the last token so that a block's rows always come in one bulk copy of BM + 4
// floats from the 16-byte boundary at or below its first row (kRowFloats).
//
// Sink (options.sink): the forward's lse already holds the sink's exp(sink_h) in its sum,
// so P = 2^(S scale log2e - lse2) is the sink-aware probability and dS = P o (dP - D)
// holds as it is: this kernel does not change. A row that sees no key has lse = sink_h and
// P = 0 for every key. dsink_h = -sum_i exp(sink_h - lse_i) D_i: the rows kernel writes each
// row's term, the portable finish (cuda::backward_finish) sums them per head in a fixed
// order (deterministic).
//
// Varlen (cu_seqlens): one CTA per (pair of the work list, KV head): the list
// (varlen_tiles.hpp) holds only the key blocks that exist, the heaviest (most query blocks)
// first. The tensor maps cover the packed token axis; a box past its sequence's end reads
// the next sequence's rows: P^T and dS^T are masked there (as past Sq / Sk), the dQ atomics
// and dK / dV stores skip those rows, and the K rows (dQ = dS K) and the Q / dO rows (dK, dV)
// are zeroed in shared memory first, so that a non-finite neighbour cannot leak in as
// 0 * inf. dQ accumulates per token ([token][Hq][d]), so sequences never share a row.
//
// Deterministic dQ (flash4_backward_args.deterministic: attention_backward_sm90_kernel<D, T,
// true>): the same kernel, but the dQ tiles a query block receives are added in one fixed
// order, so the fp32 sums -- and dq -- are the same bits on every run (dK / dV already are:
// each CTA sums them alone, in a fixed order). FlashAttention-3's semaphore scheme:
//  - Order. The key blocks that see query block m of a sequence form an interval F .. L:
//    each row sees an interval of keys whose ends grow with the row, consecutive rows'
//    intervals touch, so their union has no gap; L holds the last row's last visible key
//    (key_blocks_above). They add their tiles from L down to F. The two consumer
//    warpgroups of a key block add disjoint parts: d = 128 a column half each; d = 64 their
//    partial sums (each over its own 64 keys) are first summed through shared memory
//    (dq_combine_halves), then each adds half the columns.
//  - Counts. counts[h][slot of (b, m)] (dq_order_slots) = key blocks whose tile is in. Key
//    block n may add once count >= L - n. Warp 1 of the producer warpgroup, the order warp,
//    walks the CTA's steps: its lane 0 spins on an acquire load of the step's count; the
//    warp arrives at named barrier 8 ("ready"), where the consumers wait before their adds;
//    the consumers arrive at barrier 7 ("done") once their adds are issued, where the order
//    warp waits; then lane 0 adds 1 to the count with a release (a fence.acq_rel, which
//    also makes the next step's count, loaded early, an acquire). In the PTX memory model a
//    bar.arrive / bar.sync synchronizes with the bar.sync that completes the barrier, and
//    release / acquire patterns are cumulative, so the acquire reaches the consumers' adds
//    and the release covers them: the pattern of cooperative groups' grid sync (a CTA
//    barrier, then one thread's gpu-scope fence and atomic).
//    The consumers' float2 reductions are unchanged; with one writer at a time the sums are
//    formed in one order. The waits on global memory and the release's fence sit in the
//    order warp, so they overlap the consumers' next step.
//  - No deadlock. A CTA waits only for the key blocks above its own, of its own sequence and
//    KV head. The CTAs take their tiles from a ticket (an atomicAdd when they start) in an
//    order where those come first: dense, ticket t -> key block nblocks - 1 - t % nblocks of
//    (KV head, sequence) t / nblocks; varlen, a work list holding each sequence's key blocks
//    from the last to the first (TileKind::key_blocks_in_dq_order). So every CTA a CTA waits
//    for holds a smaller ticket: it has started, holds its SM until it ends, and is running
//    or done. The unfinished CTA with the smallest ticket waits only for finished CTAs, so
//    it finishes; by induction every CTA does. (FA3 relies on the hardware starting CTAs in
//    blockIdx order, which CUDA does not promise; the ticket does not need it.) Inside a
//    CTA: the order warp arrives at "ready" for step s + 1 only after "done" of step s has
//    completed, and the consumers arrive at "done" for step s + 1 only after "ready" of
//    step s + 1, so no barrier instance counts an arrival of another step; the consumers'
//    adds of step s wait for nothing but the order warp's arrive (the other CTAs' counts).
//  - Why from L down. Under a causal mask key block n first sees query block 2n (64-row
//    blocks, 128 keys), and the block that reaches query block m first is L(m). Counting
//    from L, a CTA waits for CTAs that started no later than it did and reach each query
//    block two steps earlier in their walk (without a mask, at the same step: a lag of one
//    count round trip per key block); counting up from F would hold key block n until key
//    block 0 had walked 2n query blocks (half the SMs idle under causal).
//
// Covered: dense (B, S, H, D) and packed (T, H, D) tensors (any 16-byte-multiple strides:
// the column blocks of a fused qkv buffer too), bf16 / fp16, d_qk and d_v multiples of 8 up
// to 128 (the d 64 or 128 kernel, TMA zero-filling the columns past them, dK / dV stored and
// dQ added to d_qk / d_v columns only: padded_head_dim in host.hpp; passed
// scripts/hopper_padded_dims_check.sh on an H200, 2026-12-01), GQA / MQA, causal (bottom-right) or not, sliding window (left / right: a CTA visits only
// the query blocks that see its keys), atomic or deterministic dQ (bit-identical runs; both
// passed on an H200). dQ by bulk reduce-add (the default; FLASH4_HOPPER_DQ=atomics: float2
// atomics): passed scripts/hopper_dq_check.sh on an H200.
// Sink logits and dsink (see "Sink" above) and softcap (P and dS from th = tanh(s scale / c),
// in the consumers' step): passed scripts/hopper_bwd_sink_check.sh on an H200 (2026-12-01).
// seqused_k (keys are masked by Sequence::sk, the K rows past it zeroed, dK / dV rows past it
// written as zeros): passed scripts/hopper_seqused_check.sh on an H200 (2026-12-01). The
// per-warpgroup dQ hand-over (DqAdd::bulk_per_warpgroup, non-deterministic default): passed
// scripts/hopper_dq_warpgroup_check.sh there. d = 64 at BM = 128 (BackwardSm90Config<64, 128>):
// passed scripts/hopper_bwd_wide_check.sh on an H200 (2026-12-01; 1.04 - 1.20x BM = 64), the
// default at d = 64 but for varlen without determinism (FLASH4_HOPPER_BWD_BM=64 | 128
// forces). Missing (follow-ups): overlap of one query block's S / dP with the previous one's
// gradients (a d = 64 try in pairs of steps was 13% slower), persistent scheduling (tried on
// an H200, 2026-12-03: docs/experiments/2026-12-03-hopper-bwd-persistent.patch, 1.04 / 1.02 /
// 1.03x one CTA a tile of the same kernel, but 1.00 / 1.00 / 0.99x this kernel: the tile loop
// moved the consumers' step loops), native (unpadded) d 96 tiles. d over 128 (padded to 256): the
// kSplitHeadDim kernel (BackwardSm90Config; docs/hopper_backward_d256.md), the default since
// scripts/hopper_bwd_d256_check.sh passed on an H200 (2026-12-02: 1.28x the portable backward)
// but for deterministic calls over short sequences (host.hpp's backward_kernel_dim).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <climits>
#include <type_traits>

#include "cuda/fa4_softmax.cuh"
#include "cuda/params.hpp"
#include "cuda/ptx.cuh"
#include "cuda/sequence.cuh"
#include "hopper/backward_sm90.hpp"
#include "hopper/blocks.cuh"
#include "hopper/forward_sm90.cuh"  // scores_to_a: accumulator -> A fragment, as in P V
#include "hopper/mask_bounds.hpp"
#include "hopper/ptx_sm90.cuh"
#include "hopper/ptx_sm90_wgmma_split.cuh"
#include "hopper/varlen_tiles.hpp"

namespace flash4::hopper {

// BM = 128 (d = 64 only; the default there, see backward_sm90_host.cpp): FA3's
// 128 x 128 tile at d = 64. S^T / dP^T are m64n128 (each warpgroup its 64 keys x all 128
// queries), dS^T [128 keys][128 queries] is two 64-query column chunks, and warpgroup w
// computes dQ for queries 64 w .. 64 w + 63 over all 128 keys (as d = 128 splits columns), so
// its dQ tile is whole: no partial sums, no deterministic combine. Shared memory: one dQ
// staging buffer (the second does not fit beside two dS^T buffers and two Q / dO stages).
// d = 256 (kSplitHeadDim; docs/hopper_backward_d256.md; FLASH4_HOPPER_BWD_D256=0 opts out):
// 64 keys per CTA, both consumer warpgroups on the same keys, each keeping dK / dV for half
// the head dim (128 columns: 64 + 64 registers); S^T and dP^T computed by both in full
// (duplicated, no exchange); dQ's columns split the same way, in two 64-column chunks a
// warpgroup. K, V 64 KB, Q / dO 2 stages 128 KB, dS^T 16 KB = 208 KB of the 227 leave room for
// one 16 KB staging buffer: not deterministic, the warpgroups fill it in turn with their chunks
// in the flat layout (DqAdd::flat, the default since scripts/hopper_d256_flat_check.sh on an
// H200, 2026-12-02: 1.154x the atomics); deterministic, float2 atomics in the order.
template <int D, int BM = 64>
struct BackwardSm90Config {
  static constexpr bool kSplitHeadDim = D == 256;
  static constexpr int kBlockM = BM;   // query rows per step (the wgmma N of S^T / dP^T)
  // Keys per CTA: two consumer warpgroups of 64 (d 256: both on the same 64).
  static constexpr int kBlockN = kSplitHeadDim ? 64 : 128;
  // dK / dV columns a consumer warpgroup keeps (d 256: its half of the head dim).
  static constexpr int kKeyCols = kSplitHeadDim ? D / 2 : D;
  // The first of consumer warpgroup w's 64 keys in the block (d 256: both hold keys 0 .. 63).
  static constexpr int first_key(int w) { return kSplitHeadDim ? 0 : 64 * w; }
  // Q / dO / rows ring. d = 64: 3 stages, its steps (~0.7 us of wgmma at peak) being shorter
  // than a TMA load's latency; d = 128 has no room for a third (see the bulk dQ note).
  static constexpr int kStages = D == 64 && BM == 64 ? 3 : 2;
  static constexpr int kThreads = 384;
  static constexpr int kChunks = D / 64;  // 128-byte swizzle blocks along the head dim
  static constexpr uint32_t kQChunkBytes = kBlockM * 128, kKChunkBytes = kBlockN * 128;
  static constexpr uint32_t kQBytes = kBlockM * D * 2;  // one stage of Q (or of dO)
  static constexpr uint32_t kKBytes = kBlockN * D * 2;  // K (or V)
  // lse2 then D of one stage, each BM rows plus up to 3 before them (the copy starts at the
  // 16-byte boundary at or below the block's first row).
  static constexpr int kRowFloats = kBlockM + 4;
  static constexpr uint32_t kRowsBytes = 2 * kRowFloats * 4;
  static constexpr uint32_t kDsBytes = kBlockN * kBlockM * 2;  // dS^T [keys][BM queries]
  static constexpr uint32_t kDsChunkBytes = kBlockN * 128;     // its 64-query column chunks
  static constexpr uint32_t kStepTxBytes = 2 * kQBytes + kRowsBytes;
  // Shared memory, every tile 1024-byte aligned (the swizzle atom): K, V, Q[stages],
  // dO[stages], dS^T[2], rows[stages], barriers; 1024 bytes of slack for the alignment.
  static constexpr uint32_t kOffK = 0, kOffV = kKBytes, kOffQ = 2 * kKBytes;
  static constexpr uint32_t kOffO = kOffQ + kStages * kQBytes;
  static constexpr uint32_t kOffDs = kOffO + kStages * kQBytes;
  static constexpr uint32_t kOffRows = kOffDs + 2 * kDsBytes;
  static constexpr uint32_t kOffBars = kOffRows + kStages * kRowsBytes;
  static constexpr int kBarriers = 1 + 2 * kStages;  // kv_full, q_full[], q_empty[]
  static constexpr size_t kSmemBytes = 1024 + kOffBars + 8 * kBarriers;
  // Deterministic dQ, d = 64: two buffers (step parity) of float2 [2 warpgroups][8][128
  // threads] for dq_combine_halves, after the barriers (the atomic kernel has none).
  static constexpr uint32_t kOffSwap = (kOffBars + 8 * kBarriers + 15) / 16 * 16;
  static constexpr uint32_t kSwapBytes = D == 64 && BM == 64 ? 2 * 2 * 8 * 128 * 8 : 0;
  static constexpr size_t kSmemBytesDeterministic = 1024 + kOffSwap + kSwapBytes;
  // Bulk dQ (DqAdd::bulk, see dq_stage_tile): the staged dQ tiles, [2 buffers (step parity)]
  // [2 warpgroups][2 chunks][64 rows][32 fp32 columns] (each chunk a TMA box, 128B-swizzled,
  // 1024-aligned), take the place of rows / barriers / swap, which move up by kBulkShift.
  //   d = 128: 2 x 2 x 2 x 8 KB = 64 KB (two full 64 x 128 fp32 tiles). Atomic layout 165,992
  //   bytes (K, V 2 x 32 KB, Q and dO 2 x 2 x 16 KB, dS^T 2 x 16 KB = 163,840, rows 1,088,
  //   barriers 40, slack 1,024) + 65,536 = 231,528 <= 232,448 - 16 (the deterministic
  //   ticket's static int); no room for a third buffer, so double buffering is the ceiling.
  //   d = 64 (3 stages): 117,400 + 65,536 = 182,936; deterministic (+ the 32 KB swap) 215,712.
  // Two buffers so that the consumers stage step s + 1 while step s's adds still read theirs.
  // A chunk: one warpgroup's 64 query rows x 32 columns (BM = 128: each warpgroup its rows).
  static constexpr uint32_t kDqChunkBytes = 64 * 32 * 4;
  static constexpr uint32_t kDqBufferBytes = 2 * 2 * kDqChunkBytes;
  static constexpr int kDqBuffers = BM == 64 ? 2 : 1;
  static constexpr uint32_t kOffDqStage = kOffDs + 2 * kDsBytes;
  // d 256 (DqAdd::flat only): one buffer of one flat part (64 x 64 fp32, 16 KB), which the two
  // warpgroups fill in turn, two parts each a step (the 17 KB left beside K, V, two Q / dO
  // stages and dS^T hold no more): 215,144 + 16,384 = 231,528 bytes.
  static constexpr uint32_t kBulkShift = kSplitHeadDim ? kDqFlatPartFloats * 4 : kDqBuffers * kDqBufferBytes;
  static constexpr size_t kSmemBytesBulk = kSmemBytes + kBulkShift;
  static constexpr size_t kSmemBytesDeterministicBulk = kSmemBytesDeterministic + kBulkShift;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(D == 64 || D == 128 || D == 256, "d = 64, 128 or 256");
  static_assert(BM == 64 || (BM == 128 && D == 64), "BM = 128 at d = 64 only");
  static_assert(kOffDqStage % 1024 == 0 && kDqChunkBytes % 1024 == 0, "bulk dQ chunks 1024-aligned (128B swizzle)");
  static_assert(kSmemBytesBulk <= 227 * 1024 && kSmemBytesDeterministicBulk + 16 <= 227 * 1024,
                "shared memory per block, bulk dQ");
  static_assert(kKBytes % 1024 == 0 && kQBytes % 1024 == 0 && kDsBytes % 1024 == 0, "tiles 1024-aligned");
  static_assert(kRowFloats * 4 % 16 == 0, "bulk copies: 16-byte multiples");
  static_assert(kSmemBytes <= 227 * 1024 && kSmemBytesDeterministic + 16 <= 227 * 1024, "shared memory per block");
};

// kLanes lanes per workspace row (h, token), token < row_pitch: lse2 and D (see the header
// comment); tokens of no sequence and the room after the last one get lse2 = +inf, D = 0.
// kLanes = d_v / 8 (each lane one 16-byte chunk of O and dO; the host's choice): a warp
// takes 32 / kLanes consecutive tokens of a head. One warp per row left 3/4 of its lanes
// idle at d_v = 64 and ran at ~0.7 TB/s on an H200 (ncu, 2026-12-01: 97 us a call in a
// Llama-1B training step).
// With p.dsink_rows (a sink and dsink asked for): each token's dsink term
// -exp(sink_h - lse) D at dsink_rows[h][token] ([Hq][tokens_q], no pitch: the layout the
// portable finish's fixed-order sum reads), 0 for tokens of no sequence -- the portable
// preprocess's expression (cuda/backward_rows.cu), with the natural-log lse, so both
// backends sum the same terms.
template <typename T, int kLanes>
__global__ void backward_sm90_rows_kernel(const cuda::AttentionParams p, int64_t row_pitch) {
  static_assert(kLanes == 8 || kLanes == 16 || kLanes == 32, "a power of two dividing the warp");
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes;
  const int sub = threadIdx.x % kLanes;
  // No early return: every lane of the warp takes part in the shuffles below.
  const bool exists = row < int64_t(p.heads_q) * row_pitch;
  const int h = exists ? int(row / row_pitch) : 0;
  const int64_t token = exists ? row % row_pitch : 0;
  bool in_sequence = exists && token < p.tokens_q;
  if (in_sequence && p.cu_seqlens_q != nullptr)
    in_sequence = token >= p.cu_seqlens_q[0] && token < p.cu_seqlens_q[p.batch];
  // start(b) and i of RowLayout: dense (b, i); packed (token, 0).
  const bool packed = p.cu_seqlens_q != nullptr;
  const int64_t start = packed ? token : token / p.seqlen_q, i = packed ? 0 : token % p.seqlen_q;
  float acc = 0.0f;
  if (in_sequence) {
    const T* o = static_cast<const T*>(p.out.data) + start * p.out.batch_stride + i * p.out.row_stride +
                 int64_t(h) * p.out.head_stride;
    const T* dout = static_cast<const T*>(p.dout.data) + start * p.dout.batch_stride + i * p.dout.row_stride +
                    int64_t(h) * p.dout.head_stride;
    for (int c = sub; c * 8 < p.d_v; c += kLanes) {
      const uint4 x = *reinterpret_cast<const uint4*>(o + c * 8);
      const uint4 y = *reinterpret_cast<const uint4*>(dout + c * 8);
      const uint32_t xv[4] = {x.x, x.y, x.z, x.w}, yv[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 a = cuda::unpack2<T>(xv[k]), e = cuda::unpack2<T>(yv[k]);
        acc = fmaf(a.x, e.x, acc);
        acc = fmaf(a.y, e.y, acc);
      }
    }
  }
  // Sum over the row's kLanes lanes (xor offsets below kLanes stay inside the group).
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (!exists || sub != 0) return;
  if (!in_sequence) {
    p.lse_log2[row] = __builtin_huge_valf();
    p.d_rows[row] = 0.0f;
    if (p.dsink_rows != nullptr && token < p.tokens_q) p.dsink_rows[int64_t(h) * p.tokens_q + token] = 0.0f;
    return;
  }
  const float lse = p.lse[start * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + i * p.lse_row_stride];
  p.lse_log2[row] = lse == -__builtin_huge_valf() ? __builtin_huge_valf() : lse * cuda::kLog2e;
  p.d_rows[row] = acc;
  if (p.dsink_rows != nullptr) p.dsink_rows[int64_t(h) * p.tokens_q + token] = -expf(p.sink[h] - lse) * acc;
}

// Issues warpgroup w's acc[64 keys x BM queries] = X_w Y^T as one commit group: S^T with
// (X, Y) = (K, Q), dP^T with (V, dO). M = keys 64 w .. 64 w + 63 of the [128][head dim] tile
// at x_addr (d 256: the 64 keys of the [64][256] tile, for both warpgroups), N = the BM rows
// of the [BM][head dim] tile at y_addr, K = the head dim; both K-major in 64-column chunks
// (kKChunkBytes / kQChunkBytes apart), as the forward's Q K^T: SBO 1024 between 8-row groups,
// a k16 step inside a chunk adds 32 bytes.
// N (default BM): the queries of the product; 32 in the split-query d 256 step (y_addr then
// at the warpgroup's first row of the tile).
template <int D, typename T, int BM = 64, int N = BM>
__device__ __forceinline__ void issue_scores_transposed(float (&acc)[N / 2], uint32_t x_addr, uint32_t y_addr, int w) {
  using C = BackwardSm90Config<D, BM>;
  const uint32_t own_rows = uint32_t(C::first_key(w)) * 128;
  const uint64_t da0 = smem_descriptor(x_addr + own_rows, 16, 1024), db0 = smem_descriptor(y_addr, 16, 1024);
#pragma unroll
  for (int k = 0; k < D / 16; ++k) {
    const uint32_t in_chunk = (k % 4) * 32;
    const uint64_t da = desc_advance(da0, (k / 4) * C::kKChunkBytes + in_chunk);
    const uint64_t db = desc_advance(db0, (k / 4) * C::kQChunkBytes + in_chunk);
    if constexpr (N == 128)
      wgmma_ss_m64n128k16<T>(acc, da, db, k > 0);
    else if constexpr (N == 64)
      wgmma_ss_m64n64k16<T>(acc, da, db, k > 0);
    else
      wgmma_ss_m64n32k16<T>(acc, da, db, k > 0);
  }
  wgmma_commit_group();
}

// Issues acc[64 keys x head dim] += A Y with A = P^T or dS^T from registers (a[k] = queries
// 16k .. 16k + 15) and Y = dO or Q, the [BM][head dim] tile at y_addr: MN-major, 64-column
// chunks kQChunkBytes apart (LBO), k16 steps of 16 rows = 2048 bytes (as the forward's P V).
// No commit: the caller commits dV and dK together. d 256: warpgroup w's columns
// 128 w .. 128 w + 127 of Y (its 64-column chunks 2 w and 2 w + 1).
template <int D, typename T, int BM = 64>
__device__ __forceinline__ void issue_key_gradient(float (&acc)[BackwardSm90Config<D, BM>::kKeyCols / 2],
                                                   const uint32_t (&a)[BM / 16][4], uint32_t y_addr, int w) {
  using C = BackwardSm90Config<D, BM>;
  if constexpr (C::kSplitHeadDim) y_addr += uint32_t(2 * w) * C::kQChunkBytes;
  const uint64_t db0 = smem_descriptor(y_addr, C::kQChunkBytes, 1024);
#pragma unroll
  for (int k = 0; k < C::kBlockM / 16; ++k) {
    const uint64_t db = desc_advance(db0, k * 16 * 128);
    if constexpr (C::kKeyCols == 128)
      wgmma_rs_m64n128k16<T>(acc, a[k], db, 1);
    else
      wgmma_rs_m64n64k16<T>(acc, a[k], db, 1);
  }
}

// dS^T (A fragments of this thread's two accumulator rows, dsa[k] = queries 16k .. 16k + 15)
// -> a [128 keys][BM queries] 16-bit tile at shared address `tile` (1024-byte aligned),
// 64-query column chunks 128 x 128 bytes apart, each in the 128B-swizzled layout TMA would
// write (row r at byte 128 r, its 16-byte unit c at unit c ^ (r % 8)), so the dQ wgmma reads it
// as an MN-major A operand. `row0` = the warp's first key row in the tile (64 w + 16 wq).
// Fragment dsa[k][2 b + half] holds rows row0 + g + 8 half, queries 8i + 2t, +1 with
// i = 2k + b: the four 8 x 8 matrices of one stmatrix.x4, matrix j = 2 b + half, whose rows
// lane l addresses (matrix l / 8, row l % 8): one stmatrix per k where there were four 32-bit
// stores (each matrix's 8 rows fill 8 distinct 16-byte units: no bank conflict). Only the
// 8-query groups kFirst .. kFirst + kCount - 1, kFirst and kCount even (d 256: both warpgroups
// hold the whole dS^T of the same keys, so each stores half of it).
template <int BM, int kFirst = 0, int kCount = BM / 8>
__device__ __forceinline__ void store_ds_transposed(uint32_t tile, const uint32_t (&dsa)[BM / 16][4], int row0,
                                                    int lane) {
  static_assert(kFirst % 2 == 0 && kCount % 2 == 0, "whole k16 slices");
  const int j = lane >> 3, r = row0 + 8 * (j & 1) + (lane & 7), b = j >> 1;
  const uint32_t row_addr = tile + r * 128;
#pragma unroll
  for (int k = kFirst / 2; k < (kFirst + kCount) / 2; ++k) {
    const int unit = 2 * (k % 4) + b;  // of the 8-query group i = 2k + b, in 64-query chunk k / 4
    stmatrix_x4(row_addr + (k / 4) * (128 * 128) + ((unit ^ (r & 7)) << 4), dsa[k]);
  }
}

// The split-query d 256 step (p.d256_split_queries): a[k] = A fragments of this warpgroup's
// queries 32 w + 16 k .. 32 w + 16 k + 15 (its 32 of the 64), stored into the [64 keys][64
// queries] 16-bit tile at `tile` as store_ds_transposed stores its 8-query groups 4 w .. 4 w + 3
// (the same 128B-swizzled layout: K-major for the dV / dK wgmmas, MN-major for dQ's).
__device__ __forceinline__ void store_half_transposed(uint32_t tile, const uint32_t (&a)[2][4], int w, int row0,
                                                      int lane) {
  const int j = lane >> 3, r = row0 + 8 * (j & 1) + (lane & 7), b = j >> 1;
  const uint32_t row_addr = tile + r * 128;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int unit = 2 * (2 * w + k) + b;  // of the 8-query group 2 (2 w + k) + b
    stmatrix_x4(row_addr + ((unit ^ (r & 7)) << 4), a[k]);
  }
}

// The split-query d 256 step's dV += P^T dO or dK += dS^T Q (no commit): A = the [64 keys][64
// queries] tile at a_tile (K-major: k16 steps of 16 queries are 32 bytes within its 128-byte
// rows), Y = dO or Q at y_addr, warpgroup w's columns 128 w .. 128 w + 127 (its chunks 2 w,
// 2 w + 1; MN-major, as issue_key_gradient's B).
template <typename T>
__device__ __forceinline__ void issue_key_gradient_from_tile(float (&acc)[64], uint32_t a_tile, uint32_t y_addr, int w) {
  using C = BackwardSm90Config<256, 64>;
  const uint64_t da0 = smem_descriptor(a_tile, 16, 1024);
  const uint64_t db0 = smem_descriptor(y_addr + uint32_t(2 * w) * C::kQChunkBytes, C::kQChunkBytes, 1024);
#pragma unroll
  for (int k = 0; k < C::kBlockM / 16; ++k)
    wgmma_ss_nt_m64n128k16<T>(acc, desc_advance(da0, 32 * k), desc_advance(db0, k * 16 * 128), 1);
}

// The step's elementwise work on a thread's accumulators of NQ queries (S^T, dP^T: element
// 4i + e is key row g + 8 (e >> 1), query column 8i + 2t + (e & 1) of those NQ; lse2 / drow
// point at the rows of the first). S^T -> P^T in place, P = 2^(s scale_log2 - lse2); softcap
// c: s -> th = tanh(s scale / c), P following with dS once dP^T is there.
template <int NQ>
__device__ __forceinline__ void scores_to_probabilities(float (&s)[NQ / 2], const float* lse2, int t,
                                                        float scale_log2, const cuda::AttentionParams& p,
                                                        bool softcap) {
  if (softcap) {
#pragma unroll
    for (int i = 0; i < NQ / 2; ++i) s[i] = softcap_tanh(s[i] * p.softcap_inv_scale);
  } else {
#pragma unroll
    for (int i = 0; i < NQ / 8; ++i) {
      const float2 l = make_float2(lse2[8 * i + 2 * t], lse2[8 * i + 2 * t + 1]);  // 4-byte aligned only
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[4 * i + e] = cuda::exp2_hardware(fmaf(s[4 * i + e], scale_log2, (e & 1) ? -l.y : -l.x));
    }
  }
}

// dP^T -> dS^T in place, dS = P (dP - D); softcap c: P = 2^(c log2(e) th - lse2) first, and
// dS = P (dP - D) (1 - th^2) (the scale is applied to dK / dQ later, as without).
template <int NQ>
__device__ __forceinline__ void probabilities_to_ds(float (&s)[NQ / 2], float (&dp)[NQ / 2], const float* lse2,
                                                    const float* drow, int t, const cuda::AttentionParams& p,
                                                    bool softcap) {
  if (softcap) {
#pragma unroll
    for (int i = 0; i < NQ / 8; ++i) {
      const float2 l = make_float2(lse2[8 * i + 2 * t], lse2[8 * i + 2 * t + 1]);
      const float2 dd = make_float2(drow[8 * i + 2 * t], drow[8 * i + 2 * t + 1]);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float th = s[4 * i + e];
        const float prob = cuda::exp2_hardware(p.softcap_log2 * th - ((e & 1) ? l.y : l.x));
        s[4 * i + e] = prob;
        dp[4 * i + e] = prob * (dp[4 * i + e] - ((e & 1) ? dd.y : dd.x)) * (1.0f - th * th);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < NQ / 8; ++i) {
      const float2 dd = make_float2(drow[8 * i + 2 * t], drow[8 * i + 2 * t + 1]);
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[4 * i + e] = s[4 * i + e] * (dp[4 * i + e] - ((e & 1) ? dd.y : dd.x));
    }
  }
}

// P = dS = 0 for the elements whose query does not see their key (rows: the thread's key rows
// g and g + 8, queries_seeing_key in mask_bounds.hpp), q0 = the query of column 0. Element
// (i, e) holds query q0 + 2t + c with c = 8i + (e & 1), a constant of the unrolled loop: with
// the bounds moved to c's side once per step (column_outside), two compares with immediates
// and two selects an element (the 64-bit form before was ~13 instructions an element, SASS of
// the d 128 kernel).
template <int NQ>
__device__ __forceinline__ void mask_outside_visible(float (&s)[NQ / 2], float (&dp)[NQ / 2],
                                                     const VisibleQueries (&rows)[2], int q0, int t) {
  const int lo[2] = {rows[0].begin - q0 - 2 * t, rows[1].begin - q0 - 2 * t};
  const int hi[2] = {rows[0].end - q0 - 2 * t, rows[1].end - q0 - 2 * t};
#pragma unroll
  for (int i = 0; i < NQ / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (column_outside(8 * i + (e & 1), lo[e >> 1], hi[e >> 1])) s[4 * i + e] = dp[4 * i + e] = 0.0f;
}

// First dQ column of warpgroup w's accumulator: d = 128 splits the columns (64 each),
// d = 64 splits the keys (each warpgroup adds the part of its own 64 keys), d = 64 at BM = 128
// the query rows (64 each, all columns).
template <int D>
__device__ __forceinline__ int dq_first_column(int w) {
  return D == 128 ? 64 * w : 0;
}

// Issues (and commits) warpgroup w's dQ wgmma: dq[64 queries x 64 columns] = dS K with
// M = queries, N = head-dim columns, K = keys. A = dS read from the dS^T tile at ds_addr
// ([keys][queries]: MN-major), B = K from the K tile at k_addr ([keys][head dim] in 64-column
// chunks of kKChunkBytes: MN-major). k16 steps are 16 key rows = 2048 bytes in both.
//  d = 128: columns 64 w .. 64 w + 63 (K chunk w) over all 128 keys;
//  d = 64:  all 64 columns over keys 64 w .. 64 w + 63 (a partial sum);
//  d = 64, BM = 128: queries 64 w .. 64 w + 63 (dS^T column chunk w), all 64 columns, over
//           all 128 keys;
//  d = 256: columns 64 w .. 64 w + 63 (K chunk w: here w is the chunk, 0 .. 3) over the
//           block's 64 keys (the [64 keys][64 queries] dS^T tile).
// The caller has made the tile's stores visible (fence.proxy.async + barrier) and waits.
template <int D, typename T, int BM = 64>
__device__ __forceinline__ void issue_dq(float (&dq)[32], uint32_t ds_addr, uint32_t k_addr, int w) {
  using C = BackwardSm90Config<D, BM>;
  wgmma_fence();
  // Per variant: the first descriptor of A and of B, and the keys summed (K of the product:
  // d 64 at BM 64 sums only its own 64).
  constexpr int kKeys = D == 64 && BM == 64 ? 64 : C::kBlockN;
  uint64_t da0, db0;
  if constexpr (C::kSplitHeadDim || (D == 128 && BM == 64)) {
    da0 = smem_descriptor(ds_addr, C::kDsBytes, 1024);
    db0 = smem_descriptor(k_addr + w * C::kKChunkBytes, C::kKChunkBytes, 1024);
  } else if constexpr (BM == 128) {
    da0 = smem_descriptor(ds_addr + w * C::kDsChunkBytes, C::kDsChunkBytes, 1024);
    db0 = smem_descriptor(k_addr, C::kKChunkBytes, 1024);
  } else {
    const uint32_t own_rows = uint32_t(w) * 64 * 128;
    da0 = smem_descriptor(ds_addr + own_rows, C::kDsBytes, 1024);
    db0 = smem_descriptor(k_addr + own_rows, C::kKChunkBytes, 1024);
  }
#pragma unroll
  for (int k = 0; k < kKeys / 16; ++k)
    wgmma_ss_tt_m64n64k16<T>(dq, desc_advance(da0, k * 2048), desc_advance(db0, k * 2048), k > 0);
  wgmma_commit_group();
}

// Deterministic dQ, d = 64 (see the header): the two consumer warpgroups' dQ partial sums
// (each over its own 64 keys, all 64 columns) -> their sum, of which warpgroup w keeps the
// columns 32 w .. 32 w + 31, in dq[0 .. 15] (element 4j + e: column 32 w + 8j + 2t + (e & 1),
// rows as in the accumulator). kKeep = 4 w, the first n8 column tile kept (a template
// argument: register arrays take constant indices only). Each warpgroup stores the half it
// gives away in `swap` (float2 [2 warpgroups][8][128 threads]: a warp's accesses are
// contiguous), both meet at barrier 6, then each thread adds the same thread of the other
// warpgroup's half (same rows and columns) to its own. x + y == y + x in IEEE arithmetic, so
// the sum does not depend on which warpgroup forms it. `swap` alternates between two buffers
// by step: a warpgroup overwrites one only after the next barrier 6, which the other passes
// only after reading it.
// Deterministic dQ: L - n for query block [m0, m0 + 64) of `seq` and key block n, which sees
// it ("Order" in the header): L = (hi - 1) / 128 with hi = visible_keys(p, last row).hi, as
// key_blocks_of_query_tile, in 32-bit arithmetic for the order warp's 24 registers. The last
// row sees a key (n does; the rows that see none are the first ones), so hi is the right end
// of its window: with diagonal d = last + Sk - Sq (<= Sk - 1), causal d + 1; a right window w
// alone min(Sk, d + 1 + w) = d + 1 + min(w, Sq - 1 - last); neither, Sk. No sum exceeds Sk.
template <int BM, int BN>
__device__ __forceinline__ int key_blocks_above(const cuda::AttentionParams& p, const cuda::Sequence& seq, int m0,
                                                int n_block) {
  const int last = min(m0 + BM, seq.sq) - 1;
  const int diagonal_end = last + seq.sk - seq.sq + 1;
  int hi = seq.sk;
  if (p.causal)
    hi = diagonal_end;
  else if (p.window_right >= 0)
    hi = diagonal_end + min(p.window_right, seq.sq - 1 - last);
  return (hi - 1) / BN - n_block;
}

// Deterministic dQ: named barriers between the order warp and the consumers (header; ids 1-6
// are the steps' own), each counting the order warp and the two consumer warpgroups.
inline constexpr int kDqReadyBarrier = 8, kDqDoneBarrier = 7, kDqOrderThreads = 32 + 256;

// Bulk dQ (DqAdd::bulk): named barriers between the dQ writer (warp 1 of the producer
// warpgroup; in deterministic mode it is also the order warp) and the consumers, each
// counting the writer warp and both consumer warpgroups (kDqOrderThreads): "staged" (the
// consumers' tiles of a step are in shared memory, fenced for the async proxy), "free" (the
// buffer a step stages into has been read by the adds two steps back).
inline constexpr int kDqStagedBarrier = 9, kDqFreeBarrier = 10;
// DqAdd::bulk_per_warpgroup: the same two barriers per consumer warpgroup w, counting the
// writer warp and that warpgroup only: "staged" 11 + 2 w, "free" 12 + 2 w. The barriers
// above (both warpgroups at once) made the warpgroups meet at every step's hand-over, so
// their tensor-core-idle phases (softmax, dS stores, the hand-over itself) coincided; with
// these a warpgroup may run up to about a step ahead of the other (the writer serves them in
// turn, and each has two buffers).
__device__ __forceinline__ int dq_staged_barrier(int w) { return 11 + 2 * w; }
__device__ __forceinline__ int dq_free_barrier(int w) { return 12 + 2 * w; }
inline constexpr int kDqWarpgroupThreads = 32 + 128;

// Bulk dQ: this thread's part of a dQ accumulator, kTiles n8 column tiles (element
// 4n + 2 half + e: row 16 wq + g + 8 half, column 8n + 2t + e of the warpgroup's part), ->
// chunks of [64 rows][32 fp32] at `tile` in the layout TMA reads for a box of the dq_accum
// map with the 128-byte swizzle: row r at byte 128 r, its 16-byte unit u at u ^ (r % 8)
// (r % 8 = g). Rows at or past valid_rows are the next sequence's tokens (or past Sq): they
// get zeros, and adding +0.0 to another token's row changes nothing (a sum that starts at
// +0.0 never becomes -0.0). The caller passes kAllRows when valid_rows >= 64 (a uniform
// branch), which drops the per-row test.
// Banks: a half-warp's float2 stores cover 4 rows (g % 4) x 4 lanes. Were every lane to store
// tile n at the same time, rows g and g ^ 1 would hit the same two units (the swizzle flips
// only the unit's low bit between them): 2-way conflicts on every store (ncu 2026-12-01: 40% of
// the backward's shared-store wavefronts). So within each group of four tiles, lane (g, t)
// stores tile 4 (n / 4) + ((n % 4) ^ gray(g % 4)) at step n; the units' pair index is then
// (n % 4) ^ (g % 4) in one half-warp and its complement-by-2 in the other: the 16 lanes'
// 8-byte stores fill 32 distinct banks. The tiles are put in that order by value (a run-time
// index into dq would put it in local memory): two conditional swaps per pair, on bit 0 then
// bit 1 of gray (v[i ^ gray] = v[(i ^ (gray & 1)) ^ (gray & 2)]), 8 selects per float of a
// group where picking each tile out of four took 16 (ncu / cuobjdump, 2026-12-02).
template <int kTiles, bool kAllRows>
__device__ __forceinline__ void dq_stage_tile(unsigned char* tile, const float (&dq)[32], int wq, int g, int t,
                                              int valid_rows) {
  static_assert(kTiles % 4 == 0, "whole groups of four n8 tiles");
  constexpr uint32_t kChunkBytes = 64 * 32 * 4;
  const int gray = (g & 3) ^ ((g & 3) >> 1);
  const bool swap_1 = gray & 1, swap_2 = gray & 2;
  auto swap_if = [](bool c, float2& a, float2& b) {
    const float2 x = a, y = b;
    a = make_float2(c ? y.x : x.x, c ? y.y : x.y);
    b = make_float2(c ? x.x : y.x, c ? x.y : y.y);
  };
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = 16 * wq + g + 8 * half;
    const bool keep = kAllRows || r < valid_rows;
#pragma unroll
    for (int group = 0; group < kTiles; group += 4) {
      float2 v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[j] = make_float2(dq[4 * (group + j) + 2 * half], dq[4 * (group + j) + 2 * half + 1]);
        if (!kAllRows && !keep) v[j] = make_float2(0.0f, 0.0f);
      }
      swap_if(swap_1, v[0], v[1]);
      swap_if(swap_1, v[2], v[3]);
      swap_if(swap_2, v[0], v[2]);
      swap_if(swap_2, v[1], v[3]);
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // step group + i: tile group + (i ^ gray), now in v[i]
        const int unit = 2 * (i ^ gray) + t / 2;
        *reinterpret_cast<float2*>(tile + (group / 4) * kChunkBytes + r * 128 + ((unit ^ g) << 4) + (t & 1) * 8) = v[i];
      }
    }
  }
}

template <int kKeep>
__device__ __forceinline__ void dq_combine_halves(float (&dq)[32], float2* swap, int w, int thread) {
  constexpr int kGive = 4 - kKeep;
  float2* mine = swap + w * 8 * 128;
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      mine[(2 * j + half) * 128 + thread] = make_float2(dq[4 * (kGive + j) + 2 * half], dq[4 * (kGive + j) + 2 * half + 1]);
  named_barrier_sync(6, 256);
  const float2* theirs = swap + (1 - w) * 8 * 128;
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float2 y = theirs[(2 * j + half) * 128 + thread];
      dq[4 * j + 2 * half] = dq[4 * (kKeep + j) + 2 * half] + y.x;
      dq[4 * j + 2 * half + 1] = dq[4 * (kKeep + j) + 2 * half + 1] + y.y;
    }
}

// Atomic dQ: dq_accum[token][h][col0 + ...] += this thread's kTiles n8 column tiles of dq (the
// accumulator layout: element 4n + 2 half + {0, 1}, query row m0 + 16 wq + g + 8 half, column
// col0 + 8n + 2t, +1), float2 atomics, rows past the sequence's queries skipped, and columns
// past d_qk (the zero padding when the kernel's D rounds d_qk up; d_qk is a multiple of 8, so
// an n8 tile is wholly in or out).
template <int kTiles, int D>
__device__ __forceinline__ void atomic_add_dq(const cuda::AttentionParams& p, const cuda::Sequence& seq, int h, int m0,
                                              int col0, int wq, int g, int t, const float (&dq)[32]) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int qi = m0 + 16 * wq + g + 8 * half;
    if (qi >= seq.sq) continue;
    float* dst = p.dq_accum + ((seq.q_token + qi) * p.heads_q + h) * int64_t(p.d_qk) + col0 + 2 * t;
#pragma unroll
    for (int n = 0; n < kTiles; ++n)
      if (col0 + 8 * n < p.d_qk)
        atomicAdd(reinterpret_cast<float2*>(dst + 8 * n), make_float2(dq[4 * n + 2 * half], dq[4 * n + 2 * half + 1]));
  }
}

// The flat layout by float4 atomics (p.flat_atomic_chunks): this thread's 64 x 64 accumulator
// (tiles n = 0 .. 7) into part `part` of `slot` for query head h, in the part's thread-major
// order (float4 n * 128 + tid): a warp's 512 bytes contiguous, 8 reductions a thread where the
// tensor-map layout's float2 atomics took 32 scattered ones. Rows past the sequence are the
// slot's unused rows, never read.
__device__ __forceinline__ void flat_atomic_add_dq(float* dq_accum, int64_t slots, int parts, int h, int64_t slot,
                                                   int part, const float (&dq)[32]) {
#if defined(FLASH4_SM90A)  // float4 atomicAdd: sm_90 on (the other targets' passes never call this)
  float4* dst = reinterpret_cast<float4*>(dq_flat_part(dq_accum, slots, parts, h, slot, part)) + threadIdx.x % 128;
#pragma unroll
  for (int n = 0; n < 8; ++n) atomicAdd(dst + n * 128, make_float4(dq[4 * n], dq[4 * n + 1], dq[4 * n + 2], dq[4 * n + 3]));
#else
  __trap();
#endif
}

// tma_dq: the dq_accum map (DqAdd::bulk; unused by the atomic kernels), last so that the
// other parameters keep their offsets.
// kSoftcap: the kernel for calls with softcap (BM = 64 only), whose tanh path would otherwise
// sit inside every step loop (d 128: 1529 instructions; 741 without it, zero_tile_rows rolled),
// as the forward has SOFTCAP.
template <int D, typename T, bool kDeterministic, DqAdd kDqAdd, int kBM = 64, bool kSoftcap = false>
__global__ void __launch_bounds__(BackwardSm90Config<D, kBM>::kThreads, 1)
    attention_backward_sm90_kernel(const __grid_constant__ CUtensorMap tma_q, const __grid_constant__ CUtensorMap tma_k,
                                   const __grid_constant__ CUtensorMap tma_v, const __grid_constant__ CUtensorMap tma_do,
                                   const cuda::AttentionParams p, const int64_t row_pitch, const VarlenTiles list,
                                   const DqOrder order, const __grid_constant__ CUtensorMap tma_dq) {
#if defined(FLASH4_SM90A)
  using C = BackwardSm90Config<D, kBM>;
  constexpr int BM = C::kBlockM, BN = C::kBlockN, kStages = C::kStages;
  constexpr bool kBulk = kDqAdd != DqAdd::atomics;
  constexpr bool kWideM = BM == 128;
  // DqAdd::flat: the flat layout (backward_sm90.hpp), with the per-warpgroup hand-over at
  // BM = 64 (not deterministic: there the d 64 halves are combined first) and the lock-step one
  // at BM = 128 (deterministic too: each warpgroup's tile is whole, its rows a slot of its own).
  constexpr bool kFlat = kDqAdd == DqAdd::flat;
  constexpr bool kPerWarpgroup = kDqAdd == DqAdd::bulk_per_warpgroup || (kFlat && !kWideM);
  static_assert(!(kPerWarpgroup && kDeterministic), "deterministic dQ adds both warpgroups' tiles together");
  // p.flat_atomic_chunks (flat, not deterministic): the consumers add those dQ chunks by float4
  // atomics themselves (d 64 / 128: every chunk, so the dQ writer has nothing to do).
  const bool flat_atomics = kFlat && !kDeterministic && p.flat_atomic_chunks > 0;
  // p.d256_split_queries (the host sets it only with every d 256 dQ chunk by atomics): the
  // split-query step (consumers, below), its P^T tiles in the unused staging buffer.
  const bool split_queries = C::kSplitHeadDim && flat_atomics && p.d256_split_queries;
  // BM = 128: the lock-step hand-over only (one staging buffer; each warpgroup's tile is whole,
  // so the writer adds (rows 64 w.., all columns) per warpgroup).
  static_assert(BM == 64 || kDqAdd == DqAdd::bulk || kFlat, "BM = 128 with the lock-step bulk dQ only");
  // Bulk dQ: rows, barriers and swap sit kBulkShift higher (the staged tiles before them).
  constexpr uint32_t kShift = kBulk ? C::kBulkShift : 0;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = align_smem_1024(smem_raw);
  float* sRows = reinterpret_cast<float*>(smem + C::kOffRows + kShift);  // [stage][lse2 | D][kRowFloats]
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + C::kOffBars + kShift);
  uint64_t* kv_full = bars;
  uint64_t* q_full = bars + 1;
  uint64_t* q_empty = bars + 1 + kStages;

  // Atomic dQ, dense: grid (key block, KV head, sequence). Varlen: tile = (pair, KV head)
  // with the KV heads of one pair side by side; tiles past the list's pairs have nothing to
  // do. Deterministic dQ: the tile is a ticket, taken in the order the CTAs start (header),
  // and dense tiles count (key blocks from the last to the first, KV head, sequence).
  int ticket_tile = 0;
  if constexpr (kDeterministic) {
    __shared__ int ticket;
    if (threadIdx.x == 0) ticket = atomicAdd(order.ticket, 1);
    __syncthreads();
    ticket_tile = ticket;
  }
  int n_block, hk, b;
  if (list.pairs != nullptr) {
    const int tile = kDeterministic ? ticket_tile : int(blockIdx.x);
    const int pair_index = tile / p.heads_kv;
    if (pair_index >= *list.count) return;  // the whole CTA, before any barrier
    const int2 pair = list.pairs[pair_index];
    b = pair.x;
    n_block = pair.y;
    hk = tile % p.heads_kv;
  } else if constexpr (kDeterministic) {
    const int n_blocks = (p.seqlen_k + BN - 1) / BN;
    const int kv = ticket_tile / n_blocks;  // KV head + heads_kv * sequence
    n_block = n_blocks - 1 - (ticket_tile - kv * n_blocks);
    hk = kv % p.heads_kv;
    b = kv / p.heads_kv;
  } else {
    n_block = p.heads_first_grid ? blockIdx.y : blockIdx.x;
    hk = p.heads_first_grid ? blockIdx.x : blockIdx.y;
    b = blockIdx.z;
  }
  const cuda::Sequence seq = cuda::sequence_of(p, b);
  const int n0 = n_block * BN;
  const BackwardSteps steps = backward_steps(p, seq, n0, BN, BM);
  // Tensor-map coordinates: dense rows from 0 in batch b; packed rows from the sequence's
  // first token in the one batch.
  const bool packed = p.cu_seqlens_q != nullptr;
  const int q_row = packed ? int(seq.q_start) : 0, k_row = packed ? int(seq.k_start) : 0, tma_b = packed ? 0 : b;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warpgroup = warp / 4;
  if (threadIdx.x == 0) {
    mbarrier_init(kv_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&q_full[s], 1);
      mbarrier_init(&q_empty[s], 8);  // lane 0 of each consumer warp
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ---------------------------------------------------------------- producer
    setmaxnreg_dec<C::kProducerRegs>();
    if (warp == 0 && lane == 0) {
      // K / V once (rows past Sk arrive as zeros -- or, packed, as the next sequence's rows --
      // and are masked). The consumers wait for them even when there is no step, so no copy
      // is in flight when the CTA exits.
      mbarrier_arrive_expect_tx(kv_full, 2 * C::kKBytes);
#pragma unroll
      for (int c = 0; c < C::kChunks; ++c) {
        tma_load_4d(smem + C::kOffK + c * C::kKChunkBytes, &tma_k, 64 * c, k_row + n0, hk, tma_b, kv_full);
        tma_load_4d(smem + C::kOffV + c * C::kKChunkBytes, &tma_v, 64 * c, k_row + n0, hk, tma_b, kv_full);
      }
      for (int step = 0; step < steps.steps; ++step) {
        const int stage = step % kStages, h = steps.head(step, hk, p.group), m0 = steps.row0(step, BM);
        // The consumers' release of this stage's previous use (step - kStages).
        if (step >= kStages) mbarrier_wait(&q_empty[stage], ((step / kStages) & 1) ^ 1);
        // The rows' lse2 / D from the 16-byte boundary at or below the block's first row
        // (h row_pitch is a multiple of 4 floats; the room after the last token keeps the
        // copy inside the buffer).
        const int64_t r0 = (int64_t(h) * row_pitch + seq.q_token + m0) & ~int64_t(3);
#if defined(FLASH4_BWD_ROWS_COPY_BEFORE_EXPECT)
        // Diagnostic build only (scripts/hopper_racecheck_rows.sh): the rows' bulk copies issued
        // before this thread's arrive.expect_tx -- legal, the transaction count may go negative
        // until the arrive -- to see whether racecheck's two reports on them follow the order.
        bulk_load(sRows + stage * 2 * C::kRowFloats, p.lse_log2 + r0, C::kRowFloats * 4, &q_full[stage]);
        bulk_load(sRows + stage * 2 * C::kRowFloats + C::kRowFloats, p.d_rows + r0, C::kRowFloats * 4, &q_full[stage]);
#endif
        mbarrier_arrive_expect_tx(&q_full[stage], C::kStepTxBytes);
#pragma unroll
        for (int c = 0; c < C::kChunks; ++c) {
          tma_load_4d(smem + C::kOffQ + stage * C::kQBytes + c * C::kQChunkBytes, &tma_q, 64 * c, q_row + m0, h,
                      tma_b, &q_full[stage]);
          tma_load_4d(smem + C::kOffO + stage * C::kQBytes + c * C::kQChunkBytes, &tma_do, 64 * c, q_row + m0, h,
                      tma_b, &q_full[stage]);
        }
#if !defined(FLASH4_BWD_ROWS_COPY_BEFORE_EXPECT)
        bulk_load(sRows + stage * 2 * C::kRowFloats, p.lse_log2 + r0, C::kRowFloats * 4, &q_full[stage]);
        bulk_load(sRows + stage * 2 * C::kRowFloats + C::kRowFloats, p.d_rows + r0, C::kRowFloats * 4, &q_full[stage]);
#endif
      }
    } else if (kBulk && warp == 1) {
      // The dQ writer (bulk dQ, FA3's scheme): per step it waits until both consumer
      // warpgroups have staged their tiles ("staged"), lane 0 adds them to dq_accum with one
      // bulk reduce-add per 32-column chunk (4 ops; d = 64 deterministic: 2, the combined
      // halves) and commits them as one bulk group, and the warp hands the buffer of step + 1
      // back ("free") once the adds of step - 1, which read it, are done reading: only the
      // issuing thread's wait covers its bulk ops, so lane 0 waits and the warp's arrive
      // carries that to the consumers, who wait at "free" before their stores (a wait, then
      // a barrier, then the writes: the order a TMA store's source buffer is reused in).
      // Instances of one barrier never mix steps: the writer arrives at "free" for step + 1
      // only after "staged" of step completed, and the consumers arrive at "staged" for
      // step + 1 only after "free" of step + 1 did.
      // Deterministic, it is also the order warp (header, "Counts"), with the adds in it
      // rather than in the consumers: lane 0 issues a step's adds only after its acquire of
      // the step's count, and since bulk ops complete asynchronously, it waits for them to
      // complete (cp.async.bulk.wait_group 0: the writes performed, not just the source read)
      // before the release that counts this key block in. fence.proxy.async.global on both
      // sides orders the async-proxy adds with the generic-proxy acquire / release. The
      // consumers never wait on other CTAs (only on this warp), so the no-deadlock argument
      // is unchanged; the wait on global memory overlaps their next step.
      constexpr int kOps = kDeterministic && D == 64 && !kWideM ? 1 : 2;  // chunks per warpgroup
      auto count_of = [&](int step) {
        const int h = steps.head(step, hk, p.group), m0 = steps.row0(step, BM);
        return order.counts + int64_t(h) * order.slots + (seq.q_token + m0) / BM + b;
      };
      auto above = [&](int step) { return key_blocks_above<BM, BN>(p, seq, steps.row0(step, BM), n_block); };
      if (kDeterministic && lane == 0 && steps.steps > 0) {
        const int* count = count_of(0);
        const int wait_for = above(0);
        while (ld_acquire_gpu(count) < wait_for) {
        }
      }
      __syncwarp();
      if constexpr (C::kSplitHeadDim) {
        // d 256 (flat, not deterministic): one 16 KB buffer, filled by the warpgroups in turn --
        // per step (warpgroup 0, part 0), (1, 2), (0, 1), (1, 3), each warpgroup's parts 2 w and
        // 2 w + 1 in its order (columns 128 w ..) -- and handed to the next in that sequence
        // once the add has read it: "free" w' is arrived at for the next hand-over's warpgroup
        // w' (the first: before the loop), "staged" w waited for before each add. One
        // warpgroup's stores and the other's next ones are ordered through this warp (staged w,
        // its sync, then free 1 - w); compute-sanitizer racecheck, which does not follow an
        // order through a third party's barriers, reports them as write-write hazards
        // (2026-12-02: 32 on two small cases, every test passing against float64).
        // p.flat_atomic_chunks = a: only chunks a .. 1 come through the buffer (the first a by
        // float4 atomics from the consumers), 2 (2 - a) hand-overs a step (none at a = 2).
        const int atomic_chunks = p.flat_atomic_chunks, per_step = 2 * (2 - atomic_chunks);
        const int hand_overs = per_step * steps.steps;
        if (hand_overs > 0) named_barrier_arrive(dq_free_barrier(0), kDqWarpgroupThreads);
        for (int k = 0; k < hand_overs; ++k) {
          const int step = k / per_step, w = k & 1, chunk = atomic_chunks + (k % per_step >> 1);
          named_barrier_sync(dq_staged_barrier(w), kDqWarpgroupThreads);
          if (lane == 0) {
            const int h = steps.head(step, hk, p.group);
            const int64_t slot = dq_slot(seq.q_token, steps.row0(step, BM), b);
            bulk_reduce_add_f32(dq_flat_part(p.dq_accum, order.slots, D / 64, h, slot, 2 * w + chunk),
                                smem_u32(smem + C::kOffDqStage), kDqFlatPartFloats * 4);
            bulk_commit_group();
            bulk_wait_group_read<0>();  // the one buffer read: the next warpgroup may fill it
          }
          __syncwarp();
          if (k + 1 < hand_overs) named_barrier_arrive(dq_free_barrier(1 - w), kDqWarpgroupThreads);
        }
        if (lane == 0) bulk_wait_group<0>();  // the staged tile stays until the add is done
        return;
      } else if constexpr (kPerWarpgroup) {
        // Per warpgroup (DqAdd::bulk_per_warpgroup): each (step, w) its own commit group, in
        // the order (0, 0), (0, 1), (1, 0), ...; after committing (step, w), the groups
        // newer than (step - 1, w) are two, so waiting until at most two are unread means
        // (step - 1, w) has read its buffer, (step + 1) & 1 of w: handed back by "free" w.
        if (flat_atomics) return;  // nothing is handed over
        if (steps.steps > 0) {
          named_barrier_arrive(dq_free_barrier(0), kDqWarpgroupThreads);
          named_barrier_arrive(dq_free_barrier(1), kDqWarpgroupThreads);
        }
        for (int step = 0; step < steps.steps; ++step) {
          const bool more = step + 1 < steps.steps;
#pragma unroll
          for (int w = 0; w < 2; ++w) {
            named_barrier_sync(dq_staged_barrier(w), kDqWarpgroupThreads);
            if (lane == 0) {
              const int h = steps.head(step, hk, p.group);
              const int token = int(seq.q_token + steps.row0(step, BM));
              const unsigned char* buffer = smem + C::kOffDqStage + (step & 1) * C::kDqBufferBytes;
              if constexpr (kFlat) {
                // Warpgroup w's 16 KB part, one add: to part w (d 128) or the one part (d 64:
                // both warpgroups' partial sums) of the block's slot (the flat layout,
                // backward_sm90.hpp).
                const int64_t slot = dq_slot(seq.q_token, steps.row0(step, BM), b);
                bulk_reduce_add_f32(dq_flat_part(p.dq_accum, order.slots, D / 64, h, slot, D == 128 ? w : 0),
                                    smem_u32(buffer + 2 * w * C::kDqChunkBytes), kDqFlatPartFloats * 4);
              } else {
#pragma unroll
                for (int k = 0; k < 2; ++k)
                  bulk_reduce_add_3d(&tma_dq, D == 128 ? 64 * w + 32 * k : 32 * k, token, h,
                                     buffer + (2 * w + k) * C::kDqChunkBytes);
              }
              bulk_commit_group();
              bulk_wait_group_read<2>();
            }
            __syncwarp();
            if (more) named_barrier_arrive(dq_free_barrier(w), kDqWarpgroupThreads);
          }
        }
        if (lane == 0) bulk_wait_group<0>();  // the staged tiles stay until the adds are done
        return;
      }
      if (flat_atomics) return;  // nothing is handed over
      if (steps.steps > 0) named_barrier_arrive(kDqFreeBarrier, kDqOrderThreads);
      for (int step = 0; step < steps.steps; ++step) {
        const bool more = step + 1 < steps.steps;
        named_barrier_sync(kDqStagedBarrier, kDqOrderThreads);
        int next = 0;
        if (lane == 0) {
          const int h = steps.head(step, hk, p.group);
          const int token = int(seq.q_token + steps.row0(step, BM));  // the host checked tokens_q < 2^31
          const unsigned char* buffer = smem + C::kOffDqStage + (step % C::kDqBuffers) * C::kDqBufferBytes;
          if constexpr (kDeterministic) fence_proxy_async_global();  // after the acquire of the count
          if constexpr (kFlat && kWideM) {
            // BM = 128 (the only lock-step flat kernel, d 64; at BM = 64 flat takes the
            // per-warpgroup branch above): warpgroup w's rows 64 w .. 64 w + 63 are a slot of their
            // own, one part; one 16 KB add each. A half that starts past the sequence's rows is
            // skipped: its slot number may be the next sequence's first.
#pragma unroll
            for (int w = 0; w < 2; ++w) {
              if (steps.row0(step, BM) + 64 * w >= seq.sq) continue;
              const int64_t slot = dq_slot(seq.q_token, steps.row0(step, BM) + 64 * w, b);
              bulk_reduce_add_f32(dq_flat_part(p.dq_accum, order.slots, 1, h, slot, 0),
                                  smem_u32(buffer + 2 * w * C::kDqChunkBytes), kDqFlatPartFloats * 4);
            }
          } else {
#pragma unroll
            for (int w = 0; w < 2; ++w)
#pragma unroll
              for (int k = 0; k < kOps; ++k) {
                // BM = 128: warpgroup w's rows 64 w .. 64 w + 63, all columns.
                const int col = D == 128 ? 64 * w + 32 * k : kDeterministic && !kWideM ? 32 * w : 32 * k;
                bulk_reduce_add_3d(&tma_dq, col, kWideM ? token + 64 * w : token, h,
                                   buffer + (2 * w + k) * C::kDqChunkBytes);
              }
          }
          bulk_commit_group();
          if constexpr (kDeterministic) {
            if (more) next = ld_relaxed_gpu(count_of(step + 1));  // looked at after the fence below
            bulk_wait_group<0>();
            fence_proxy_async_global();
            fence_acq_rel_gpu();
            red_relaxed_gpu_add(count_of(step), 1);
          } else if constexpr (C::kDqBuffers == 1) {
            bulk_wait_group_read<0>();  // this step's adds have read the one buffer
          } else {
            bulk_wait_group_read<1>();  // step - 1's adds have read buffer (step + 1) & 1
          }
        }
        __syncwarp();
        if (more) named_barrier_arrive(kDqFreeBarrier, kDqOrderThreads);
        if (kDeterministic && lane == 0 && more) {
          const int* count = count_of(step + 1);
          const int wait_for = above(step + 1);
          while (next < wait_for) next = ld_acquire_gpu(count);
        }
        __syncwarp();
      }
      if (lane == 0) bulk_wait_group<0>();  // the staged tiles stay until the adds are done
    } else if (kDeterministic && warp == 1) {
      // The order warp (header, "Counts"): per step, wait until the key blocks above this one
      // have added their tiles to the step's query block, let the consumers add theirs, and
      // count this key block in once they have. The whole warp runs it (the barriers count
      // warps); lane 0 touches the counts. The next step's count is loaded (relaxed) before
      // the wait for this step's adds, so its round trip overlaps them, but only looked at
      // after this step's release: a release that waited for the key blocks above to finish
      // the next step would make each key block of a chain a step later than the one above.
      // One fence serves both: the release of this step's adds and the acquire of that load.
      auto count_of = [&](int step) {
        const int h = steps.head(step, hk, p.group), m0 = steps.row0(step, BM);
        return order.counts + int64_t(h) * order.slots + (seq.q_token + m0) / BM + b;
      };
      auto above = [&](int step) { return key_blocks_above<BM, BN>(p, seq, steps.row0(step, BM), n_block); };
      if (lane == 0 && steps.steps > 0) {
        const int* count = count_of(0);
        const int wait_for = above(0);
        while (ld_acquire_gpu(count) < wait_for) {
        }
      }
      __syncwarp();
      for (int step = 0; step < steps.steps; ++step) {
        named_barrier_arrive(kDqReadyBarrier, kDqOrderThreads);
        const bool more = step + 1 < steps.steps;
        int next = 0;
        if (lane == 0 && more) next = ld_relaxed_gpu(count_of(step + 1));
        __syncwarp();
        named_barrier_sync(kDqDoneBarrier, kDqOrderThreads);
        if (lane == 0) {
          fence_acq_rel_gpu();
          red_relaxed_gpu_add(count_of(step), 1);
          if (more) {
            const int* count = count_of(step + 1);
            const int wait_for = above(step + 1);
            while (next < wait_for) next = ld_acquire_gpu(count);
          }
        }
        __syncwarp();
      }
    }
  } else {
    // ---------------------------------------------------------------- consumers
    setmaxnreg_inc<C::kConsumerRegs>();
    const int cw = warpgroup_index_uniform() - 1, wq = warp % 4, g = lane / 4, t = lane % 4;
    const float scale_log2 = p.scale_log2;
#if defined(FLASH4_SASS_HOT_PATH)
    // Diagnostic build only (scripts/sass_hot_path.py, never linked into a library): the
    // branches a dense step without softcap or mask never takes are compiled out, so that the
    // step loop's SASS is its hot path (softcap, varlen and masked steps compute garbage).
    constexpr bool kColdPaths = false;
#else
    constexpr bool kColdPaths = true;
#endif
    // Compiled in only for the softcap kernels (kSoftcap). BM = 128: never (its registers do
    // not hold the tanh beside 128 scores; the host keeps softcap on BM = 64). At d 128 / 256
    // those kernels still branch on p.softcap at run time: made constant, ptxas spilled 8
    // bytes there (H200, 2026-12-03: d 256 softcap 3% slower); at d 64 constant, 3.6% faster.
    static_assert(!(kSoftcap && kWideM), "softcap at BM = 64 only");
    const bool softcap = kSoftcap && kColdPaths && (D == 64 || p.softcap > 0);
    const uint32_t k_addr = smem_u32(smem + C::kOffK), v_addr = smem_u32(smem + C::kOffV);
    const uint32_t q_addr0 = smem_u32(smem + C::kOffQ), o_addr0 = smem_u32(smem + C::kOffO);
    const uint32_t ds_addr0 = smem_u32(smem + C::kOffDs);
    // Keys of this thread's accumulator rows g and g + 8 (S^T, dP^T, dV, dK); d 256: both
    // warpgroups hold the same keys, and dK / dV columns from key_col0.
    constexpr bool kSplit = C::kSplitHeadDim;
    const int key0 = n0 + C::first_key(cw) + 16 * wq + g;
    const int key_col0 = kSplit ? C::kKeyCols * cw : 0;
    // How far right / left of its diagonal a query sees (causal: right 0; a window side < 0
    // is unbounded), as visible_keys (sequence.cuh).
    const bool has_right = p.causal || p.window_right >= 0, has_left = p.window_left >= 0;
    const int64_t right = p.window_right >= 0 ? (p.causal ? min(0, p.window_right) : p.window_right) : 0;
    const int64_t left = has_left ? p.window_left : 0;

    float dv[C::kKeyCols / 2], dk[C::kKeyCols / 2];
#pragma unroll
    for (int i = 0; i < C::kKeyCols / 2; ++i) dv[i] = dk[i] = 0.0f;

    mbarrier_wait(kv_full, 0);
    // Varlen: K rows past the sequence's keys hold the next sequence's; with seqused_k (dense
    // or packed), rows past the keys used are the sequence's own unused slots (anything, NaN
    // included). dQ = dS K multiplies them by dS = 0, and 0 * NaN is not 0: zero them.
    // Warpgroup w zeroes its own 64 rows, which its S^T reads first (barrier 3 + w: its four
    // warps); the other warpgroup's dQ (d = 128) reads them after the per-step barrier 1,
    // which comes later in both warpgroups' program order. (dP^T = V dO^T reads V rows there
    // too, but only into dP^T entries the mask then sets to 0.)
    // d 256: both warpgroups read all 64 rows; the 256 consumer threads zero them (barrier 5).
    if ((packed || p.seqused_k != nullptr) && n0 + BN > seq.sk) {
      if constexpr (kSplit) {
        zero_tile_rows(smem + C::kOffK, C::kKChunkBytes, C::kChunks, max(seq.sk - n0, 0), BN, threadIdx.x - 128, 256);
        fence_proxy_async();
        named_barrier_sync(5, 256);
      } else {
        zero_tile_rows(smem + C::kOffK, C::kKChunkBytes, C::kChunks, max(seq.sk - n0, 64 * cw), 64 * cw + 64,
                       threadIdx.x % 128, 128);
        fence_proxy_async();
        named_barrier_sync(3 + cw, 128);
      }
    }
    // One step at a time. A d = 64 version that ran steps in pairs (the second's S^T / dP^T
    // issued before the first's gradients were waited for, FA3's intra-warpgroup overlap) was
    // 13% slower on an H200 (2026-12-01, scripts/hopper_dq_check.sh: dense S 16k 252 against
    // 294 TF/s), so it went.
    // The step's query head and query block, advanced at the end of each step: head() and
    // row0() divide by the blocks per head, ~30 instructions a step on the consumers' path.
    int step_h = hk * p.group, step_mb = steps.mb_lo;
    // Which steps need the per-element mask below ("masked"), solved for m0 once per CTA: those
    // with m0 outside [unmasked_lo, unmasked_hi] (64-bit, clamped into int), or every step when
    // the key block runs past the keys. The per-step test was ~40 instructions of 64-bit
    // arithmetic; now two compares.
    int unmasked_lo, unmasked_hi;
    {
      const int64_t shift = int64_t(seq.sk) - seq.sq;
      const int64_t lo = has_right ? int64_t(n0) + BN - 1 - shift - right : 0;
      int64_t hi = int64_t(seq.sq) - BM;
      if (has_left) hi = min(hi, int64_t(n0) - BM + 1 - shift + left);
      unmasked_lo = int(max(int64_t(0), min(lo, int64_t(INT_MAX))));
      unmasked_hi = int(max(int64_t(-1), min(hi, int64_t(INT_MAX))));
    }
    const bool edge_keys = n0 + BN > seq.sk;
    // The thread's key rows' visible queries, solved in each masked step rather than held
    // through the loop: their inputs are kernel parameters the compiler reloads, while the
    // four registers held across the loop read 0.982 / 0.985 at d 256 against 0.994 this way
    // (bench/env_ab.py, geometric means against the 64-bit mask; H200, 2026-12-03).
    auto mask_step = [&](auto& s_, auto& dp_, int q0) {
      const VisibleQueries seen_by[2] = {
          queries_seeing_key(key0, seq.sq, seq.sk, has_right, right, has_left, left),
          queries_seeing_key(key0 + 8, seq.sq, seq.sk, has_right, right, has_left, left)};
      mask_outside_visible<2 * std::extent_v<std::remove_reference_t<decltype(s_)>>>(s_, dp_, seen_by, q0, t);
    };
    auto next_block = [&] {
      if (++step_mb == steps.mb_lo + steps.n_mb) {
        step_mb = steps.mb_lo;
        ++step_h;
      }
    };
    // One step (query block step_mb of head step_h). Two copies of it: with the mask code
    // (mask_code true: the steps that need the per-element mask, and the varlen zeroing,
    // whose steps are masked too: m0 + BM > sq) and without, so that the common step is one
    // branch-free stretch that ptxas schedules as a whole (d 128: ~494 SASS instructions, the
    // one-copy loop 741): 1.018 / 1.013 / 0.994 at d 64 / 128 / 256, softcap 1.049 / 1.035 /
    // 1.002 (H200, 2026-12-03, against an unchanged copy). d 256 and softcap keep it too: the
    // lambda called once, as one copy, spilled 8-16 bytes there.
    auto run_step = [&](const int step, auto mask_code) {
      constexpr bool kMaskCode = decltype(mask_code)::value;
      float dq[32];
      uint32_t pa[BM / 16][4], dsa[BM / 16][4];
      const int stage = step % kStages, h = step_h, m0 = step_mb * BM;
      const uint32_t q_addr = q_addr0 + stage * C::kQBytes, o_addr = o_addr0 + stage * C::kQBytes;
      mbarrier_wait(&q_full[stage], (step / kStages) & 1);
      // Varlen: the block's last rows may be the next sequence's: zero Q and dO there (dK
      // and dV multiply them by dS = P = 0). Both warpgroups read every row: split the
      // stores, fence, barrier 5 (256). No one reads this stage before: it was refilled
      // after both warpgroups released it.
      if (kMaskCode && packed && m0 + BM > seq.sq) {
        const int first = seq.sq - m0, thread = threadIdx.x - 128;
        zero_tile_rows(smem + C::kOffQ + stage * C::kQBytes, C::kQChunkBytes, C::kChunks, first, BM, thread, 256);
        zero_tile_rows(smem + C::kOffO + stage * C::kQBytes, C::kQChunkBytes, C::kChunks, first, BM, thread, 256);
        fence_proxy_async();
        named_barrier_sync(5, 256);
      }

      if constexpr (kSplit && kFlat && !kDeterministic) if (split_queries) {
        // d 256, split queries (p.d256_split_queries; docs/hopper_backward_d256.md): S^T and
        // dP^T for this warpgroup's 32 queries only (m64n32, K = 256), where both warpgroups
        // computed all 64 -- the MMA work of a step 20 units of 64^3 instead of 28. P^T and
        // dS^T go to shared memory in halves (P^T in the staging buffer's 16 KB, unused with
        // every dQ chunk by atomics: two 8 KB tiles by step parity, as dS^T's); once both
        // halves are there (barrier 1), dV and dK read them as A from shared memory, and dQ
        // as before. The tiles' reuse two steps later is ordered as dS^T's (see the d 256
        // branch below): each warpgroup finishes a step's wgmmas before its next barrier 1.
        const int q_first = 32 * cw;
        float s[16], dp[16];
        wgmma_fence();
        issue_scores_transposed<D, T, BM, 32>(s, k_addr, q_addr + q_first * 128, cw);
        issue_scores_transposed<D, T, BM, 32>(dp, v_addr, o_addr + q_first * 128, cw);
        const int row_skip = int((int64_t(h) * row_pitch + seq.q_token + m0) & 3);
        const float* lse2 = sRows + stage * 2 * C::kRowFloats + row_skip + q_first;
        const float* drow = lse2 + C::kRowFloats;
        wgmma_wait_group<1>();  // S^T done
#pragma unroll
        for (int i = 0; i < 16; ++i) fence_operand(s[i]);
        scores_to_probabilities<32>(s, lse2, t, scale_log2, p, softcap);
        wgmma_wait_group<0>();  // dP^T done
#pragma unroll
        for (int i = 0; i < 16; ++i) fence_operand(dp[i]);
        probabilities_to_ds<32>(s, dp, lse2, drow, t, p, softcap);
        if constexpr (kMaskCode) mask_step(s, dp, m0 + q_first);
        uint32_t pa_half[2][4], dsa_half[2][4];
        scores_to_a<T, 32>(pa_half, s);
        scores_to_a<T, 32>(dsa_half, dp);
        const uint32_t ds_tile = ds_addr0 + (step & 1) * C::kDsBytes;
        const uint32_t pt_tile = smem_u32(smem + C::kOffDqStage) + (step & 1) * C::kDsBytes;
        store_half_transposed(pt_tile, pa_half, cw, 16 * wq, lane);
        store_half_transposed(ds_tile, dsa_half, cw, 16 * wq, lane);
        fence_proxy_async();  // the generic-proxy stores, before the wgmmas (async proxy) read them
        named_barrier_sync(1, 256);
        // dV (G1), dQ chunk 2 w (G2), dK (G3); G1 and G2 waited for; chunk 2 w + 1 (G4) into
        // registers of its own, then chunk 2 w's float4 atomics beside dK and G4; dK waited
        // for, the stage released; G4, its atomics. (G4 into dq itself would wait for the
        // atomics to read those registers: the old step's top stall, ncu; its own registers
        // serialised the old step's wgmmas, but fit beside this step's halved S^T / dP^T.)
        wgmma_fence();
        issue_key_gradient_from_tile<T>(dv, pt_tile, o_addr, cw);
        wgmma_commit_group();
        issue_dq<D, T, BM>(dq, ds_tile, k_addr, 2 * cw);
        wgmma_fence();
        issue_key_gradient_from_tile<T>(dk, ds_tile, q_addr, cw);
        wgmma_commit_group();
        wgmma_wait_group<1>();  // dV and dQ chunk 2 w done (groups complete in order)
#pragma unroll
        for (int i = 0; i < C::kKeyCols / 2; ++i) fence_operand(dv[i]);
#pragma unroll
        for (int i = 0; i < 32; ++i) fence_operand(dq[i]);
        const int64_t slot = dq_slot(seq.q_token, m0, b);
        float dq_next[32];
        issue_dq<D, T, BM>(dq_next, ds_tile, k_addr, 2 * cw + 1);
        flat_atomic_add_dq(p.dq_accum, order.slots, D / 64, h, slot, 2 * cw, dq);
        wgmma_wait_group<1>();  // dK done: the last reader of this stage's Q / dO
#pragma unroll
        for (int i = 0; i < C::kKeyCols / 2; ++i) fence_operand(dk[i]);
        __syncwarp();  // every lane's reads of the stage's rows before lane 0's release
        if (lane == 0) mbarrier_arrive(&q_empty[stage]);
        wgmma_wait_group<0>();  // dQ chunk 2 w + 1
#pragma unroll
        for (int i = 0; i < 32; ++i) fence_operand(dq_next[i]);
        flat_atomic_add_dq(p.dq_accum, order.slots, D / 64, h, slot, 2 * cw + 1, dq_next);
        return;
      }

      // S^T = K_w Q^T and dP^T = V_w dO^T (M = this warpgroup's 64 keys, N = the 64
      // queries, K = the head dim), as two commit groups so P^T can start before dP^T is done.
      float s[BM / 2], dp[BM / 2];
      wgmma_fence();
      issue_scores_transposed<D, T, BM>(s, k_addr, q_addr, cw);
      issue_scores_transposed<D, T, BM>(dp, v_addr, o_addr, cw);

      // Accumulator element 4i + e: key row g + 8 (e >> 1), query column 8i + 2t + (e & 1).
      // The copy started up to 3 rows early (the producer's r0): skip them.
      const int row_skip = int((int64_t(h) * row_pitch + seq.q_token + m0) & 3);
      const float* lse2 = sRows + stage * 2 * C::kRowFloats + row_skip;
      const float* drow = lse2 + C::kRowFloats;
      // Softcap c: P = 2^(c log2(e) th - lse2) with th = tanh(s scale / c), and
      // dS = P (dP - D) (1 - th^2) (the scale is applied to dK / dQ later, as without). th
      // takes P's place in s while the dP wgmma runs; P and dS follow once dP is there.
      wgmma_wait_group<1>();  // S^T done (groups complete in order)
#pragma unroll
      for (int i = 0; i < BM / 2; ++i) fence_operand(s[i]);
      scores_to_probabilities<BM>(s, lse2, t, scale_log2, p, softcap);
      wgmma_wait_group<0>();  // dP^T done
#pragma unroll
      for (int i = 0; i < BM / 2; ++i) fence_operand(dp[i]);
      probabilities_to_ds<BM>(s, dp, lse2, drow, t, p, softcap);
      // Per-element mask only where the tile crosses the causal diagonal, a window edge, the
      // end of the keys or of the queries (masked: m0 + BM > sq, n0 + BN > sk, or has_right and
      // n0 + BN - 1 > m0 + shift + right, or has_left and n0 < m0 + BM - 1 + shift - left; see
      // unmasked_lo / unmasked_hi).
      if constexpr (kMaskCode) mask_step(s, dp, m0);

      // P^T and dS^T as 16-bit A fragments (k16 slices along the queries).
      scores_to_a<T, BM>(pa, s);
      scores_to_a<T, BM>(dsa, dp);

      const int ds_buffer = step & 1;
      // Once the dV and dQ wgmmas are waited for: fences on what they wrote or read.
      auto after_dv_and_dq = [&] {
#pragma unroll
        for (int i = 0; i < C::kKeyCols / 2; ++i) fence_operand(dv[i]);
#pragma unroll
        for (int i = 0; i < 32; ++i) fence_operand(dq[i]);
#pragma unroll
        for (int k = 0; k < BM / 16; ++k)
#pragma unroll
          for (int r = 0; r < 4; ++r) fence_operand(pa[k][r]);
      };
      // Once dK's wgmma is waited for (the last reader of this stage's Q / dO): its fences, and
      // the stage released.
      auto release_stage = [&] {
#pragma unroll
        for (int i = 0; i < C::kKeyCols / 2; ++i) fence_operand(dk[i]);
#pragma unroll
        for (int k = 0; k < BM / 16; ++k)
#pragma unroll
          for (int r = 0; r < 4; ++r) fence_operand(dsa[k][r]);
        // Every wgmma reading this stage's Q / dO is done, and so are this warp's reads of its
        // lse2 / D rows: __syncwarp orders all 32 lanes' reads before lane 0's arrive (a
        // release for lane 0 alone), so the producer's next bulk copy into the stage cannot
        // overtake a lane's read (compute-sanitizer racecheck flagged it without).
        __syncwarp();
        if (lane == 0) mbarrier_arrive(&q_empty[stage]);
      };
      if constexpr (kSplit) {
        // d 256. dS^T -> shared memory, each warpgroup half the queries (both hold all of it),
        // then: dV (G1); once both halves are stored (barrier 1, as d 128: the other
        // warpgroup's reads of this buffer two steps ago ended before it passed barrier 1 one
        // step ago), dQ chunk 2 w (G2); dK (G3); G1 and G2 waited for, chunk 2 w added while
        // dK runs; chunk 2 w + 1 (G4); dK waited for, the stage released; G4, its add.
        unsigned char* ds_tile = smem + C::kOffDs + ds_buffer * C::kDsBytes;
        if (cw == 0)
          store_ds_transposed<BM, 0, BM / 16>(smem_u32(ds_tile), dsa, 16 * wq, lane);
        else
          store_ds_transposed<BM, BM / 16, BM / 16>(smem_u32(ds_tile), dsa, 16 * wq, lane);
        fence_proxy_async();  // the generic-proxy stores above, before the wgmma (async proxy) reads
        const uint32_t ds_addr = ds_addr0 + ds_buffer * C::kDsBytes;
        wgmma_fence();
        issue_key_gradient<D, T, BM>(dv, pa, o_addr, cw);
        wgmma_commit_group();
        named_barrier_sync(1, 256);
        issue_dq<D, T, BM>(dq, ds_addr, k_addr, 2 * cw);
        wgmma_fence();
        issue_key_gradient<D, T, BM>(dk, dsa, q_addr, cw);
        wgmma_commit_group();
        wgmma_wait_group<1>();  // dV and dQ chunk 2 w done (groups complete in order)
        after_dv_and_dq();
        // dQ chunk 2 w + c -> dq_accum: float2 atomics, or (flat) the one staging buffer in
        // this warpgroup's turn (the writer's sequence), stored thread-major as the d 128
        // kernel's parts, for the writer's 1-D bulk reduce-add into part 2 w + c -- the first
        // p.flat_atomic_chunks chunks by float4 atomics into that part instead.
        auto add_dq_chunk = [&](int c) {
          if constexpr (kFlat) {
            if (c < p.flat_atomic_chunks) {
              flat_atomic_add_dq(p.dq_accum, order.slots, D / 64, h, dq_slot(seq.q_token, m0, b), 2 * cw + c, dq);
              return;
            }
            named_barrier_sync(dq_free_barrier(cw), kDqWarpgroupThreads);
            float4* part = reinterpret_cast<float4*>(smem + C::kOffDqStage);
            const int tid = threadIdx.x % 128;
#pragma unroll
            for (int n = 0; n < 8; ++n)
              part[n * 128 + tid] = make_float4(dq[4 * n], dq[4 * n + 1], dq[4 * n + 2], dq[4 * n + 3]);
            fence_proxy_async();  // the generic-proxy stores, before the bulk reduce (async proxy) reads them
            named_barrier_arrive(dq_staged_barrier(cw), kDqWarpgroupThreads);
          } else {
            atomic_add_dq<8, D>(p, seq, h, m0, key_col0 + 64 * c, wq, g, t, dq);
          }
        };
        // Deterministic: the key blocks above this one have added theirs (the order warp).
        if constexpr (kDeterministic) named_barrier_sync(kDqReadyBarrier, kDqOrderThreads);
        add_dq_chunk(0);
#pragma unroll
        for (int i = 0; i < 32; ++i) fence_operand(dq[i]);  // read before G4 overwrites them
        issue_dq<D, T, BM>(dq, ds_addr, k_addr, 2 * cw + 1);
        wgmma_wait_group<1>();  // dK done: the last reader of this stage's Q / dO
        release_stage();
        wgmma_wait_group<0>();  // dQ chunk 2 w + 1
#pragma unroll
        for (int i = 0; i < 32; ++i) fence_operand(dq[i]);
        add_dq_chunk(1);
        if constexpr (kDeterministic) {
          __syncwarp();  // the lanes that skipped rows past sq, back in step for the barrier
          named_barrier_arrive(kDqDoneBarrier, kDqOrderThreads);
        }
      } else {
        // dS^T -> shared memory (double-buffered across steps), for the dQ wgmma.
        store_ds_transposed<BM>(ds_addr0 + ds_buffer * C::kDsBytes, dsa, 64 * cw + 16 * wq, lane);
        fence_proxy_async();  // the generic-proxy stores above, before the wgmma (async proxy) reads

        // d = 128: dV += P^T dO now, dQ next and dK += dS^T Q last, so that dQ is handed over
        // while dK's wgmma runs (H200: 1.05x the backward at d 128, 0.92x at d 64, whose short
        // steps then release their Q / dO stage later: scripts/hopper_ab.sh, 2026-12-01). d = 64:
        // dV and dK as one commit group, then dQ, all waited for before the hand-over. BM = 128
        // (steps as long as d = 128's) takes d = 128's order.
        constexpr bool kDqFirst = D == 128 || kWideM;
        wgmma_fence();
        issue_key_gradient<D, T, BM>(dv, pa, o_addr, cw);
        if constexpr (!kDqFirst) issue_key_gradient<D, T, BM>(dk, dsa, q_addr, cw);
        wgmma_commit_group();

        // dQ = dS K (this warpgroup's part, see issue_dq).
        if constexpr (D == 128 || kWideM) {
          // Both warpgroups' dS^T rows are needed: wait for the other's stores (and its
          // fence). The other warpgroup's reads of this buffer (two steps ago) finished
          // before it arrived here one step ago, so the buffer was free to overwrite.
          named_barrier_sync(1, 256);
        } else {
          // Only this warpgroup's dS^T rows (its own keys): its four warps' stores.
          named_barrier_sync(1 + cw, 128);
        }
        issue_dq<D, T, BM>(dq, ds_addr0 + ds_buffer * C::kDsBytes, k_addr, cw);
        // Wait for the gradients (fences on everything they wrote or read), hand dQ over; d = 128
        // with dK still running.
        if constexpr (kDqFirst) {
          wgmma_fence();
          issue_key_gradient<D, T, BM>(dk, dsa, q_addr, cw);
          wgmma_commit_group();
          wgmma_wait_group<1>();  // dV and dQ done (groups complete in order)
        } else {
          wgmma_wait_group<0>();
        }
        after_dv_and_dq();
        // dK done (at d = 128 only after the hand-over): the last reader of this stage's Q.
        if constexpr (!kDqFirst) release_stage();
        // dQ -> dq_accum[token][h][:] (unscaled; the finish kernel multiplies by scale).
        // Accumulator element 4n + 2 half + {0, 1}: query row 16 wq + g + 8 half, columns
        // dq_first_column(cw) + 8n + 2t, +1.
        const int dq_col0 = dq_first_column<D>(cw);
        // d = 64 deterministic: first the two warpgroups' partial sums -> one, 32 columns each
        // (tiles n < 4), so that both the bulk and the atomic adds give one fixed order.
        constexpr bool kCombine = kDeterministic && D == 64 && !kWideM;
        if constexpr (kCombine) {
          float2* swap = reinterpret_cast<float2*>(smem + C::kOffSwap + kShift) + (step & 1) * 2 * 8 * 128;
          if (cw == 0)
            dq_combine_halves<0>(dq, swap, cw, threadIdx.x % 128);
          else
            dq_combine_halves<4>(dq, swap, cw, threadIdx.x % 128);
        }
        [[maybe_unused]] constexpr int kTiles = kCombine ? 4 : 8;
        if (flat_atomics) {
          // The flat layout by float4 atomics (p.flat_atomic_chunks): into part cw (d 128) or
          // 0 of the block's slot; BM = 128: warpgroup w's rows are the slot of row m0 + 64 w,
          // skipped past the sequence (that slot may be the next sequence's first).
          const int row0 = m0 + (kWideM ? 64 * cw : 0);
          if (row0 < seq.sq)
            flat_atomic_add_dq(p.dq_accum, order.slots, D / 64, h, dq_slot(seq.q_token, row0, b), D == 128 ? cw : 0,
                               dq);
        } else if constexpr (kBulk) {
          // Bulk dQ: the tile goes to shared memory, the dQ writer adds it (see there). Per
          // warpgroup: this warpgroup's own "free" / "staged" barriers with the writer.
          const int free_barrier = kPerWarpgroup ? dq_free_barrier(cw) : kDqFreeBarrier;
          const int staged_barrier = kPerWarpgroup ? dq_staged_barrier(cw) : kDqStagedBarrier;
          const int barrier_threads = kPerWarpgroup ? kDqWarpgroupThreads : kDqOrderThreads;
          // The adds of step - 2 (one buffer: step - 1) have read it.
          named_barrier_sync(free_barrier, barrier_threads);
          unsigned char* stage_tile =
              smem + C::kOffDqStage + (step % C::kDqBuffers) * C::kDqBufferBytes + cw * 2 * C::kDqChunkBytes;
          if constexpr (kFlat) {
            // Thread-major (the flat layout, backward_sm90.hpp): float4 n * 128 + tid = this
            // thread's tile n; a warp's store is 512 contiguous bytes. Rows past the sequence
            // are its slot's own unused rows (never read): no zeroing.
            float4* part = reinterpret_cast<float4*>(stage_tile);
            const int tid = threadIdx.x % 128;
#pragma unroll
            for (int n = 0; n < 8; ++n)
              part[n * 128 + tid] = make_float4(dq[4 * n], dq[4 * n + 1], dq[4 * n + 2], dq[4 * n + 3]);
          } else {
            const int valid_rows = seq.sq - m0 - (kWideM ? 64 * cw : 0);
            if (valid_rows >= 64)
              dq_stage_tile<kTiles, true>(stage_tile, dq, wq, g, t, valid_rows);
            else
              dq_stage_tile<kTiles, false>(stage_tile, dq, wq, g, t, valid_rows);
          }
          fence_proxy_async();  // the generic-proxy stores above, before the bulk reduce (async proxy) reads them
          named_barrier_arrive(staged_barrier, barrier_threads);
        } else if constexpr (kDeterministic) {
          // The key blocks above this one have added theirs (the order warp's acquire).
          named_barrier_sync(kDqReadyBarrier, kDqOrderThreads);
          atomic_add_dq<kTiles, D>(p, seq, h, m0, kCombine ? 32 * cw : dq_col0, wq, g, t, dq);
          // Issued: the order warp may count this key block in (its release covers them).
          __syncwarp();  // the lanes that skipped rows past sq, back in step for the barrier
          named_barrier_arrive(kDqDoneBarrier, kDqOrderThreads);
        } else {
          atomic_add_dq<kTiles, D>(p, seq, h, m0, dq_col0, wq, g, t, dq);
        }
        if constexpr (kDqFirst) {
          wgmma_wait_group<0>();
          release_stage();
        }
      }
    };
    for (int step = 0; step < steps.steps; ++step, next_block()) {
      const int m0 = step_mb * BM;
      if (kColdPaths && (edge_keys || m0 < unmasked_lo || m0 > unmasked_hi))
        run_step(step, std::true_type{});
      else
        run_step(step, std::false_type{});
    }

    // dK = scale dS^T Q, dV = P^T dO for this thread's key rows (rows past Sk are not
    // written; a block no query sees writes zeros), d_qk / d_v columns of them (past those, the
    // zero padding of head dims the kernel's D rounds up).
    if (p.quad_stores) {
      // As the forward's O (store_o_row): a 4 x 4 transpose within the quad gives each lane
      // 16 contiguous bytes and the quad 64, so every 32-byte sector is written whole. Every
      // lane takes part (the shuffles); `keep` says whether its row exists. (One loop for both
      // stores, choosing per row, spilled 32-40 bytes in the d 64 kernels: ptxas.)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int j = key0 + 8 * half;
        const bool keep = j < seq.sk_rows;
        constexpr int kCols = C::kKeyCols;  // from key_col0 (d 256: this warpgroup's half)
        uint32_t packed[kCols / 8];
#pragma unroll
        for (int n = 0; n < kCols / 8; ++n)
          packed[n] = cuda::pack2<T>(dk[4 * n + 2 * half] * p.scale, dk[4 * n + 2 * half + 1] * p.scale);
        store_o_row<kCols>(keep ? cuda::key_row<T>(p, p.dk, seq, b, j, hk) + key_col0 : nullptr, packed, t, keep,
                           p.d_qk - key_col0);
#pragma unroll
        for (int n = 0; n < kCols / 8; ++n) packed[n] = cuda::pack2<T>(dv[4 * n + 2 * half], dv[4 * n + 2 * half + 1]);
        store_o_row<kCols>(keep ? cuda::key_row<T>(p, p.dv, seq, b, j, hk) + key_col0 : nullptr, packed, t, keep,
                           p.d_v - key_col0);
      }
      return;
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int j = key0 + 8 * half;
      if (j >= seq.sk_rows) continue;
      T* dk_row = cuda::key_row<T>(p, p.dk, seq, b, j, hk) + key_col0;
      T* dv_row = cuda::key_row<T>(p, p.dv, seq, b, j, hk) + key_col0;
#pragma unroll
      for (int n = 0; n < C::kKeyCols / 8; ++n) {
        if (key_col0 + 8 * n < p.d_qk)
          *reinterpret_cast<uint32_t*>(dk_row + 8 * n + 2 * t) =
              cuda::pack2<T>(dk[4 * n + 2 * half] * p.scale, dk[4 * n + 2 * half + 1] * p.scale);
        if (key_col0 + 8 * n < p.d_v)
          *reinterpret_cast<uint32_t*>(dv_row + 8 * n + 2 * t) = cuda::pack2<T>(dv[4 * n + 2 * half], dv[4 * n + 2 * half + 1]);
      }
    }
  }
#else
  __trap();  // built without sm_90a code: the host never launches this (backward_sm90_host.cpp checks)
#endif
}

}  // namespace flash4::hopper

// ---- launchers (instantiated in backward_sm90_hdim*.cu) -----------------------------------

#include "cuda/cuda_check.hpp"
#include "hopper/launch.hpp"

namespace flash4::hopper {

template <int D>
void backward_sm90(const BackwardTensorMaps& maps, const cuda::AttentionParams& p, int64_t row_pitch,
                   const VarlenTiles& list, int64_t list_capacity, const DqOrder* order, DqAdd dq_add,
                   bool wide_m, cudaStream_t stream) {
  using C = BackwardSm90Config<D>;
  // d 256: k / v boxes of kBackwardSplitKeyBoxRows, and varlen work lists of blocks that size
  // (VarlenTilesScratch::key_rows, the host's key_block_rows).
  static_assert(C::kBlockN == (C::kSplitHeadDim ? kBackwardSplitKeyBoxRows : kTmaBoxRows) &&
                    C::kBlockM == kBackwardQBoxRows,
                "tensor-map boxes = tile rows");
  static_assert(C::kSplitHeadDim || C::kBlockN == kVarlenBlockRows, "varlen work list blocks = key blocks");
  static_assert(C::kBlockM == kBackwardQBoxRows, "dq_order_slots counts query blocks of kBackwardQBoxRows");
  // BM = 128 (d = 64, wide_m): its query blocks are pairs of kBackwardQBoxRows blocks, so
  // dq_order_slots' slots (one per 64-row block) hold them too; q / dout boxes of 128 rows.
  static_assert(BackwardSm90Config<64, 128>::kBlockM == kBackwardWideQBoxRows, "tensor-map boxes = tile rows");
  static_assert(BackwardSm90Config<64, 128>::kBlockM % kBackwardQBoxRows == 0, "dq_order_slots holds the blocks");
  // Dense: (key block, KV head, sequence); deterministic, the same tiles in one dimension (the
  // host checked the count fits). Varlen: (capacity x KV heads) in one dimension; the kernel
  // reads how many pairs exist.
  const int64_t n_blocks = (p.seqlen_k + C::kBlockN - 1) / C::kBlockN;
  const dim3 grid = list.pairs != nullptr ? dim3(unsigned(list_capacity * p.heads_kv))
                    : order != nullptr    ? dim3(unsigned(n_blocks * p.heads_kv * p.batch))
                    : p.heads_first_grid  ? dim3(unsigned(p.heads_kv), unsigned(n_blocks), unsigned(p.batch))
                                          : dim3(unsigned(n_blocks), unsigned(p.heads_kv), unsigned(p.batch));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  DqOrder dq_order = order != nullptr ? *order : DqOrder{};
  // DqAdd::flat: its layout's slots per head ride in the order's field (deterministic calls have
  // them there already, the same number).
  if (dq_add == DqAdd::flat) dq_order.slots = dq_order_slots(p.tokens_q, p.batch);
  auto launch = [&](auto kernel, size_t smem) {
    FLASH4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, C::kThreads, smem, stream>>>(maps.q, maps.k, maps.v, maps.dout, p, row_pitch, list, dq_order,
                                                maps.dq_accum);
    FLASH4_CUDA_CHECK_LAUNCH("attention_backward_sm90_kernel");
  };
  const bool bf16 = p.dtype == cuda::DType::bf16;
  // The kernel of D, dQ add and BM for this call's dtype and softcap (BM = 128: never softcap).
  auto kernel_for = [&](auto deterministic, auto add, auto bm) {
    constexpr bool kDet = decltype(deterministic)::value;
    constexpr DqAdd kAdd = decltype(add)::value;
    constexpr int kBMv = decltype(bm)::value;
    auto of_dtype = [&](auto softcap) {
      constexpr bool kSc = decltype(softcap)::value;
      return bf16 ? attention_backward_sm90_kernel<D, __nv_bfloat16, kDet, kAdd, kBMv, kSc>
                  : attention_backward_sm90_kernel<D, __half, kDet, kAdd, kBMv, kSc>;
    };
    if constexpr (kBMv == 64) {
      if (p.softcap > 0) return of_dtype(std::true_type{});
    }
    return of_dtype(std::false_type{});
  };
  using Det = std::true_type;
  using NotDet = std::false_type;
  using BM64 = std::integral_constant<int, 64>;
  using BM128 = std::integral_constant<int, 128>;
  using Atomics = std::integral_constant<DqAdd, DqAdd::atomics>;
  using Bulk = std::integral_constant<DqAdd, DqAdd::bulk>;
  using Flat = std::integral_constant<DqAdd, DqAdd::flat>;
  using PerWarpgroup = std::integral_constant<DqAdd, DqAdd::bulk_per_warpgroup>;
  auto launch_atomics = [&] {
    if (order != nullptr)
      launch(kernel_for(Det{}, Atomics{}, BM64{}), C::kSmemBytesDeterministic);
    else
      launch(kernel_for(NotDet{}, Atomics{}, BM64{}), C::kSmemBytes);
  };
  if constexpr (C::kSplitHeadDim) {
    // The flat layout's one-buffer hand-over (not deterministic), else float2 atomics.
    if (dq_add == DqAdd::flat && order == nullptr)
      launch(kernel_for(NotDet{}, Flat{}, BM64{}), C::kSmemBytesBulk);
    else
      launch_atomics();
  } else {
    if constexpr (D == 64) {
      if (wide_m) {  // the host asks only with the lock-step hand-over: bulk, or into the flat layout
        using W = BackwardSm90Config<64, 128>;
        auto launch_wide = [&](auto add) {
          if (order != nullptr)
            launch(kernel_for(Det{}, add, BM128{}), W::kSmemBytesDeterministicBulk);
          else
            launch(kernel_for(NotDet{}, add, BM128{}), W::kSmemBytesBulk);
        };
        if (dq_add == DqAdd::flat)
          launch_wide(Flat{});
        else
          launch_wide(Bulk{});
        return;
      }
    }
    if (dq_add == DqAdd::flat && order == nullptr) {
      launch(kernel_for(NotDet{}, Flat{}, BM64{}), C::kSmemBytesBulk);
    } else if (dq_add == DqAdd::bulk_per_warpgroup && order == nullptr) {
      launch(kernel_for(NotDet{}, PerWarpgroup{}, BM64{}), C::kSmemBytesBulk);
    } else if (dq_add != DqAdd::atomics) {
      if (order != nullptr)
        launch(kernel_for(Det{}, Bulk{}, BM64{}), C::kSmemBytesDeterministicBulk);
      else
        launch(kernel_for(NotDet{}, Bulk{}, BM64{}), C::kSmemBytesBulk);
    } else {
      launch_atomics();
    }
  }
}

}  // namespace flash4::hopper
