// Row-wise kernels around the backward's main kernels:
//   preprocess: D = rowsum(dO * O), lse in log2 units (+inf where lse = -inf, so that a
//               row with no visible key recomputes P = 0), and each row's dsink term
//               -exp(sink - lse) D;
//   finish:     dq = scale * dq_accum in the output dtype (atomic mode), zeros for the
//               rows of packed tensors that belong to no sequence, and dsink = the sum of
//               its rows' terms in a fixed order (deterministic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backward_kernel.cuh"
#include "cuda_check.hpp"
#include "kernels.hpp"
#include "ptx.cuh"

namespace flash4::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per (token, head) row

// Dense token -> (b, i); packed token -> (token, 0): start(b) * batch_stride + i * row_stride
// addresses the row either way (RowLayout).
struct TokenRow {
  int64_t start, i;
};
__device__ __forceinline__ TokenRow token_row(const AttentionParams& p, int64_t token) {
  if (p.cu_seqlens_q != nullptr) return {token, 0};
  return {token / p.seqlen_q, token % p.seqlen_q};
}

__device__ __forceinline__ bool token_in_a_sequence(const int32_t* cu_seqlens, int batch, int64_t token) {
  return cu_seqlens == nullptr || (token >= cu_seqlens[0] && token < cu_seqlens[batch]);
}

template <typename T>
__global__ void backward_preprocess_kernel(const AttentionParams p) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.tokens_q * p.heads_q) return;
  const int64_t token = row / p.heads_q;
  const int h = int(row % p.heads_q);
  if (!token_in_a_sequence(p.cu_seqlens_q, p.batch, token)) return;
  const TokenRow r = token_row(p, token);
  const T* o = static_cast<const T*>(p.out.data) + r.start * p.out.batch_stride + r.i * p.out.row_stride +
               h * p.out.head_stride;
  const T* dout = static_cast<const T*>(p.dout.data) + r.start * p.dout.batch_stride + r.i * p.dout.row_stride +
                  h * p.dout.head_stride;
  float acc = 0.0f;
  for (int c = lane; c * 8 < p.d_v; c += 32) {
    const uint4 a = *reinterpret_cast<const uint4*>(o + c * 8);
    const uint4 b = *reinterpret_cast<const uint4*>(dout + c * 8);
    const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 x = unpack2<T>(av[k]), y = unpack2<T>(bv[k]);
      acc = fmaf(x.x, y.x, acc);
      acc = fmaf(x.y, y.y, acc);
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (lane == 0) {
    const float lse = p.lse[r.start * p.lse_batch_stride + h * p.lse_head_stride + r.i * p.lse_row_stride];
    const int64_t w = int64_t(h) * p.tokens_q + token;
    p.d_rows[w] = acc;
    p.lse_log2[w] = lse == -__builtin_huge_valf() ? __builtin_huge_valf() : lse * kLog2e;
    if (p.dsink_rows != nullptr) p.dsink_rows[w] = -expf(p.sink[h] - lse) * acc;
  }
}

// dq[token][h][:] = scale * dq_accum, 8 columns per thread; every token row is written.
template <typename T>
__global__ void dq_convert_kernel(const AttentionParams p) {
  const int chunks = p.d_qk / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.tokens_q * p.heads_q * chunks) return;
  const int c = int(idx % chunks);
  const int64_t row = idx / chunks;
  const int64_t token = row / p.heads_q;
  const int h = int(row % p.heads_q);
  const TokenRow r = token_row(p, token);
  const float4* src = reinterpret_cast<const float4*>(p.dq_accum + row * p.d_qk + c * 8);
  const float4 a = src[0], b = src[1];
  const float s = p.scale;
  uint4 out;
  out.x = pack2<T>(a.x * s, a.y * s);
  out.y = pack2<T>(a.z * s, a.w * s);
  out.z = pack2<T>(b.x * s, b.y * s);
  out.w = pack2<T>(b.z * s, b.w * s);
  T* dst = static_cast<T*>(p.dq.data) + r.start * p.dq.batch_stride + r.i * p.dq.row_stride + h * p.dq.head_stride;
  *reinterpret_cast<uint4*>(dst + c * 8) = out;
}

