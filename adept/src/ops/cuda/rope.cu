// Rotary embeddings (rotate_half: pairs i, i + D/2) and Qwen3's per-head q/k RMSNorm
// fused in front of them. Plain RoPE: a thread takes K consecutive pairs of up to
// kRopeHeadsPerThread heads of one token (vector accesses of K bf16 and K fp32); the q/k
// norm kernels: one warp per (token, head) vector, lanes take the pairs.
#include <algorithm>
#include <cstdint>
#include <string>

#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxPairsPerLane = 4;  // D ≤ 256
constexpr int kRopeThreads = 256;
// Loads of several heads issued before any is used: more bytes in flight per thread
// (the scalar one-pair-per-lane kernel ran at ~25% of HBM bandwidth on an H200).
constexpr int kRopeHeadsPerThread = 4;

// K bf16 as one aligned access of 2K bytes; kept packed until used, so that the loads of
// several heads fit in registers.
template <int K>
struct alignas(2 * K) Bf16Vec {
  bf16 v[K];
};

// K fp32 in accesses of up to 16 bytes.
template <int K>
__device__ inline void load_f32(const float* p, float (&f)[K]) {
  if constexpr (K == 1) {
    f[0] = *p;
  } else if constexpr (K == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    f[0] = t.x, f[1] = t.y;
  } else {
#pragma unroll
    for (int k = 0; k < K; k += 4) {
      const float4 t = *reinterpret_cast<const float4*>(p + k);
      f[k] = t.x, f[k + 1] = t.y, f[k + 2] = t.z, f[k + 3] = t.w;
    }
  }
}

// Thread t: pairs [K·g, K·g + K) (g = t mod groups, groups = half/K) of heads
// [hb·R, hb·R + R) ∩ [0, H) of token n. Consecutive threads take consecutive pair groups
// of one head, so a warp's accesses are contiguous runs of memory. The host picks K so that
// ld, D, half and the pointers allow the vector accesses (K = 1: scalar fallback).
template <int K>
__global__ void __launch_bounds__(kRopeThreads, 3)
    rope_kernel(bf16* qkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld, int64_t H,
                int64_t D, float sign) {
  constexpr int R = kRopeHeadsPerThread;
  const int64_t half = D / 2, groups = half / K, head_blocks = (H + R - 1) / R;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * head_blocks * groups) return;
  const int64_t i = (t % groups) * K, rest = t / groups;
  const int64_t hb = rest % head_blocks, n = rest / head_blocks;
  const int64_t h0 = hb * R;
  bf16* row = qkv + n * ld + i;
  Bf16Vec<K> a[R], b[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (h0 + r < H) {
      a[r] = *reinterpret_cast<const Bf16Vec<K>*>(row + (h0 + r) * D);
      b[r] = *reinterpret_cast<const Bf16Vec<K>*>(row + (h0 + r) * D + half);
    }
  float c[K], s[K];
  const int64_t p = int64_t(pos[n]) * half + i;
  load_f32<K>(cos + p, c);
  load_f32<K>(sin + p, s);
#pragma unroll
  for (int k = 0; k < K; ++k) s[k] *= sign;
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (h0 + r < H) {
      Bf16Vec<K> ya, yb;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float x0 = __bfloat162float(a[r].v[k]), x1 = __bfloat162float(b[r].v[k]);
        ya.v[k] = __float2bfloat16(x0 * c[k] - x1 * s[k]);
        yb.v[k] = __float2bfloat16(x1 * c[k] + x0 * s[k]);
      }
      *reinterpret_cast<Bf16Vec<K>*>(row + (h0 + r) * D) = ya;
      *reinterpret_cast<Bf16Vec<K>*>(row + (h0 + r) * D + half) = yb;
    }
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % uint64_t(bytes) == 0; }

// The widest K ≤ 8 pairs per thread whose accesses are all aligned: every offset
// n·ld + h·D + i (+ half) a multiple of K, bf16 vectors of 2K bytes, fp32 ones of
// 4·min(K, 4) bytes at pos·half + i.
int rope_pairs_per_thread(const bf16* qkv, const float* cos, const float* sin, int64_t ld, int64_t D) {
  const int64_t half = D / 2;
  for (int K : {8, 4, 2}) {
    const int64_t f32_bytes = 4 * std::min(K, 4);
    if (half % K == 0 && D % K == 0 && ld % K == 0 && aligned(qkv, 2 * K) && aligned(cos, f32_bytes) &&
        aligned(sin, f32_bytes))
      return K;
  }
  return 1;
}

