// Portable forward kernel (sm80+), FlashAttention-2 style: one CTA of 4 warps per
// (query block, query head, sequence); Q stays in shared memory and K / V blocks stream
// through it with cp.async. Two pipelines, chosen at launch by shared-memory size:
//  - two stages: K and V of block j+1 load during all of block j's work (double buffer);
//  - one stage (FA2's scheme): one buffer each, V loads during S = Q K^T and the
//    softmax, the next K during O += P V.
// Online softmax in the exp2 domain with FA4's conditional rescaling and (optionally)
// part of the exponentials emulated on the FMA units (fa4_softmax.cuh).
//
// Templates: head dims (padded: the kernel zero-fills columns past d) and the dtype.
// Masks, softcap, sink, paging and the FA4 switches are run-time flags.
#pragma once

#include <cuda_runtime.h>

#include "cuda_check.hpp"
#include "kernels.hpp"
#include "sequence.cuh"
#include "tiles.cuh"

namespace flash4::cuda {

template <int DQK, int DV>
struct ForwardTile {
  static constexpr int kWarps = 4, kThreads = 32 * kWarps;
  // d <= 64 fits three CTAs per SM (<= 168 registers a thread); larger head dims need them.
  static constexpr int kMinBlocks = DQK <= 64 && DV <= 64 ? 3 : 1;
  static constexpr int kMT = DQK <= 128 ? 2 : 1;  // 16-row tiles per warp
  static constexpr int kBlockM = 16 * kMT * kWarps;
  static constexpr int kBlockN = 64;
  static constexpr int kNT = kBlockN / 8;  // S accumulator tiles per warp row
  static constexpr int kOT = DV / 8;       // O accumulator tiles
  static constexpr int kLdQ = padded_ld<DQK>, kLdK = padded_ld<DQK>, kLdV = padded_ld<DV>;
  static constexpr int kSmemQ = kBlockM * kLdQ, kSmemK = kBlockN * kLdK, kSmemV = kBlockN * kLdV;
  static constexpr size_t smem_bytes(int stages) { return size_t(kSmemQ + stages * (kSmemK + kSmemV)) * 2; }
  static_assert(DV <= DQK, "O is staged through Q's shared memory");
};

// The factor between the scores scores_to_logits leaves and log2-domain logits: the
// plain case keeps raw Q.K (max and exponent then take the scale in one FFMA, as FA2
// does); softcap (and a negative scale, which would flip the max) transform in place.
__device__ __forceinline__ float logit_scale(const AttentionParams& p) {
  return (p.softcap > 0 || !(p.scale_log2 > 0)) ? 1.0f : p.scale_log2;
}

// Scores of one S accumulator block -> logits / logit_scale(p) (masked: -inf). Uniform
// branches outside the element loops, so each path is straight-line code; row intervals
// are computed only for masked blocks (few), which keeps them out of the registers the
// main loop holds.
template <int MT, int NT>
__device__ __forceinline__ void scores_to_logits(float (&s)[MT][NT][4], const AttentionParams& p, bool masked,
                                                 const Sequence& seq, int row0, int n0) {
  if (p.softcap > 0) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          s[mt][nt][e] = p.softcap_log2 * tanh_softcap(s[mt][nt][e] * p.softcap_inv_scale);
  } else if (!(p.scale_log2 > 0)) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] *= p.scale_log2;
  }
  if (masked) {
    const int t = lane_id() & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const KeyInterval r = visible_keys(p, row0 + 16 * mt + 8 * half, seq);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int j = n0 + 8 * nt + 2 * t + c;
            if (j < r.lo || j >= r.hi) s[mt][nt][2 * half + c] = -__builtin_huge_valf();
          }
      }
  }
}

// P = 2^(x - m) in place, adding each row's sum into l. With EMULATE, one n8 tile in
// four (the last of each 32 columns) goes to the FMA-pipe polynomial, the rest to MUFU,
// so the two units work side by side.
template <bool EMULATE, int MT, int NT>
__device__ __forceinline__ void exponentiate(float (&s)[MT][NT][4], float scale, const float (&offset)[MT][2],
                                             float (&l)[MT][2]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = fmaf(s[mt][nt][e], scale, -offset[mt][e >> 1]);
        const float y = (EMULATE && (nt & 3) == 3) ? exp2_emulated<3>(x) : exp2_hardware(x);
        s[mt][nt][e] = y;
        l[mt][e >> 1] += y;
      }
}

