// Rotary embeddings (rotate_half: pairs i, i + D/2) and Qwen3's per-head q/k RMSNorm
// fused in front of them. One warp per (token, head) vector; lanes take the pairs.
#include <string>

#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxPairsPerLane = 4;  // D ≤ 256

__global__ void rope_kernel(bf16* qkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld,
                            int64_t H, int64_t D, float sign) {
  const int64_t vec = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (vec >= N * H) return;
  const int64_t n = vec / H, h = vec % H, half = D / 2;
  bf16* v = qkv + n * ld + h * D;
  const float* c = cos + int64_t(pos[n]) * half;
  const float* s = sin + int64_t(pos[n]) * half;
  for (int64_t i = lane; i < half; i += 32) {
    const float a = __bfloat162float(v[i]), b = __bfloat162float(v[i + half]), sn = sign * s[i];
    v[i] = __float2bfloat16(a * c[i] - b * sn);
    v[i + half] = __float2bfloat16(b * c[i] + a * sn);
  }
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
  const int64_t vecs = N * (Hq + Hkv);
  rope_kernel<<<grid_for(vecs * 32, 32 * kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(qkv, pos, cos, sin, N, ld,
                                                                                           Hq + Hkv, D, 1.0f);
  ADEPT_CUDA_CHECK_LAUNCH("rope_kernel");
}

void rope_backward(bf16* dqkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld,
                   int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t stream) {
  // A rotation's transpose is its inverse: rotate by minus the angle.
  const int64_t vecs = N * (Hq + Hkv);
  rope_kernel<<<grid_for(vecs * 32, 32 * kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(dqkv, pos, cos, sin, N,
                                                                                           ld, Hq + Hkv, D, -1.0f);
  ADEPT_CUDA_CHECK_LAUNCH("rope_kernel");
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
