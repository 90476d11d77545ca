// build_varlen_tiles (varlen_tiles.hpp): one CTA of 1024 threads
//   1. first[b] = sum over sequences b' < b of their blocks (block-wide scans, 1024
//      sequences at a time);
//   2. a histogram of the pairs' costs (cost = blocks of the other side the tile visits,
//      blocks.cuh, capped at kBuckets - 1) in shared memory, each thread finding its pair's
//      sequence by binary search in first[];
//   3. an exclusive scan of the histogram, heaviest bucket first, then each pair takes the
//      next slot of its bucket (atomicAdd): a counting sort. The order within a bucket
//      varies from run to run; the results do not (every tile is computed whole by one CTA).
// Pairs 128 tokens per block: tens to thousands per call, so one CTA takes microseconds.
#include "cuda/cuda_check.hpp"
#include "cuda/sequence.cuh"
#include "hopper/backward_sm90.hpp"  // kBackwardQBoxRows: the backward's query blocks
#include "hopper/blocks.cuh"
#include "hopper/varlen_tiles.hpp"

namespace flash4::hopper {
namespace {

constexpr int kThreads = 1024;
constexpr int kBuckets = 1024;  // costs >= 1023 blocks (sequences of 128K tokens) tie

// Exclusive prefix of x over the block's threads (thread order); *total = the sum. Every
// thread of the block must call it.
__device__ int block_exclusive_scan(int x, int* total) {
  __shared__ int warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = x;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += y;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int w = warp_sums[lane];
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, w, offset);
      if (lane >= offset) w += y;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const int prefix = (warp > 0 ? warp_sums[warp - 1] : 0) + inclusive - x;
  *total = warp_sums[kThreads / 32 - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return prefix;
}

__device__ int blocks_of(const cuda::AttentionParams& p, int b, TileKind kind) {
  const cuda::Sequence s = cuda::sequence_of(p, b);
  const int rows = kind == TileKind::query_blocks ? s.sq : s.sk_rows;
  return rows > 0 ? (rows + kVarlenBlockRows - 1) / kVarlenBlockRows : 0;
}

__device__ int cost_of(const cuda::AttentionParams& p, int b, int block, TileKind kind) {
  const cuda::Sequence s = cuda::sequence_of(p, b);
  if (kind == TileKind::query_blocks) {
    const BlockRange r = key_blocks_of_query_tile(p, s, block * kVarlenBlockRows, kVarlenBlockRows, kVarlenBlockRows);
    return max(r.end - r.begin, 0);
  }
  return backward_steps(p, s, block * kVarlenBlockRows, kVarlenBlockRows, kBackwardQBoxRows).n_mb;
}

// The sequence of pair j: the largest b with first[b] <= j (empty sequences share their
// first[] with the next one and are skipped that way).
__device__ int sequence_of_pair(const int* first, int batch, int j) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first[mid] <= j)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__device__ int bucket_of(int cost) { return kBuckets - 1 - min(cost, kBuckets - 1); }  // heaviest: bucket 0

__global__ void __launch_bounds__(kThreads) varlen_tiles_kernel(const cuda::AttentionParams p, TileKind kind,
                                                                int2* pairs, int* count, int* first, int capacity) {
  __shared__ int buckets[kBuckets];  // counts, then each bucket's next slot
  // 1. first[b], b = 0 .. batch (first[batch] = all pairs).
  int carry = 0;
  for (int base = 0; base <= p.batch; base += kThreads) {
    const int b = base + int(threadIdx.x);
    const int blocks = b < p.batch ? blocks_of(p, b, kind) : 0;
    int total = 0;
    const int prefix = block_exclusive_scan(blocks, &total);
    if (b <= p.batch) first[b] = carry + prefix;
    carry += total;
  }
  const int n = min(carry, capacity);
  for (int i = threadIdx.x; i < kBuckets; i += kThreads) buckets[i] = 0;
  __syncthreads();  // first[] (global) and the zeroed buckets, visible to the whole block

  // 2. Histogram of the costs.
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const int b = sequence_of_pair(first, p.batch, j);
    atomicAdd(&buckets[bucket_of(cost_of(p, b, j - first[b], kind))], 1);
  }
  __syncthreads();
  // 3. Exclusive scan (bucket 0, the heaviest, first), then the scatter.
  static_assert(kBuckets == kThreads, "one bucket per thread in the scan");
  {
    const int c = buckets[threadIdx.x];
    int total = 0;
    const int prefix = block_exclusive_scan(c, &total);
    buckets[threadIdx.x] = prefix;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const int b = sequence_of_pair(first, p.batch, j);
    const int block = j - first[b];
    const int slot = atomicAdd(&buckets[bucket_of(cost_of(p, b, block, kind))], 1);
    pairs[slot] = make_int2(b, block);
  }
  if (threadIdx.x == 0) *count = n;
}

}  // namespace

void build_varlen_tiles(const cuda::AttentionParams& p, TileKind kind, const VarlenTilesScratch& scratch,
                        cudaStream_t stream) {
  varlen_tiles_kernel<<<1, kThreads, 0, stream>>>(p, kind, scratch.pairs, scratch.count, scratch.first,
                                                  int(scratch.capacity));
  FLASH4_CUDA_CHECK_LAUNCH("varlen_tiles_kernel");
}

}  // namespace flash4::hopper
