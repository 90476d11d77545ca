// RMSNorm forward and backward. A block owns whole rows; each thread owns CHUNKS groups
// of 8 consecutive channels (one 16-byte access each), so a row is read once and the
// per-channel weight-gradient partial stays in registers across the block's rows.
#include <algorithm>

#include <string>
#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

template <int CHUNKS>
__global__ void __launch_bounds__(1024) rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* in, const bf16* weight, int C,
                                       float eps) {
  __shared__ float shared[32];
  const int64_t n = blockIdx.x;
  const bf16* x = in + n * C;
  float xv[CHUNKS][8];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * 8;
    if (c < C) {
      load8(x + c, xv[k]);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += xv[k][j] * xv[k][j];
    }
  }
  ss = block_sum(ss, shared);
  const float r = rsqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * 8;
    if (c < C) {
      float w[8], y[8];
      load8(weight + c, w);
#pragma unroll
      for (int j = 0; j < 8; ++j) y[j] = xv[k][j] * r * w[j];
      store8(out + n * C + c, y);
    }
  }
}

// y = w ⊙ x·r:  dx = r·(w⊙dy) − x·r³·mean(x ⊙ w ⊙ dy);  dw += dy ⊙ x·r.
template <int CHUNKS>
__global__ void __launch_bounds__(1024) rmsnorm_backward_kernel(bf16* din, float* partials, const bf16* dout, const bf16* in,
                                        const bf16* weight, const float* rstd, const bf16* dresidual, int64_t N,
                                        int C) {
  __shared__ float shared[32];
  float w[CHUNKS][8], dw[CHUNKS][8];
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) dw[k][j] = 0.0f, w[k][j] = 0.0f;
    if (c < C) load8(weight + c, w[k]);
  }
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    float x[CHUNKS][8], dy[CHUNKS][8];
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * 8;
      if (c < C) {
        load8(in + n * C + c, x[k]);
        load8(dout + n * C + c, dy[k]);
#pragma unroll
        for (int j = 0; j < 8; ++j) dot += x[k][j] * w[k][j] * dy[k][j];
      }
    }
    dot = block_sum(dot, shared);
    const float r = rstd[n];
    const float kk = r * r * r * dot / float(C);
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * 8;
      if (c < C) {
        float dx[8], res[8];
        if (dresidual) load8(dresidual + n * C + c, res);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          dx[j] = r * w[k][j] * dy[k][j] - x[k][j] * kk + (dresidual ? res[j] : 0.0f);
          dw[k][j] += dy[k][j] * x[k][j] * r;
        }
        store8(din + n * C + c, dx);
      }
    }
  }
  if (partials) {
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * 8;
      if (c < C)
#pragma unroll
        for (int j = 0; j < 8; ++j) partials[int64_t(blockIdx.x) * C + c + j] = dw[k][j];
    }
  }
}

struct RowLaunch {
  int threads, chunks;
};
// Threads per row: one per 8 channels, up to 1024; more channels take 2 or 4 chunks.
RowLaunch row_launch(int64_t C) {
  if (C % 8 != 0) launch_failure("CUDA RMSNorm needs a channel count divisible by 8, got " + std::to_string(C));
  int64_t groups = C / 8;
  int64_t threads = std::min<int64_t>(1024, (groups + 31) / 32 * 32);
  int64_t chunks = (groups + threads - 1) / threads;
  if (chunks > 4) launch_failure("CUDA RMSNorm supports up to 32768 channels, got " + std::to_string(C));
  return {int(threads), chunks <= 1 ? 1 : chunks <= 2 ? 2 : 4};
}

}  // namespace

void rmsnorm_forward(bf16* out, float* rstd, const bf16* in, const bf16* weight, int64_t N, int64_t C, double eps,
                     cudaStream_t stream) {
  RowLaunch l = row_launch(C);
  auto kernel = l.chunks == 1 ? rmsnorm_forward_kernel<1> : l.chunks == 2 ? rmsnorm_forward_kernel<2>
                                                                          : rmsnorm_forward_kernel<4>;
  kernel<<<unsigned(N), l.threads, 0, stream>>>(out, rstd, in, weight, int(C), float(eps));
  ADEPT_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

void rmsnorm_backward(bf16* din, float* dweight, float* partials, const bf16* dout, const bf16* in,
                      const bf16* weight, const float* rstd, const bf16* dresidual, int64_t N, int64_t C,
                      cudaStream_t stream) {
  RowLaunch l = row_launch(C);
  auto kernel = l.chunks == 1 ? rmsnorm_backward_kernel<1> : l.chunks == 2 ? rmsnorm_backward_kernel<2>
                                                                           : rmsnorm_backward_kernel<4>;
  kernel<<<kReduceBlocks, l.threads, 0, stream>>>(din, dweight ? partials : nullptr, dout, in, weight, rstd,
                                                  dresidual, N, int(C));
  ADEPT_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
  if (dweight) reduce_partials(dweight, partials, kReduceBlocks, C, stream);
}

}  // namespace adept::cuda
