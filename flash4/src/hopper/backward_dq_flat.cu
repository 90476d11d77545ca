// DqAdd::flat's finish (backward_sm90.hpp): dq = scale * dq_accum, from the flat layout the
// main kernel's 1-D bulk reduce-adds wrote, in dq's dtype. Plain CUDA (no sm_90a feature).
#include <cuda_runtime.h>

#include "cuda/cuda_check.hpp"
#include "cuda/params.hpp"
#include "cuda/ptx.cuh"
#include "cuda/sequence.cuh"
#include "hopper/backward_sm90.hpp"

namespace flash4::hopper {
namespace {

constexpr int kFinishThreads = 256;

// Row and column of the first element of float4 number i of a part: thread tid = 32 wq + 4 g + t's
// n8 tile n for i = n * 128 + tid (its elements: (r, c), (r, c + 1), (r + 8, c), (r + 8, c + 1)).
struct FlatCell {
  int r, c;
};
__host__ __device__ constexpr FlatCell flat_cell(int i) {
  const int n = i / 128, tid = i % 128;
  return {16 * (tid / 32) + (tid % 32) / 4, 8 * n + 2 * (tid % 4)};
}

// The finish's reading agrees with the layout's definition (dq_flat_index), element by element.
constexpr bool flat_cells_match_layout() {
  for (int i = 0; i < kDqFlatPartFloats / 4; ++i) {
    const FlatCell x = flat_cell(i);
    if (dq_flat_index(x.r, x.c) != 4 * i || dq_flat_index(x.r, x.c + 1) != 4 * i + 1 ||
        dq_flat_index(x.r + 8, x.c) != 4 * i + 2 || dq_flat_index(x.r + 8, x.c + 1) != 4 * i + 3)
      return false;
  }
  return true;
}
static_assert(flat_cells_match_layout(), "dq_flat_finish reads the layout dq_flat_index defines");

// First slot of sequence b (dq_slot at row 0). Strictly increasing in b (the next sequence
// starts at or after this one's first token, and b adds one).
__device__ __forceinline__ int64_t first_slot(const cuda::AttentionParams& p, int b) {
  return dq_slot(cuda::sequence_of(p, b).q_token, 0, b);
}

// One CTA per (slot, query head and part): the slot's sequence b (the last whose first slot is
// at or below it: a binary search over cu_seqlens, so that no grid depends on max_seqlen_q) and
// block m; a slot past its sequence's blocks (a gap the slot numbering leaves) returns. The
// part's 16 KB read as float4s in their stored order (coalesced), put in row-major order in
// shared memory (rows of 65 floats: a warp's scattered writes spread over the banks), then
// written as 8-column runs of 16 bytes per thread, rows of the sequence only, columns below
// d_qk only.
template <typename T>
__global__ void __launch_bounds__(kFinishThreads) dq_flat_finish_kernel(const cuda::AttentionParams p, int64_t slots,
                                                                       int parts) {
  __shared__ float tile[64][65];
  const int64_t slot = blockIdx.x;
  const int h = blockIdx.y / parts, part = blockIdx.y % parts;
  int b = 0;
  for (int lo = 0, hi = p.batch - 1; lo < hi;) {
    const int mid = (lo + hi + 1) / 2;
    if (first_slot(p, mid) <= slot)
      lo = mid;
    else
      hi = mid - 1;
    b = lo;
  }
  const cuda::Sequence seq = cuda::sequence_of(p, b);
  const int64_t m = slot - first_slot(p, b);
  if (64 * m >= seq.sq) return;  // the whole CTA, before the barrier
  const float4* src = reinterpret_cast<const float4*>(dq_flat_part(p.dq_accum, slots, parts, h, slot, part));
  for (int i = threadIdx.x; i < kDqFlatPartFloats / 4; i += kFinishThreads) {
    const float4 v = src[i];
    const FlatCell x = flat_cell(i);
    const int r = x.r, c = x.c;
    tile[r][c] = v.x;
    tile[r][c + 1] = v.y;
    tile[r + 8][c] = v.z;
    tile[r + 8][c + 1] = v.w;
  }
  __syncthreads();
  const float scale = p.scale;
  for (int i = threadIdx.x; i < 64 * 8; i += kFinishThreads) {
    const int r = i / 8, c = 8 * (i % 8), row = int(64 * m) + r, col = 64 * part + c;
    if (row >= seq.sq || col >= p.d_qk) continue;
    uint4 out;
    out.x = cuda::pack2<T>(tile[r][c] * scale, tile[r][c + 1] * scale);
    out.y = cuda::pack2<T>(tile[r][c + 2] * scale, tile[r][c + 3] * scale);
    out.z = cuda::pack2<T>(tile[r][c + 4] * scale, tile[r][c + 5] * scale);
    out.w = cuda::pack2<T>(tile[r][c + 6] * scale, tile[r][c + 7] * scale);
    *reinterpret_cast<uint4*>(cuda::query_row<T>(p.dq, seq, row, h) + col) = out;
  }
}

}  // namespace

void backward_sm90_dq_flat_finish(const cuda::AttentionParams& p, int64_t slots, int kernel_dim,
                                  cudaStream_t stream) {
  // Every slot (x), every (query head, part) (y): the host checked both fit.
  const int parts = kernel_dim / 64;
  if (slots == 0 || p.heads_q == 0 || p.batch == 0) return;
  const dim3 grid(unsigned(slots), unsigned(p.heads_q * parts));
  if (p.dtype == cuda::DType::bf16)
    dq_flat_finish_kernel<__nv_bfloat16><<<grid, kFinishThreads, 0, stream>>>(p, slots, parts);
  else
    dq_flat_finish_kernel<__half><<<grid, kFinishThreads, 0, stream>>>(p, slots, parts);
  FLASH4_CUDA_CHECK_LAUNCH("dq_flat_finish_kernel");
}

}  // namespace flash4::hopper
