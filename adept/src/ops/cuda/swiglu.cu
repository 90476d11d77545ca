// SwiGLU over the fused gate|up projection: row n of gateup is [gate (I) | up (I)].
#include <string>

#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

__device__ inline float sigmoid(float g) { return 1.0f / (1.0f + __expf(-g)); }

__global__ void swiglu_forward_kernel(bf16* act, const bf16* gateup, int64_t N, int64_t I) {
  const int64_t groups = I / 8;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= N * groups) return;
  const int64_t n = e / groups, i = (e % groups) * 8;
  float g[8], u[8], y[8];
  load8(gateup + n * 2 * I + i, g);
  load8(gateup + n * 2 * I + I + i, u);
#pragma unroll
  for (int j = 0; j < 8; ++j) y[j] = g[j] * sigmoid(g[j]) * u[j];
  store8(act + n * I + i, y);
}

// silu(g) = g·σ(g);  silu'(g) = σ(g)·(1 + g·(1 − σ(g)))
__global__ void swiglu_backward_kernel(bf16* dgateup, const bf16* dact, const bf16* gateup, int64_t N, int64_t I) {
  const int64_t groups = I / 8;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= N * groups) return;
  const int64_t n = e / groups, i = (e % groups) * 8;
  float g[8], u[8], dy[8], dg[8], du[8];
  load8(gateup + n * 2 * I + i, g);
  load8(gateup + n * 2 * I + I + i, u);
  load8(dact + n * I + i, dy);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float sig = sigmoid(g[j]);
    du[j] = dy[j] * g[j] * sig;
    dg[j] = dy[j] * u[j] * sig * (1.0f + g[j] * (1.0f - sig));
  }
  store8(dgateup + n * 2 * I + i, dg);
  store8(dgateup + n * 2 * I + I + i, du);
}

void check_width(int64_t I) {
  if (I % 8 != 0) launch_failure("CUDA SwiGLU needs intermediate_size divisible by 8, got " + std::to_string(I));
}

}  // namespace

void swiglu_forward(bf16* act, const bf16* gateup, int64_t N, int64_t I, cudaStream_t stream) {
  check_width(I);
  swiglu_forward_kernel<<<grid_for(N * I / 8, 256), 256, 0, stream>>>(act, gateup, N, I);
  ADEPT_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

void swiglu_backward(bf16* dgateup, const bf16* dact, const bf16* gateup, int64_t N, int64_t I,
                     cudaStream_t stream) {
  check_width(I);
  swiglu_backward_kernel<<<grid_for(N * I / 8, 256), 256, 0, stream>>>(dgateup, dact, gateup, N, I);
  ADEPT_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace adept::cuda
