// Portable backward kernels (sm80+), FlashAttention-2 style.
//
// attention_backward_kernel: one CTA of 8 warps per (key block, KV head, sequence). K and
// V of the block stay in shared memory; the CTA walks every query head of the KV head's
// GQA group and every query block that sees the key block, recomputing
//   S = Q K^T, P = 2^(x - lse log2 e), dP = dO V^T, dS = P (dP - D) (times 1 - tanh^2
//   under softcap),
// and accumulates dV += P^T dO and dK += dS^T Q in registers (so dK / dV sum over the
// group in a fixed order: deterministic). dQ = dS K goes to an fp32 buffer by atomics,
// unless p.deterministic: then attention_backward_dq_kernel, one CTA per (query block,
// query head), recomputes S and dP itself and owns its dQ rows (no atomics).
// Q / dO (and their lse / D rows) are double-buffered when shared memory allows.
#pragma once

#include <cuda_runtime.h>

#include "cuda_check.hpp"
#include "kernels.hpp"
#include "sequence.cuh"
#include "tiles.cuh"

namespace flash4::cuda {

template <int DQK, int DV>
struct BackwardTile {
  static constexpr int kWarps = 8, kThreads = 32 * kWarps;
  // One CTA per SM: capping registers at 128 for two (d = 64) spilled ~300 bytes.
  static constexpr int kMinBlocks = 1;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = DQK <= 128 ? 128 : 64;
  static constexpr int kLdQ = padded_ld<DQK>, kLdK = padded_ld<DQK>, kLdV = padded_ld<DV>, kLdO = padded_ld<DV>;
  static constexpr int kLdP = padded_ld<kBlockN>;
  // Warp layouts of the five products. Each warp owns 32-row (two m16 tiles) blocks where
  // it can: fragments loaded from shared memory then feed two MMAs each, which halves the
  // ldmatrix traffic of one-tile warps and doubles the independent accumulators.
  // S, dP [BM x BN]: 2 x 4 warps, 32 rows x BN / 4 columns each.
  static constexpr int kSWarpsM = 2, kSMT = kBlockM / 16 / kSWarpsM, kSCols = kBlockN / (kWarps / kSWarpsM);
  // dK [BN x DQK], dV [BN x DV]: BN / 32 x (8 / that) warps, 32 key rows each.
  static constexpr int kKvMT = 2, kKvWarpsN = kBlockN / (16 * kKvMT), kKvWarpsD = kWarps / kKvWarpsN;
  static constexpr int kDkCols = DQK / kKvWarpsD, kDvCols = DV / kKvWarpsD;
  // dQ [BM x DQK] (atomic mode): 4 column groups when they stay multiples of 16, else 2.
  static constexpr int kDqWarpsD = (DQK / 4) % 16 == 0 ? 4 : 2, kDqWarpsM = kWarps / kDqWarpsD;
  static constexpr int kDqMT = kBlockM / 16 / kDqWarpsM, kDqCols = DQK / kDqWarpsD;
  static_assert(kSCols % 16 == 0 && kDkCols % 16 == 0 && kDvCols % 16 == 0 && kDqCols % 16 == 0,
                "warp tiles must be whole pairs of n8 tiles");

