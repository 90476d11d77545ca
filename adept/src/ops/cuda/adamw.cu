// The optimizer step on the device: global gradient norm (deterministic two-pass sum),
// the skip / clip / bias-correction decision, and one multi-tensor AdamW launch over
// every trainable tensor. Frozen tensors are simply absent from the tensor table.
#include <cmath>

#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

constexpr int kNormThreads = 512;

__global__ void grad_norm_partials_kernel(double* partials, const float* grads, int64_t n) {
  __shared__ double shared[32];
  double acc = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double g = grads[i];
    acc += g * g;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void grad_norm_finalize_kernel(StepState* state, const double* partials, int blocks, float beta1,
                                          float beta2) {
  if (threadIdx.x != 0) return;
  double ss = 0.0;
  for (int b = 0; b < blocks; ++b) ss += partials[b];
  const double norm = sqrt(ss);
  state->grad_norm = norm;
  const bool finite = isfinite(norm) && isfinite(state->loss_sum);
  state->skip = finite ? 0 : 1;
  state->clip_scale = (finite && state->max_norm > 0 && norm > state->max_norm) ? float(state->max_norm / norm) : 1.0f;
  if (finite) {
    const int64_t t = state->t + 1;
    state->t = t;
    state->bias_correction1 = float(1.0 - pow(double(beta1), double(t)));
    state->bias_correction2 = float(1.0 - pow(double(beta2), double(t)));
  }
}

__global__ void adamw_kernel(float* master, bf16* weights, const float* grads, float* m, float* v,
                             const AdamWTensor* tensors, const AdamWChunk* chunks, const float* row_multipliers,
                             const StepState* state, float beta1, float beta2, float eps) {
  if (state->skip) return;
  const AdamWChunk chunk = chunks[blockIdx.x];
  const AdamWTensor T = tensors[chunk.tensor];
  const float lr = float(state->lr) * T.lr_multiplier;
  const float scale = state->clip_scale, c1 = state->bias_correction1, c2 = state->bias_correction2;
  float* w = master + T.state_offset;
  bf16* wb = weights + T.weight_offset;
  const float* g = grads + T.state_offset;
  float* mm = m + T.state_offset;
  float* vv = v + T.state_offset;
  for (int64_t j = chunk.begin + threadIdx.x; j < chunk.end; j += blockDim.x) {
    const float row_lr = T.row_multiplier_offset >= 0 ? lr * row_multipliers[T.row_multiplier_offset + j / T.row_len]
                                                      : lr;
    const float gj = g[j] * scale;
    const float mj = beta1 * mm[j] + (1.0f - beta1) * gj;
    const float vj = beta2 * vv[j] + (1.0f - beta2) * gj * gj;
    mm[j] = mj;
    vv[j] = vj;
    const float update = (mj / c1) / (sqrtf(vj / c2) + eps);
    const float wj = w[j] * (1.0f - row_lr * T.weight_decay) - row_lr * update;
    w[j] = wj;
    wb[j] = __float2bfloat16(wj);
  }
}

__global__ void copy_staging_to_weights_kernel(bf16* weights, const bf16* staging, const AdamWTensor* tensors,
                                               const AdamWChunk* chunks, const StepState* state) {
  if (state->skip) return;
  const AdamWChunk chunk = chunks[blockIdx.x];
  const AdamWTensor T = tensors[chunk.tensor];
  for (int64_t j = chunk.begin + threadIdx.x; j < chunk.end; j += blockDim.x)
    weights[T.weight_offset + j] = staging[T.state_offset + j];
}

}  // namespace

void copy_staging_to_weights(bf16* weights, const bf16* staging, const AdamWTensor* tensors, const AdamWChunk* chunks,
                             int64_t num_chunks, const StepState* state, cudaStream_t stream) {
  if (num_chunks == 0) return;
  copy_staging_to_weights_kernel<<<unsigned(num_chunks), 256, 0, stream>>>(weights, staging, tensors, chunks, state);
  ADEPT_CUDA_CHECK_LAUNCH("copy_staging_to_weights_kernel");
}

void grad_norm_partials(double* partials, const float* grads, int64_t n, cudaStream_t stream) {
  grad_norm_partials_kernel<<<kReduceBlocks, kNormThreads, 0, stream>>>(partials, grads, n);
  ADEPT_CUDA_CHECK_LAUNCH("grad_norm_partials_kernel");
}

void grad_norm_finalize(StepState* state, const double* partials, float beta1, float beta2, cudaStream_t stream) {
  grad_norm_finalize_kernel<<<1, 32, 0, stream>>>(state, partials, kReduceBlocks, beta1, beta2);
  ADEPT_CUDA_CHECK_LAUNCH("grad_norm_finalize_kernel");
}

void adamw_update(float* master, bf16* weights, const float* grads, float* m, float* v, const AdamWTensor* tensors,
                  const AdamWChunk* chunks, int64_t num_chunks, const float* row_multipliers,
                  const StepState* state, float beta1, float beta2, float eps, cudaStream_t stream) {
  if (num_chunks == 0) return;
  adamw_kernel<<<unsigned(num_chunks), 256, 0, stream>>>(master, weights, grads, m, v, tensors, chunks,
                                                         row_multipliers, state, beta1, beta2, eps);
  ADEPT_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace adept::cuda