template <int DQK, int DV, typename T>
__global__ void __launch_bounds__(ForwardTile<DQK, DV>::kThreads, ForwardTile<DQK, DV>::kMinBlocks)
    attention_forward_kernel(const AttentionParams p,
                                                                                            const int two_stages) {
  using Tile = ForwardTile<DQK, DV>;
  constexpr int MT = Tile::kMT, NT = Tile::kNT, OT = Tile::kOT;
  constexpr int BM = Tile::kBlockM, BN = Tile::kBlockN, kThreads = Tile::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK0 = sQ + Tile::kSmemQ;  // stage s: K at sK0 + s * (kSmemK + kSmemV), V right after

  // Heaviest (last, under causal) query blocks first.
  const int m_block = int(gridDim.x) - 1 - int(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group;
  const Sequence seq = sequence_of(p, b);
  const int m0 = m_block * BM;
  if (m0 >= seq.sq) return;
  const int rows_q = min(BM, seq.sq - m0);
  const int warp = threadIdx.x / 32, lane = lane_id(), g = lane >> 2, t = lane & 3;
  const int warp_row0 = warp * 16 * MT;  // first row of this warp within the block

  // Key blocks [nb_lo, nb_hi): the union of the rows' visible keys.
  const KeyInterval first_row = visible_keys(p, m0, seq), last_row = visible_keys(p, m0 + rows_q - 1, seq);
  const int n_lo = first_row.lo, n_hi = last_row.hi;
  const int nb_lo = n_lo / BN;
  const int nb_hi = n_hi > n_lo ? (n_hi + BN - 1) / BN : nb_lo;

  const T* q_any = static_cast<const T*>(p.q.data);
  load_rows_async<BM, DQK, kThreads>(sQ, query_row<const T>(p.q, seq, m0, h), p.q.row_stride, rows_q, p.d_qk, q_any);
  // Blocks run from nb_hi - 1 down (the masked diagonal first); block nb uses stage
  // (nb_hi - 1 - nb) & 1 with two stages, stage 0 with one.
  auto stage_of = [&](int nb) { return two_stages ? (nb_hi - 1 - nb) & 1 : 0; };
  auto k_tile = [&](int nb) { return sK0 + stage_of(nb) * (Tile::kSmemK + Tile::kSmemV); };
  // Paged K / V need a page-table lookup per row; every other layout is strided rows.
  auto load_k = [&](int nb) {
    const int n0 = nb * BN, rows = min(BN, seq.sk - n0);
    if (p.page_table == nullptr)
      load_rows_async<BN, DQK, kThreads>(k_tile(nb), key_row<const T>(p, p.k, seq, b, n0, hk), p.k.row_stride, rows,
                                         p.d_qk, q_any);
    else
      load_tile_async<BN, DQK, kThreads>(
          k_tile(nb), [&](int r) { return key_row<const T>(p, p.k, seq, b, n0 + r, hk); }, rows, p.d_qk, q_any);
  };
  auto load_v = [&](int nb) {
    const int n0 = nb * BN, rows = min(BN, seq.sk - n0);
    if (p.page_table == nullptr)
      load_rows_async<BN, DV, kThreads>(k_tile(nb) + Tile::kSmemK, key_row<const T>(p, p.v, seq, b, n0, hk),
                                        p.v.row_stride, rows, p.d_v, q_any);
    else
      load_tile_async<BN, DV, kThreads>(
          k_tile(nb) + Tile::kSmemK, [&](int r) { return key_row<const T>(p, p.v, seq, b, n0 + r, hk); }, rows,
          p.d_v, q_any);
  };
  if (nb_hi > nb_lo) {
    load_k(nb_hi - 1);
    if (two_stages) load_v(nb_hi - 1);
  }
  cp_async_commit();

  RowMax row_max[MT][2];
  float row_sum[MT][2];
  float o[MT][OT][4];
  zero(o);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) row_sum[mt][0] = row_sum[mt][1] = 0.0f;

  const float scale = logit_scale(p);
  for (int nb = nb_hi - 1; nb >= nb_lo; --nb) {
    const int n0 = nb * BN;
    const T* sK = k_tile(nb);
    const T* sV = sK + Tile::kSmemK;
    cp_async_wait<0>();
    // K[nb] (two stages: and V[nb]; first block: and Q) landed; every warp is done with
    // block nb + 1, so its buffers may be refilled.
    __syncthreads();
    if (two_stages) {
      if (nb > nb_lo) {
        load_k(nb - 1);
        load_v(nb - 1);
      }
    } else {
      load_v(nb);
    }
    cp_async_commit();

    float s[MT][NT][4];
    zero(s);
    warp_gemm<T, MT, NT, DQK / 16, false, false>(s, sQ, Tile::kLdQ, warp_row0, sK, Tile::kLdK, 0);

    // Whole block visible to every row of the query block: no per-element mask.
    const bool masked = !(last_row.lo <= n0 && first_row.hi >= n0 + BN);
    scores_to_logits(s, p, masked, seq, m0 + warp_row0 + g, n0);

    float offset[MT][2];
    bool rescale = false;
    float factor[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float block_max = -__builtin_huge_valf();
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          block_max = fmaxf(block_max, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
        block_max = quad_max(block_max) * scale;
        factor[mt][half] = row_max[mt][half].update(block_max, p.rescale_tau);
        rescale |= factor[mt][half] != 1.0f;
        row_sum[mt][half] *= factor[mt][half];
        offset[mt][half] = row_max[mt][half].offset();
      }
    // Conditional rescaling: most blocks keep every row's stale max, and the warp skips
    // the pass over O.
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ot = 0; ot < OT; ++ot) {
          o[mt][ot][0] *= factor[mt][0];
          o[mt][ot][1] *= factor[mt][0];
          o[mt][ot][2] *= factor[mt][1];
          o[mt][ot][3] *= factor[mt][1];
        }
    }
    if (p.emulate_exp2)
      exponentiate<true>(s, scale, offset, row_sum);
    else
      exponentiate<false>(s, scale, offset, row_sum);
    uint32_t pa[MT][BN / 16][4];
    accumulators_to_a<T>(pa, s);

    if (!two_stages) {
      cp_async_wait<0>();
      __syncthreads();  // V[nb] landed; every warp is done reading K[nb]
      if (nb > nb_lo) load_k(nb - 1);
      cp_async_commit();
    }
    warp_gemm_a_regs<T, MT, OT, BN / 16, true>(o, pa, sV, Tile::kLdV, 0);
  }

  // Finish: the sink joins the denominator only; O / l; lse = (m + log2 l) ln 2.
  float lse[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float l = quad_sum(row_sum[mt][half]);
      float m = row_max[mt][half].m;
      float f = 1.0f;
      if (p.sink != nullptr) {
        const float xs = p.sink[h] * kLog2e;
        const float m_new = fmaxf(m, xs);
        f = exp2_hardware(m - m_new);  // m = -inf: 0
        l = l * f + exp2_hardware(xs - m_new);
        m = m_new;
      }
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      lse[mt][half] = l > 0.0f ? (m + __log2f(l)) * kLn2 : -__builtin_huge_valf();
#pragma unroll
      for (int ot = 0; ot < OT; ++ot) {
        o[mt][ot][2 * half] *= f * inv;
        o[mt][ot][2 * half + 1] *= f * inv;
      }
    }

  cp_async_wait<0>();  // no loop ran: Q may still be landing in sQ
  __syncthreads();
  store_accumulators<T>(sQ, padded_ld<DV>, warp_row0, 0, o);  // the layout store_tile<., DV> reads
  __syncthreads();
  store_tile<BM, DV, kThreads>(
      sQ, [&](int r) { return query_row<T>(p.out, seq, m0 + r, h); }, rows_q, p.d_v);
  if (p.lse != nullptr && t == 0) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int i = m0 + warp_row0 + 16 * mt + g + 8 * half;
        if (i < seq.sq)
          p.lse[seq.q_start * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + int64_t(i) * p.lse_row_stride] =
              lse[mt][half];
      }
  }
}

template <int DQK, int DV>
size_t forward_smem_bytes(bool two_stages) {
  return ForwardTile<DQK, DV>::smem_bytes(two_stages ? 2 : 1);
}

template <int DQK, int DV>
void forward_hdim(const AttentionParams& p, bool two_stages, cudaStream_t stream) {
  using Tile = ForwardTile<DQK, DV>;
  const dim3 grid((p.seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM, p.heads_q, p.batch);
  if (grid.x == 0 || grid.z == 0) return;
  const size_t smem = Tile::smem_bytes(two_stages ? 2 : 1);
  auto launch = [&](auto kernel) {
    FLASH4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, Tile::kThreads, smem, stream>>>(p, two_stages ? 1 : 0);
    FLASH4_CUDA_CHECK_LAUNCH("attention_forward_kernel");
  };
  if (p.dtype == DType::bf16)
    launch(attention_forward_kernel<DQK, DV, __nv_bfloat16>);
  else
    launch(attention_forward_kernel<DQK, DV, __half>);
}

}  // namespace flash4::cuda
