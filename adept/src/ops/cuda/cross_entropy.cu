// Cross-entropy over one chunk of tokens' logits (the decoder never holds the logits of
// every token at once: it runs the head GEMM, this kernel and the head's backward GEMMs
// chunk by chunk). One block per token; logits are read twice (max/sum, then gradient),
// the second read mostly from L2.
#include <cfloat>

#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

constexpr int kThreads = 512;

// Online softmax normaliser: (m, s) with s = Σ exp(z − m).
__device__ inline void combine(float& m, float& s, float om, float os) {
  const float M = fmaxf(m, om);
  if (M == -INFINITY) return;
  s = s * __expf(m - M) + os * __expf(om - M);
  m = M;
}

__global__ void cross_entropy_kernel(bf16* dlogits, float* loss, const float* logits, const int32_t* targets,
                                     int64_t V, int32_t ignore_index, const float* grad_scale) {
  __shared__ float shared_m[32], shared_s[32];
  const int64_t n = blockIdx.x;
  const float* z = logits + n * V;
  const int32_t t = targets[n];
  if (t == ignore_index) {
    if (dlogits)
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) dlogits[n * V + v] = __float2bfloat16(0.0f);
    if (threadIdx.x == 0) loss[n] = 0.0f;
    return;
  }
  float m = -INFINITY, s = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = z[v];
    if (x > m) {
      s = s * __expf(m - x) + 1.0f;
      m = x;
    } else {
      s += __expf(x - m);
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    combine(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) shared_m[warp] = m, shared_s[warp] = s;
  __syncthreads();
  m = -INFINITY, s = 0.0f;
  for (int w = 0; w < warps; ++w) combine(m, s, shared_m[w], shared_s[w]);
  const float lse = m + logf(s);
  if (threadIdx.x == 0) loss[n] = lse - z[t];
  if (!dlogits) return;
  const float scale = *grad_scale;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    float p = __expf(z[v] - lse) * scale;
    if (v == t) p -= scale;
    dlogits[n * V + v] = __float2bfloat16(p);
  }
}

__global__ void loss_accumulate_kernel(double* loss_sum, int64_t* count, const float* loss, const int32_t* targets,
                                       int64_t N, int32_t ignore_index) {
  __shared__ double shared_sum[32];
  __shared__ long long shared_count[32];
  double acc = 0.0;
  long long counted = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    if (targets[n] == ignore_index) continue;
    acc += double(loss[n]);
    ++counted;
  }
  acc = block_sum(acc, shared_sum);
  counted = block_sum(counted, shared_count);
  if (threadIdx.x == 0) {
    *loss_sum += acc;
    *count += int64_t(counted);
  }
}

}  // namespace

void cross_entropy_forward_backward(bf16* dlogits, float* loss, const float* logits, const int32_t* targets,
                                    int64_t N, int64_t V, int32_t ignore_index, const float* grad_scale,
                                    cudaStream_t stream) {
  cross_entropy_kernel<<<unsigned(N), kThreads, 0, stream>>>(dlogits, loss, logits, targets, V, ignore_index,
                                                            grad_scale);
  ADEPT_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
}

void loss_accumulate(double* loss_sum, int64_t* count, const float* loss, const int32_t* targets, int64_t N,
                     int32_t ignore_index, cudaStream_t stream) {
  loss_accumulate_kernel<<<1, 1024, 0, stream>>>(loss_sum, count, loss, targets, N, ignore_index);
  ADEPT_CUDA_CHECK_LAUNCH("loss_accumulate_kernel");
}

}  // namespace adept::cuda
