// Split-KV merge (split_combine.hpp): one warp per output row (b, i, h); each lane takes the
// row's d_v columns lane, lane + 32, ... (d_v <= 256) and every lane reads the splits' LSE (at
// most 64 floats, cached). Runs after the split kernel on the same stream.
#include "hopper/split_combine.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/cuda_check.hpp"
#include "cuda/sequence.cuh"
#include "hopper/split_merge.hpp"

namespace flash4::hopper {
namespace {

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half(x);
}

template <typename T>
__global__ void combine_splits_kernel(const cuda::AttentionParams p) {
  const int64_t rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  // row = (b Hq + h) Sq + i: the partials' order.
  const int i = int(row % p.seqlen_q), h = int(row / p.seqlen_q % p.heads_q), b = int(row / p.seqlen_q / p.heads_q);
  const int64_t split_stride = rows;  // rows of one split
  const SplitMerge merge =
      split_merge(p.lse_partial + row, split_stride, p.num_splits, p.sink != nullptr ? p.sink[h] : -INFINITY);
  const cuda::Sequence seq = cuda::sequence_of(p, b);
  T* out = cuda::query_row<T>(p.out, seq, i, h);
  // The lane's columns lane + 32 k (d_v <= 256: at most kColumns); each run's weight once.
  constexpr int kColumns = 8;
  float acc[kColumns] = {};
  for (int s = 0; s < p.num_splits; ++s) {
    const float weight = split_weight(merge, p.lse_partial[s * split_stride + row]);
    if (weight == 0.0f) continue;
    const float* partial = p.o_partial + (s * split_stride + row) * p.d_v;
#pragma unroll
    for (int k = 0; k < kColumns; ++k)
      if (lane + 32 * k < p.d_v) acc[k] += weight * partial[lane + 32 * k];
  }
#pragma unroll
  for (int k = 0; k < kColumns; ++k)
    if (lane + 32 * k < p.d_v) out[lane + 32 * k] = from_float<T>(acc[k]);
  if (p.lse != nullptr && lane == 0)
    p.lse[seq.q_start * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + int64_t(i) * p.lse_row_stride] =
        split_lse(merge);
}

}  // namespace

void combine_splits(const cuda::AttentionParams& p, cudaStream_t stream) {
  const int64_t rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  if (rows == 0) return;
  constexpr int kThreads = 256;  // 8 rows a block
  const unsigned blocks = unsigned((rows * 32 + kThreads - 1) / kThreads);
  if (p.dtype == cuda::DType::bf16)
    combine_splits_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p);
  else
    combine_splits_kernel<__half><<<blocks, kThreads, 0, stream>>>(p);
  FLASH4_CUDA_CHECK_LAUNCH("combine_splits_kernel");
}

}  // namespace flash4::hopper