void launch_rope(bf16* qkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld, int64_t H,
                 int64_t D, float sign, cudaStream_t stream) {
  const int64_t half = D / 2;
  if (N <= 0 || H <= 0 || half <= 0) return;
  const int K = rope_pairs_per_thread(qkv, cos, sin, ld, D);
  const int64_t threads = N * ((H + kRopeHeadsPerThread - 1) / kRopeHeadsPerThread) * (half / K);
  auto kernel = K == 8 ? rope_kernel<8> : K == 4 ? rope_kernel<4> : K == 2 ? rope_kernel<2> : rope_kernel<1>;
  kernel<<<grid_for(threads, kRopeThreads), kRopeThreads, 0, stream>>>(qkv, pos, cos, sin, N, ld, H, D, sign);
  ADEPT_CUDA_CHECK_LAUNCH("rope_kernel");
}

// Heads [0, Hq) are queries, [Hq, Hq+Hkv) keys (normed and rotated), the next Hkv values
// (copied when out != in).
__global__ void qk_norm_rope_forward_kernel(bf16* out, float* rstd, const bf16* in, const bf16* q_weight,
                                            const bf16* k_weight, const int32_t* pos, const float* cos,
                                            const float* sin, int64_t N, int64_t ld, int64_t Hq, int64_t Hkv,
                                            int64_t D, float eps) {
  const int64_t H = Hq + Hkv, Hall = Hq + 2 * Hkv;
  const int64_t vec = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (vec >= N * Hall) return;
  const int64_t n = vec / Hall, h = vec % Hall, half = D / 2;
  const bf16* x = in + n * ld + h * D;
  bf16* y = out + n * ld + h * D;
  if (h >= H) {
    if (out != in)
      for (int64_t i = lane; i < D; i += 32) y[i] = x[i];
    return;
  }
  const bf16* w = h < Hq ? q_weight : k_weight;
  float a[kMaxPairsPerLane], b[kMaxPairsPerLane];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxPairsPerLane; ++k) {
    const int64_t i = lane + 32 * k;
    a[k] = i < half ? __bfloat162float(x[i]) : 0.0f;
    b[k] = i < half ? __bfloat162float(x[i + half]) : 0.0f;
    ss += a[k] * a[k] + b[k] * b[k];
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / float(D) + eps);
  if (lane == 0) rstd[n * H + h] = r;
  const float* c = cos + int64_t(pos[n]) * half;
  const float* s = sin + int64_t(pos[n]) * half;
#pragma unroll
  for (int k = 0; k < kMaxPairsPerLane; ++k) {
    const int64_t i = lane + 32 * k;
    if (i < half) {
      const float an = a[k] * r * __bfloat162float(w[i]), bn = b[k] * r * __bfloat162float(w[i + half]);
      y[i] = __float2bfloat16(an * c[i] - bn * s[i]);
      y[i + half] = __float2bfloat16(bn * c[i] + an * s[i]);
    }
  }
}

// Per warp: rotate the incoming gradient back (Rᵀ), then RMSNorm backward over the head
// vector; weight-gradient partials per warp, summed over the block's warps in order.
// partials: [2][gridDim.x][D] (queries, then keys).
__global__ void qk_norm_rope_backward_kernel(bf16* dqkv, float* partials, const bf16* in, const bf16* q_weight,
                                             const bf16* k_weight, const float* rstd, const int32_t* pos,
                                             const float* cos, const float* sin, int64_t N, int64_t ld, int64_t Hq,
                                             int64_t Hkv, int64_t D) {
  extern __shared__ float shared_dw[];  // [kWarpsPerBlock][2][D]
  const int64_t H = Hq + Hkv, half = D / 2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float dwq[kMaxPairsPerLane][2] = {}, dwk[kMaxPairsPerLane][2] = {};
  for (int64_t vec = int64_t(blockIdx.x) * kWarpsPerBlock + warp; vec < N * H;
       vec += int64_t(gridDim.x) * kWarpsPerBlock) {
    const int64_t n = vec / H, h = vec % H;
    const bool is_q = h < Hq;
    const bf16* w = is_q ? q_weight : k_weight;
    const bf16* x = in + n * ld + h * D;
    bf16* d = dqkv + n * ld + h * D;
    const float* c = cos + int64_t(pos[n]) * half;
    const float* s = sin + int64_t(pos[n]) * half;
    const float r = rstd[n * H + h];
    float ra[kMaxPairsPerLane], rb[kMaxPairsPerLane], xa[kMaxPairsPerLane], xb[kMaxPairsPerLane];
    float wa[kMaxPairsPerLane], wb[kMaxPairsPerLane];
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxPairsPerLane; ++k) {
      const int64_t i = lane + 32 * k;
      ra[k] = rb[k] = xa[k] = xb[k] = wa[k] = wb[k] = 0.0f;
      if (i < half) {
        const float da = __bfloat162float(d[i]), db = __bfloat162float(d[i + half]);
        ra[k] = da * c[i] + db * s[i];
        rb[k] = db * c[i] - da * s[i];
        xa[k] = __bfloat162float(x[i]);
        xb[k] = __bfloat162float(x[i + half]);
        wa[k] = __bfloat162float(w[i]);
        wb[k] = __bfloat162float(w[i + half]);
        dot += xa[k] * wa[k] * ra[k] + xb[k] * wb[k] * rb[k];
      }
    }
    dot = warp_sum(dot);
    const float kk = r * r * r * dot / float(D);
#pragma unroll
    for (int k = 0; k < kMaxPairsPerLane; ++k) {
      const int64_t i = lane + 32 * k;
      if (i < half) {
        d[i] = __float2bfloat16(r * wa[k] * ra[k] - xa[k] * kk);
        d[i + half] = __float2bfloat16(r * wb[k] * rb[k] - xb[k] * kk);
        // Selected by value, not by reference: a run-time choice of array would move
        // both accumulators to local memory.
        const float ga = ra[k] * xa[k] * r, gb = rb[k] * xb[k] * r;
        dwq[k][0] += is_q ? ga : 0.0f;
        dwq[k][1] += is_q ? gb : 0.0f;
        dwk[k][0] += is_q ? 0.0f : ga;
        dwk[k][1] += is_q ? 0.0f : gb;
      }
    }
  }
  if (!partials) return;