// Zeros the rows of a packed [tokens][heads][width] tensor outside [cu[0], cu[batch]).
__global__ void zero_rows_outside_sequences_kernel(RowLayout L, int64_t tokens, int heads, int width,
                                                   const int32_t* cu_seqlens, int batch) {
  const int chunks = width / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * heads * chunks) return;
  const int c = int(idx % chunks);
  const int64_t row = idx / chunks;
  const int64_t token = row / heads;
  const int h = int(row % heads);
  if (token_in_a_sequence(cu_seqlens, batch, token)) return;
  uint16_t* dst = static_cast<uint16_t*>(L.data) + token * L.row_stride + h * L.head_stride + c * 8;
  *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
}

// dsink[h] = sum over tokens of dsink_rows[h][token], one block per head, fixed order.
__global__ void dsink_reduce_kernel(const float* dsink_rows, int64_t tokens, float* dsink) {
  __shared__ float partial[256];
  const int h = blockIdx.x;
  float acc = 0.0f;
  for (int64_t t = threadIdx.x; t < tokens; t += blockDim.x) acc += dsink_rows[int64_t(h) * tokens + t];
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) dsink[h] = partial[0];
}

unsigned blocks_for(int64_t items, int threads) { return unsigned((items + threads - 1) / threads); }

void zero_rows_outside_sequences(const RowLayout& L, int64_t tokens, int heads, int width, const int32_t* cu_seqlens,
                                 int batch, cudaStream_t stream) {
  const int64_t items = tokens * heads * (width / 8);
  if (items == 0) return;
  zero_rows_outside_sequences_kernel<<<blocks_for(items, 256), 256, 0, stream>>>(L, tokens, heads, width, cu_seqlens,
                                                                                  batch);
  FLASH4_CUDA_CHECK_LAUNCH("zero_rows_outside_sequences_kernel");
}

}  // namespace

void backward_preprocess(const AttentionParams& p, cudaStream_t stream) {
  const int64_t rows = p.tokens_q * p.heads_q;
  if (rows == 0) return;
  const unsigned blocks = blocks_for(rows, kRowsPerBlock);
  if (p.dtype == DType::bf16)
    backward_preprocess_kernel<__nv_bfloat16><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(p);
  else
    backward_preprocess_kernel<__half><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(p);
  FLASH4_CUDA_CHECK_LAUNCH("backward_preprocess_kernel");
}

void backward_finish(const AttentionParams& p, cudaStream_t stream) {
  if (!p.deterministic) {
    const int64_t items = p.tokens_q * p.heads_q * (p.d_qk / 8);
    if (items > 0) {
      if (p.dtype == DType::bf16)
        dq_convert_kernel<__nv_bfloat16><<<blocks_for(items, 256), 256, 0, stream>>>(p);
      else
        dq_convert_kernel<__half><<<blocks_for(items, 256), 256, 0, stream>>>(p);
      FLASH4_CUDA_CHECK_LAUNCH("dq_convert_kernel");
    }
  } else if (p.cu_seqlens_q != nullptr) {
    zero_rows_outside_sequences(p.dq, p.tokens_q, p.heads_q, p.d_qk, p.cu_seqlens_q, p.batch, stream);
  }
  if (p.cu_seqlens_k != nullptr) {
    zero_rows_outside_sequences(p.dk, p.tokens_k, p.heads_kv, p.d_qk, p.cu_seqlens_k, p.batch, stream);
    zero_rows_outside_sequences(p.dv, p.tokens_k, p.heads_kv, p.d_v, p.cu_seqlens_k, p.batch, stream);
  }
  if (p.dsink != nullptr && p.heads_q > 0) {
    dsink_reduce_kernel<<<p.heads_q, 256, 0, stream>>>(p.dsink_rows, p.tokens_q, p.dsink);
    FLASH4_CUDA_CHECK_LAUNCH("dsink_reduce_kernel");
  }
}

size_t backward_smem_bytes(int dqk, int dv, bool two_stages) {
  const int stages = two_stages ? 2 : 1;
  if (dqk == 64 && dv == 64) return BackwardTile<64, 64>::smem_bytes(stages);
  if (dqk == 96 && dv == 96) return BackwardTile<96, 96>::smem_bytes(stages);
  if (dqk == 128 && dv == 128) return BackwardTile<128, 128>::smem_bytes(stages);
  if (dqk == 192 && dv == 128) return BackwardTile<192, 128>::smem_bytes(stages);
  if (dqk == 192 && dv == 192) return BackwardTile<192, 192>::smem_bytes(stages);
  if (dqk == 256 && dv == 256) return BackwardTile<256, 256>::smem_bytes(stages);
  return 0;
}

}  // namespace flash4::cuda
