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

// One element's update; the vector and scalar paths both use it, so they give the same bits.
struct AdamWStep {
  float beta1, beta2, eps, scale, c1, c2, weight_decay;
  __device__ float update(float& m, float& v, float w, float g, float lr) const {
    const float gj = g * scale;
    m = beta1 * m + (1.0f - beta1) * gj;
    v = beta2 * v + (1.0f - beta2) * gj * gj;
    const float u = (m / c1) / (sqrtf(v / c2) + eps);
    return w * (1.0f - lr * weight_decay) - lr * u;
  }
};

// A chunk's elements: four at a time by 16-byte loads of master / grads / m / v and 8-byte
// stores of the bf16 weights where the chunk's start is 4-aligned in both layouts (every
// tensor of the decoders we plan: their sizes are multiples of 4), one at a time otherwise
// and for the tail. Scalar loads alone ran at ~70% of HBM bandwidth on an H200 (ncu,
// 2026-12-01: 10.9 ms for the Llama-1B step's 1.24e9 parameters, 37 GB moved).
__global__ void adamw_kernel(float* master, bf16* weights, const float* grads, float* m, float* v,
                             const AdamWTensor* tensors, const AdamWChunk* chunks, const float* row_multipliers,
                             const StepState* state, float beta1, float beta2, float eps) {
  if (state->skip) return;
  const AdamWChunk chunk = chunks[blockIdx.x];
  const AdamWTensor T = tensors[chunk.tensor];
  const float lr = float(state->lr) * T.lr_multiplier;
  const AdamWStep step{beta1, beta2, eps, state->clip_scale, state->bias_correction1, state->bias_correction2,
                       T.weight_decay};
  float* w = master + T.state_offset;
  bf16* wb = weights + T.weight_offset;
  const float* g = grads + T.state_offset;
  float* mm = m + T.state_offset;
  float* vv = v + T.state_offset;
  auto row_lr = [&](int64_t j) {
    return T.row_multiplier_offset >= 0 ? lr * row_multipliers[T.row_multiplier_offset + j / T.row_len] : lr;
  };
  int64_t j0 = chunk.begin;
  if ((T.state_offset + chunk.begin) % 4 == 0 && (T.weight_offset + chunk.begin) % 4 == 0) {
    const int64_t vector_end = chunk.begin + (chunk.end - chunk.begin) / 4 * 4;
    for (int64_t j = chunk.begin + 4 * int64_t(threadIdx.x); j < vector_end; j += 4 * int64_t(blockDim.x)) {
      float4 w4 = *reinterpret_cast<const float4*>(w + j);
      const float4 g4 = *reinterpret_cast<const float4*>(g + j);
      float4 m4 = *reinterpret_cast<const float4*>(mm + j);
      float4 v4 = *reinterpret_cast<const float4*>(vv + j);
      w4.x = step.update(m4.x, v4.x, w4.x, g4.x, row_lr(j));
      w4.y = step.update(m4.y, v4.y, w4.y, g4.y, row_lr(j + 1));
      w4.z = step.update(m4.z, v4.z, w4.z, g4.z, row_lr(j + 2));
      w4.w = step.update(m4.w, v4.w, w4.w, g4.w, row_lr(j + 3));
      *reinterpret_cast<float4*>(w + j) = w4;
      *reinterpret_cast<float4*>(mm + j) = m4;
      *reinterpret_cast<float4*>(vv + j) = v4;
      __nv_bfloat162 lo = __floats2bfloat162_rn(w4.x, w4.y), hi = __floats2bfloat162_rn(w4.z, w4.w);
      uint2 packed;
      packed.x = *reinterpret_cast<const uint32_t*>(&lo);
      packed.y = *reinterpret_cast<const uint32_t*>(&hi);
      *reinterpret_cast<uint2*>(wb + j) = packed;
    }
    j0 = vector_end;
  }
  for (int64_t j = j0 + threadIdx.x; j < chunk.end; j += blockDim.x) {
    float mj = mm[j], vj = vv[j];
    const float wj = step.update(mj, vj, w[j], g[j], row_lr(j));
    mm[j] = mj;
    vv[j] = vj;
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