#pragma unroll
  for (int k = 0; k < kMaxPairsPerLane; ++k) {
    const int64_t i = lane + 32 * k;
    if (i < half) {
      shared_dw[(warp * 2 + 0) * D + i] = dwq[k][0];
      shared_dw[(warp * 2 + 0) * D + i + half] = dwq[k][1];
      shared_dw[(warp * 2 + 1) * D + i] = dwk[k][0];
      shared_dw[(warp * 2 + 1) * D + i + half] = dwk[k][1];
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < 2 * D; e += blockDim.x) {
    const int64_t which = e / D, i = e % D;
    float acc = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; ++w) acc += shared_dw[(w * 2 + which) * D + i];
    partials[(which * gridDim.x + blockIdx.x) * D + i] = acc;
  }
}

void check_head_dim(int64_t D) {
  if (D % 2 != 0 || D > 2 * 32 * kMaxPairsPerLane)
    launch_failure("CUDA q/k norm + RoPE needs an even head_dim <= 256, got " + std::to_string(D));
}

}  // namespace

void rope_forward(bf16* qkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld,
                  int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t stream) {
  launch_rope(qkv, pos, cos, sin, N, ld, Hq + Hkv, D, 1.0f, stream);
}

void rope_backward(bf16* dqkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld,
                   int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t stream) {
  // A rotation's transpose is its inverse: rotate by minus the angle.
  launch_rope(dqkv, pos, cos, sin, N, ld, Hq + Hkv, D, -1.0f, stream);
}

void qk_norm_rope_forward(bf16* out, float* rstd, const bf16* in, const bf16* q_weight, const bf16* k_weight,
                          const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld, int64_t Hq,
                          int64_t Hkv, int64_t D, double eps, cudaStream_t stream) {
  check_head_dim(D);
  const int64_t vecs = N * (Hq + 2 * Hkv);
  qk_norm_rope_forward_kernel<<<grid_for(vecs * 32, 32 * kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(
      out, rstd, in, q_weight, k_weight, pos, cos, sin, N, ld, Hq, Hkv, D, float(eps));
  ADEPT_CUDA_CHECK_LAUNCH("qk_norm_rope_forward_kernel");
}

void qk_norm_rope_backward(bf16* dqkv, float* dq_weight, float* dk_weight, float* partials, const bf16* in,
                           const bf16* q_weight, const bf16* k_weight, const float* rstd, const int32_t* pos,
                           const float* cos, const float* sin, int64_t N, int64_t ld, int64_t Hq, int64_t Hkv,
                           int64_t D, cudaStream_t stream) {
  check_head_dim(D);
  const bool want = dq_weight || dk_weight;
  const size_t shared = sizeof(float) * kWarpsPerBlock * 2 * D;
  qk_norm_rope_backward_kernel<<<kReduceBlocks, 32 * kWarpsPerBlock, shared, stream>>>(
      dqkv, want ? partials : nullptr, in, q_weight, k_weight, rstd, pos, cos, sin, N, ld, Hq, Hkv, D);
  ADEPT_CUDA_CHECK_LAUNCH("qk_norm_rope_backward_kernel");
  if (dq_weight) reduce_partials(dq_weight, partials, kReduceBlocks, D, stream);
  if (dk_weight) reduce_partials(dk_weight, partials + int64_t(kReduceBlocks) * D, kReduceBlocks, D, stream);
}

}  // namespace adept::cuda
