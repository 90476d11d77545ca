#include "backend/cuda/data_parallel_kernels.hpp"

#include <algorithm>

#include "backend/cuda/cuda_check.hpp"

namespace adept::cuda {

namespace {

__global__ void grad_scale_from_count_kernel(float* scale, const int64_t* count) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *scale = *count > 0 ? float(1.0 / double(*count)) : 0.0f;
}

__global__ void accumulate_f32_kernel(float* dst, const float* src, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] += src[i];
}

}  // namespace

void grad_scale_from_count(float* scale, const int64_t* count, cudaStream_t stream) {
  grad_scale_from_count_kernel<<<1, 32, 0, stream>>>(scale, count);
  ADEPT_CUDA_CHECK_LAUNCH("grad_scale_from_count_kernel");
}

void accumulate_f32(float* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 4096);
  accumulate_f32_kernel<<<unsigned(blocks), threads, 0, stream>>>(dst, src, n);
  ADEPT_CUDA_CHECK_LAUNCH("accumulate_f32_kernel");
}

}  // namespace adept::cuda