  static constexpr int kSmemK = kBlockN * kLdK, kSmemV = kBlockN * kLdV, kSmemP = kBlockM * kLdP;
  static constexpr int kSmemQ = kBlockM * kLdQ, kSmemO = kBlockM * kLdO;
  static constexpr size_t smem_bytes(int stages) {
    return size_t(kSmemK + kSmemV + 2 * kSmemP + stages * (kSmemQ + kSmemO)) * 2 + size_t(stages) * 2 * kBlockM * 4;
  }
};

template <int DQK, int DV>
struct DqTile {
  static constexpr int kWarps = 4, kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps, kBlockN = 64;
  static constexpr int kLdQ = padded_ld<DQK>, kLdK = padded_ld<DQK>, kLdV = padded_ld<DV>, kLdO = padded_ld<DV>;
  static constexpr int kSmemQ = kBlockM * kLdQ, kSmemO = kBlockM * kLdO, kSmemK = kBlockN * kLdK;
  static constexpr int kSmemV = kBlockN * kLdV;
  static constexpr size_t smem_bytes(int stages) { return size_t(kSmemQ + kSmemO + stages * (kSmemK + kSmemV)) * 2; }
};

// In place: s <- P, dp <- dS for one warp's accumulator block (row of tile mt, half h:
// row[mt][h]; first column col0). Masked elements (and rows past sq) get P = dS = 0.
// Uniform branches (softcap, mask) sit outside the element loops.
template <int MT, int NT>
__device__ __forceinline__ void probabilities_and_ds(float (&s)[MT][NT][4], float (&dp)[MT][NT][4],
                                                     const AttentionParams& p, bool masked, const int (&row)[MT][2],
                                                     const KeyInterval (&keys)[MT][2], int sq,
                                                     const float (&lse2)[MT][2], const float (&d)[MT][2], int col0) {
  if (p.softcap > 0) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float th = tanh_softcap(s[mt][nt][e] * p.softcap_inv_scale);
          const float prob = exp2_hardware(p.softcap_log2 * th - lse2[mt][e >> 1]);
          s[mt][nt][e] = prob;
          dp[mt][nt][e] = prob * (dp[mt][nt][e] - d[mt][e >> 1]) * (1.0f - th * th);
        }
  } else {
    const float scale = p.scale_log2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float prob = exp2_hardware(fmaf(s[mt][nt][e], scale, -lse2[mt][e >> 1]));
          s[mt][nt][e] = prob;
          dp[mt][nt][e] = prob * (dp[mt][nt][e] - d[mt][e >> 1]);
        }
  }
  if (masked) {
    const int t = lane_id() & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int half = e >> 1, j = col0 + 8 * nt + 2 * t + (e & 1);
          if (row[mt][half] >= sq || j < keys[mt][half].lo || j >= keys[mt][half].hi)
            s[mt][nt][e] = dp[mt][nt][e] = 0.0f;
        }
  }
}

