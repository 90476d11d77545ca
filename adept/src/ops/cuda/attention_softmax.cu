// The elementwise parts of attention by materialised scores (the fallback used when
// flash4 has no CUDA kernel for a shape): masked softmax rows with their log-sum-exp,
// its backward, and delta = rowsum(dout ⊙ out). The matrix products are cuBLASLt's.
#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

constexpr int kThreads = 256;

// Row (h, i): keys j with lo ≤ j ≤ i are visible (causal; lo from the window).
__global__ void attention_softmax_kernel(bf16* P, float* lse, int64_t lse_head_stride, const float* S, int64_t L,
                                         int window_left, int mode) {
  __shared__ float shared[32];
  const int64_t h = blockIdx.x / L, i = blockIdx.x % L;
  const int64_t lo = window_left >= 0 ? max(int64_t(0), i - window_left) : 0;
  const float* s = S + (h * L + i) * L;
  bf16* p = P + (h * L + i) * L;
  float row_lse;
  if (mode == 0) {
    float m = -INFINITY;
    for (int64_t j = lo + threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, s[j]);
    // max over the block: reuse block_sum's pattern with fmaxf
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) shared[warp] = m;
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < warps; ++w) m = fmaxf(m, shared[w]);
    float sum = 0.0f;
    for (int64_t j = lo + threadIdx.x; j <= i; j += blockDim.x) sum += __expf(s[j] - m);
    sum = block_sum(sum, shared);
    row_lse = m + logf(sum);
    if (threadIdx.x == 0) lse[h * lse_head_stride + i] = row_lse;
  } else {
    row_lse = lse[h * lse_head_stride + i];
  }
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const bool visible = j >= lo && j <= i;
    p[j] = __float2bfloat16(visible ? __expf(s[j] - row_lse) : 0.0f);
  }
}

__global__ void attention_softmax_backward_kernel(bf16* P, const float* dP, const float* delta,
                                                  int64_t delta_head_stride, int64_t L) {
  const int64_t h = blockIdx.x / L, i = blockIdx.x % L;
  const float d = delta[h * delta_head_stride + i];
  bf16* p = P + (h * L + i) * L;
  const float* dp = dP + (h * L + i) * L;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const float pj = __bfloat162float(p[j]);
    p[j] = __float2bfloat16(pj * (dp[j] - d));
  }
}

__global__ void attention_delta_kernel(float* delta, const bf16* out, const bf16* dout, int64_t N, int64_t Hq,
                                       int64_t D) {
  const int64_t vec = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (vec >= N * Hq) return;
  const int64_t n = vec / Hq, h = vec % Hq;
  const bf16* o = out + (n * Hq + h) * D;
  const bf16* d = dout + (n * Hq + h) * D;
  float acc = 0.0f;
  for (int64_t i = lane; i < D; i += 32) acc += __bfloat162float(o[i]) * __bfloat162float(d[i]);
  acc = warp_sum(acc);
  if (lane == 0) delta[h * N + n] = acc;
}

}  // namespace

void attention_softmax(bf16* P, float* lse, int64_t lse_head_stride, const float* S, int64_t heads, int64_t L,
                       int window_left, int mode, cudaStream_t stream) {
  attention_softmax_kernel<<<unsigned(heads * L), kThreads, 0, stream>>>(P, lse, lse_head_stride, S, L, window_left,
                                                                        mode);
  ADEPT_CUDA_CHECK_LAUNCH("attention_softmax_kernel");
}

void attention_softmax_backward(bf16* P_to_dS, const float* dP, const float* delta, int64_t delta_head_stride,
                                int64_t heads, int64_t L, cudaStream_t stream) {
  attention_softmax_backward_kernel<<<unsigned(heads * L), kThreads, 0, stream>>>(P_to_dS, dP, delta,
                                                                                 delta_head_stride, L);
  ADEPT_CUDA_CHECK_LAUNCH("attention_softmax_backward_kernel");
}

void attention_delta(float* delta, const bf16* out, const bf16* dout, int64_t N, int64_t Hq, int64_t D,
                     cudaStream_t stream) {
  attention_delta_kernel<<<grid_for(N * Hq * 32, 256), 256, 0, stream>>>(delta, out, dout, N, Hq, D);
  ADEPT_CUDA_CHECK_LAUNCH("attention_delta_kernel");
}

}  // namespace adept::cuda