template <int DQK, int DV, typename T>
__global__ void __launch_bounds__(BackwardTile<DQK, DV>::kThreads, BackwardTile<DQK, DV>::kMinBlocks)
    attention_backward_kernel(const AttentionParams p, const int two_stages) {
  using Tile = BackwardTile<DQK, DV>;
  constexpr int BM = Tile::kBlockM, BN = Tile::kBlockN, kThreads = Tile::kThreads;
  constexpr int SMT = Tile::kSMT, SNT = Tile::kSCols / 8, KvMT = Tile::kKvMT, DqMT = Tile::kDqMT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + Tile::kSmemK;
  T* sP = sV + Tile::kSmemV;
  T* sdS = sP + Tile::kSmemP;
  T* sQ0 = sdS + Tile::kSmemP;  // stage s: Q at sQ0 + s * (kSmemQ + kSmemO), dO right after
  const int stages = two_stages ? 2 : 1;
  float* sRows = reinterpret_cast<float*>(sQ0 + stages * (Tile::kSmemQ + Tile::kSmemO));  // [stage][lse2 | D][BM]

  const int n_block = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  const int n0 = n_block * BN;
  if (n0 >= seq.sk_rows) return;
  const int rows_out = min(BN, seq.sk_rows - n0);  // rows of dk / dv this CTA writes
  const int rows_k = max(0, min(BN, seq.sk - n0));  // of which attended keys (the rest get 0)
  const int warp = threadIdx.x / 32, lane = lane_id(), g = lane >> 2, t = lane & 3;
  const int s_row0 = 16 * SMT * (warp % Tile::kSWarpsM), s_col0 = Tile::kSCols * (warp / Tile::kSWarpsM);
  const int kv_row0 = 16 * KvMT * (warp % Tile::kKvWarpsN), kvd = warp / Tile::kKvWarpsN;
  const int dq_row0 = 16 * DqMT * (warp % Tile::kDqWarpsM), dq_col0 = Tile::kDqCols * (warp / Tile::kDqWarpsM);

  QueryInterval qi{0, 0};
  if (rows_k > 0) qi = queries_seeing(p, n0, n0 + rows_k, seq);
  const int mb_lo = qi.begin / BM;
  const int n_mb = qi.end > qi.begin ? (qi.end + BM - 1) / BM - mb_lo : 0;
  const int steps = p.group * n_mb;

  const T* any = static_cast<const T*>(p.q.data);
  load_rows_async<BN, DQK, kThreads>(sK, key_row<const T>(p, p.k, seq, b, n0, hk), p.k.row_stride, rows_k, p.d_qk,
                                     any);
  load_rows_async<BN, DV, kThreads>(sV, key_row<const T>(p, p.v, seq, b, n0, hk), p.v.row_stride, rows_k, p.d_v, any);
  cp_async_commit();

  auto head_of = [&](int step) { return hk * p.group + step / n_mb; };
  auto row0_of = [&](int step) { return (mb_lo + step % n_mb) * BM; };
  auto issue = [&](int step, int stage) {
    const int h = head_of(step), m0 = row0_of(step), rows = min(BM, seq.sq - m0);
    T* q = sQ0 + stage * (Tile::kSmemQ + Tile::kSmemO);
    load_rows_async<BM, DQK, kThreads>(q, query_row<const T>(p.q, seq, m0, h), p.q.row_stride, rows, p.d_qk, any);
    load_rows_async<BM, DV, kThreads>(q + Tile::kSmemQ, query_row<const T>(p.dout, seq, m0, h), p.dout.row_stride, rows,
                                      p.d_v, any);
    const int tid = threadIdx.x;
    if (tid < 2 * BM) {
      const int r = tid % BM;
      const float* src = (tid < BM ? p.lse_log2 : p.d_rows) + int64_t(h) * p.tokens_q + seq.q_token + m0 + r;
      cp_async_4(sRows + stage * 2 * BM + tid, r < rows ? src : p.d_rows, r < rows);
    }
    cp_async_commit();
  };

  float dk[KvMT][Tile::kDkCols / 8][4], dv[KvMT][Tile::kDvCols / 8][4];
  zero(dk);
  zero(dv);
  if (steps > 0) issue(0, 0);
  for (int step = 0; step < steps; ++step) {
    const int stage = two_stages ? (step & 1) : 0;
    cp_async_wait<0>();
    // This step's Q, dO, lse2, D (and K, V) landed, and every warp is done with the
    // previous step: its stage and P / dS may be overwritten. With two stages the next
    // step's loads go out now, into the stage the previous step used, and have the whole
    // step to land (one barrier less per step than loading after a trailing barrier).
    __syncthreads();
    if (two_stages && step + 1 < steps) issue(step + 1, stage ^ 1);
    const int h = head_of(step), m0 = row0_of(step);
    const T* sQ = sQ0 + stage * (Tile::kSmemQ + Tile::kSmemO);
    const T* sdO = sQ + Tile::kSmemQ;
    const float* sLse = sRows + stage * 2 * BM;
    const float* sD = sLse + BM;

    float s[SMT][SNT][4], dp[SMT][SNT][4];
    zero(s);
    zero(dp);
    warp_gemm<T, SMT, SNT, DQK / 16, false, false>(s, sQ, Tile::kLdQ, s_row0, sK, Tile::kLdK, s_col0);
    warp_gemm<T, SMT, SNT, DV / 16, false, false>(dp, sdO, Tile::kLdO, s_row0, sV, Tile::kLdV, s_col0);

    int row[SMT][2];
    KeyInterval keys[SMT][2];
    float lse2[SMT][2], d[SMT][2];
#pragma unroll
    for (int mt = 0; mt < SMT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = s_row0 + 16 * mt + g + 8 * half;
        row[mt][half] = m0 + r;
        keys[mt][half] = visible_keys(p, m0 + r, seq);
        lse2[mt][half] = sLse[r];
        d[mt][half] = sD[r];
      }
    const bool masked = !(m0 + BM <= seq.sq && visible_keys(p, m0 + BM - 1, seq).lo <= n0 &&
                          visible_keys(p, m0, seq).hi >= n0 + BN);
    probabilities_and_ds(s, dp, p, masked, row, keys, seq.sq, lse2, d, n0 + s_col0);
    store_accumulators<T>(sP, Tile::kLdP, s_row0, s_col0, s);
    store_accumulators<T>(sdS, Tile::kLdP, s_row0, s_col0, dp);
    __syncthreads();  // P and dS complete

    warp_gemm<T, KvMT, Tile::kDvCols / 8, BM / 16, true, true>(dv, sP, Tile::kLdP, kv_row0, sdO, Tile::kLdO,
                                                                kvd * Tile::kDvCols);
    warp_gemm<T, KvMT, Tile::kDkCols / 8, BM / 16, true, true>(dk, sdS, Tile::kLdP, kv_row0, sQ, Tile::kLdQ,
                                                                kvd * Tile::kDkCols);
    if (!p.deterministic) {
      float dq[DqMT][Tile::kDqCols / 8][4];
      zero(dq);
      warp_gemm<T, DqMT, Tile::kDqCols / 8, BN / 16, false, true>(dq, sdS, Tile::kLdP, dq_row0, sK, Tile::kLdK,
                                                                   dq_col0);
      float* dq_rows = p.dq_accum + (seq.q_token * p.heads_q + h) * int64_t(p.d_qk);
#pragma unroll
      for (int mt = 0; mt < DqMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < Tile::kDqCols / 8; ++nt)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            // Columns c, c + 1 of one row; d_qk is a multiple of 8, so both or neither exist.
            const int i = m0 + dq_row0 + 16 * mt + g + 8 * half;
            const int c = dq_col0 + 8 * nt + 2 * t;
            if (i < seq.sq && c < p.d_qk) {
              float* dst = dq_rows + int64_t(i) * p.heads_q * p.d_qk + c;
#if __CUDA_ARCH__ >= 900
              atomicAdd(reinterpret_cast<float2*>(dst), make_float2(dq[mt][nt][2 * half], dq[mt][nt][2 * half + 1]));
#else
              atomicAdd(dst, dq[mt][nt][2 * half]);
              atomicAdd(dst + 1, dq[mt][nt][2 * half + 1]);
#endif
            }
          }
    }
    if (!two_stages && step + 1 < steps) {
      __syncthreads();  // the single stage and P / dS are free again
      issue(step + 1, 0);
    }
  }

  // dK = scale * sum dS^T Q, dV = sum P^T dO; rows past the attended keys are zero.
  cp_async_wait<0>();  // no step ran: K / V may still be landing
  __syncthreads();
  store_accumulators<T>(sK, Tile::kLdK, kv_row0, kvd * Tile::kDkCols, dk, p.scale);
  store_accumulators<T>(sV, Tile::kLdV, kv_row0, kvd * Tile::kDvCols, dv);
  __syncthreads();
  store_tile<BN, DQK, kThreads>(
      sK, [&](int r) { return key_row<T>(p, p.dk, seq, b, n0 + r, hk); }, rows_out, p.d_qk);
  store_tile<BN, DV, kThreads>(
      sV, [&](int r) { return key_row<T>(p, p.dv, seq, b, n0 + r, hk); }, rows_out, p.d_v);
}

template <int DQK, int DV, typename T>
__global__ void __launch_bounds__(DqTile<DQK, DV>::kThreads)
    attention_backward_dq_kernel(const AttentionParams p, const int two_stages) {
  using Tile = DqTile<DQK, DV>;
  constexpr int BM = Tile::kBlockM, BN = Tile::kBlockN, kThreads = Tile::kThreads, NT = BN / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + Tile::kSmemQ;
  T* sK0 = sdO + Tile::kSmemO;  // stage s: K at sK0 + s * (kSmemK + kSmemV), V right after

  const int m_block = int(gridDim.x) - 1 - int(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group;
  const Sequence seq = sequence_of(p, b);
  const int m0 = m_block * BM;
  if (m0 >= seq.sq) return;
  const int rows_q = min(BM, seq.sq - m0);
  const int warp = threadIdx.x / 32, lane = lane_id(), g = lane >> 2;

  const KeyInterval first_row = visible_keys(p, m0, seq), last_row = visible_keys(p, m0 + rows_q - 1, seq);
  const int nb_lo = first_row.lo / BN;
  const int nb_hi = last_row.hi > first_row.lo ? (last_row.hi + BN - 1) / BN : nb_lo;

  int row[1][2];
  KeyInterval keys[1][2];
  float lse2[1][2], d[1][2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = m0 + 16 * warp + g + 8 * half;
    row[0][half] = i;
    keys[0][half] = visible_keys(p, i, seq);
    const int64_t w = int64_t(h) * p.tokens_q + seq.q_token + i;
    lse2[0][half] = i < seq.sq ? p.lse_log2[w] : __builtin_huge_valf();
    d[0][half] = i < seq.sq ? p.d_rows[w] : 0.0f;
  }

  const T* any = static_cast<const T*>(p.q.data);
  load_rows_async<BM, DQK, kThreads>(sQ, query_row<const T>(p.q, seq, m0, h), p.q.row_stride, rows_q, p.d_qk, any);
  load_rows_async<BM, DV, kThreads>(sdO, query_row<const T>(p.dout, seq, m0, h), p.dout.row_stride, rows_q, p.d_v,
                                    any);
  // Block nb uses stage (nb - nb_lo) & 1 with two stages (the next block's K / V load
  // during this block's work), stage 0 with one.
  auto k_tile = [&](int nb) { return sK0 + (two_stages ? (nb - nb_lo) & 1 : 0) * (Tile::kSmemK + Tile::kSmemV); };
  auto load_kv = [&](int nb) {
    const int n0 = nb * BN, rows = min(BN, seq.sk - n0);
    T* sK = k_tile(nb);
    load_rows_async<BN, DQK, kThreads>(sK, key_row<const T>(p, p.k, seq, b, n0, hk), p.k.row_stride, rows, p.d_qk,
                                       any);
    load_rows_async<BN, DV, kThreads>(sK + Tile::kSmemK, key_row<const T>(p, p.v, seq, b, n0, hk), p.v.row_stride,
                                      rows, p.d_v, any);
  };
  if (nb_hi > nb_lo) load_kv(nb_lo);
  cp_async_commit();

  float dq[1][DQK / 8][4];
  zero(dq);
  for (int nb = nb_lo; nb < nb_hi; ++nb) {
    const int n0 = nb * BN;
    const T* sK = k_tile(nb);
    const T* sV = sK + Tile::kSmemK;
    cp_async_wait<0>();
    __syncthreads();  // K / V[nb] landed; every warp is done with block nb - 1
    if (two_stages && nb + 1 < nb_hi) {
      load_kv(nb + 1);
      cp_async_commit();
    }
    float s[1][NT][4], dp[1][NT][4];
    zero(s);
    zero(dp);
    warp_gemm<T, 1, NT, DQK / 16, false, false>(s, sQ, Tile::kLdQ, 16 * warp, sK, Tile::kLdK, 0);
    warp_gemm<T, 1, NT, DV / 16, false, false>(dp, sdO, Tile::kLdO, 16 * warp, sV, Tile::kLdV, 0);
    const bool masked = !(m0 + BM <= seq.sq && last_row.lo <= n0 && first_row.hi >= n0 + BN);
    probabilities_and_ds(s, dp, p, masked, row, keys, seq.sq, lse2, d, n0);
    uint32_t ds[1][BN / 16][4];
    accumulators_to_a<T>(ds, dp);
    warp_gemm_a_regs<T, 1, DQK / 8, BN / 16, true>(dq, ds, sK, Tile::kLdK, 0);
    if (!two_stages && nb + 1 < nb_hi) {
      __syncthreads();  // the single K / V buffer is free
      load_kv(nb + 1);
      cp_async_commit();
    }
  }

  cp_async_wait<0>();
  __syncthreads();
  store_accumulators<T>(sQ, Tile::kLdQ, 16 * warp, 0, dq, p.scale);
  __syncthreads();
  store_tile<BM, DQK, kThreads>(
      sQ, [&](int r) { return query_row<T>(p.dq, seq, m0 + r, h); }, rows_q, p.d_qk);
}

template <int DQK, int DV>
size_t backward_dq_smem_bytes(bool two_stages) {
  return DqTile<DQK, DV>::smem_bytes(two_stages ? 2 : 1);
}

template <int DQK, int DV>
void backward_hdim(const AttentionParams& p, bool two_stages, bool dq_two_stages, cudaStream_t stream) {
  using Tile = BackwardTile<DQK, DV>;
  const dim3 grid((p.seqlen_k + Tile::kBlockN - 1) / Tile::kBlockN, p.heads_kv, p.batch);
  if (grid.x > 0 && grid.z > 0) {
    const size_t smem = Tile::smem_bytes(two_stages ? 2 : 1);
    auto launch = [&](auto kernel) {
      FLASH4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      kernel<<<grid, Tile::kThreads, smem, stream>>>(p, two_stages ? 1 : 0);
      FLASH4_CUDA_CHECK_LAUNCH("attention_backward_kernel");
    };
    if (p.dtype == DType::bf16)
      launch(attention_backward_kernel<DQK, DV, __nv_bfloat16>);
    else
      launch(attention_backward_kernel<DQK, DV, __half>);
  }
  if (p.deterministic) {
    using Dq = DqTile<DQK, DV>;
    const dim3 dq_grid((p.seqlen_q + Dq::kBlockM - 1) / Dq::kBlockM, p.heads_q, p.batch);
    if (dq_grid.x == 0 || dq_grid.z == 0) return;
    const size_t smem = Dq::smem_bytes(dq_two_stages ? 2 : 1);
    auto launch = [&](auto kernel) {
      FLASH4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      kernel<<<dq_grid, Dq::kThreads, smem, stream>>>(p, dq_two_stages ? 1 : 0);
      FLASH4_CUDA_CHECK_LAUNCH("attention_backward_dq_kernel");
    };
    if (p.dtype == DType::bf16)
      launch(attention_backward_dq_kernel<DQK, DV, __nv_bfloat16>);
    else
      launch(attention_backward_dq_kernel<DQK, DV, __half>);
  }
}

}  // namespace flash4::cuda
