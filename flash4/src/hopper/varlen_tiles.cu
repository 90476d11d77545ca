// build_varlen_tiles (varlen_tiles.hpp): one CTA of 1024 threads
//   1. first[b] = sum over sequences b' < b of their blocks (block-wide scans, 1024
//      sequences at a time);
//   2. a histogram of the pairs' costs (cost = blocks of the other side the tile visits,
//      blocks.cuh, capped at kBuckets - 1) in shared memory, each thread finding its pair's
//      sequence by binary search in first[];
//   3. an exclusive scan of the histogram, heaviest bucket first, then each pair takes the
//      next slot of its bucket (atomicAdd): a counting sort. The order within a bucket
//      varies from run to run; the results do not (every tile is computed whole by one CTA).
// TileKind::key_blocks_in_dq_order (varlen_tiles_dq_order_kernel) is another list: after
// step 1, each sequence's rank among the sequences (heaviest first, ties by index) gives the
// offset of its block of pairs, which it fills from its last key block to its first.
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

// Rows of one block of the kind's own side (the forward's query blocks, the backward's key
// blocks: key_rows).
__device__ int block_rows(TileKind kind, int key_rows) {
  return kind == TileKind::query_blocks_of_192 ? kVarlenQueryRows3
         : kind == TileKind::query_blocks      ? kVarlenBlockRows
                                               : key_rows;
}
__device__ bool query_kind(TileKind kind) {
  return kind == TileKind::query_blocks || kind == TileKind::query_blocks_of_192;
}

__device__ int blocks_of(const cuda::AttentionParams& p, int b, TileKind kind, int key_rows) {
  const cuda::Sequence s = cuda::sequence_of(p, b);
  const int rows = query_kind(kind) ? s.sq : s.sk_rows;  // key blocks of either backward kind
  const int per_block = block_rows(kind, key_rows);
  return rows > 0 ? (rows + per_block - 1) / per_block : 0;
}

__device__ int cost_of(const cuda::AttentionParams& p, int b, int block, TileKind kind, int key_rows) {
  const cuda::Sequence s = cuda::sequence_of(p, b);
  if (query_kind(kind)) {
    const int per_block = block_rows(kind, key_rows);  // key blocks: kVarlenBlockRows keys either way
    const BlockRange r = key_blocks_of_query_tile(p, s, block * per_block, per_block, kVarlenBlockRows);
    return max(r.end - r.begin, 0);
  }
  return backward_steps(p, s, block * key_rows, key_rows, kBackwardQBoxRows).n_mb;
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

// 1. first[b], b = 0 .. batch (first[batch] = all pairs); returns all pairs. Every thread of
// the block must call it; first[] is visible to the whole block after the next __syncthreads.
__device__ int first_pairs(const cuda::AttentionParams& p, TileKind kind, int key_rows, int* first) {
  int carry = 0;
  for (int base = 0; base <= p.batch; base += kThreads) {
    const int b = base + int(threadIdx.x);
    const int blocks = b < p.batch ? blocks_of(p, b, kind, key_rows) : 0;
    int total = 0;
    const int prefix = block_exclusive_scan(blocks, &total);
    if (b <= p.batch) first[b] = carry + prefix;
    carry += total;
  }
  return carry;
}

__global__ void __launch_bounds__(kThreads) varlen_tiles_kernel(const cuda::AttentionParams p, TileKind kind,
                                                                int key_rows, int2* pairs, int* count, int* first,
                                                                int capacity) {
  __shared__ int buckets[kBuckets];  // counts, then each bucket's next slot
  const int n = min(first_pairs(p, kind, key_rows, first), capacity);
  for (int i = threadIdx.x; i < kBuckets; i += kThreads) buckets[i] = 0;
  __syncthreads();  // first[] (global) and the zeroed buckets, visible to the whole block

  // 2. Histogram of the costs.
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const int b = sequence_of_pair(first, p.batch, j);
    atomicAdd(&buckets[bucket_of(cost_of(p, b, j - first[b], kind, key_rows))], 1);
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
    const int slot = atomicAdd(&buckets[bucket_of(cost_of(p, b, block, kind, key_rows))], 1);
    pairs[slot] = make_int2(b, block);
  }
  if (threadIdx.x == 0) *count = n;
}

// TileKind::key_blocks_in_dq_order (varlen_tiles.hpp). Sequence b's weight: the query blocks
// that see its first or its last key block, whichever is more (the whole sequence's walk
// takes about as long as its heaviest block's: causal, the first; a left window without
// causal, the last; in between, about the same).
__global__ void __launch_bounds__(kThreads) varlen_tiles_dq_order_kernel(const cuda::AttentionParams p, int key_rows,
                                                                         int2* pairs, int* count, int* first,
                                                                         int capacity) {
  __shared__ int2 seqs[kOrderedSequences];  // (weight, pairs) per sequence, when sorted
  const TileKind kind = TileKind::key_blocks;
  const int n = min(first_pairs(p, kind, key_rows, first), capacity);
  const bool sorted = p.batch <= kOrderedSequences;
  __syncthreads();  // first[] (global), visible to the whole block
  if (sorted) {
    for (int b = threadIdx.x; b < p.batch; b += kThreads) {
      const int blocks = first[b + 1] - first[b];
      const int weight =
          blocks > 0 ? max(cost_of(p, b, 0, kind, key_rows), cost_of(p, b, blocks - 1, kind, key_rows)) : 0;
      seqs[b] = make_int2(weight, blocks);
    }
    __syncthreads();
  }
  for (int b = threadIdx.x; b < p.batch; b += kThreads) {
    const int blocks = first[b + 1] - first[b];
    int offset = first[b];
    if (sorted) {
      // Pairs of the sequences before b: heavier, or as heavy with a smaller index.
      offset = 0;
      const int2 mine = seqs[b];
      for (int c = 0; c < p.batch; ++c) {
        const int2 other = seqs[c];
        if (other.x > mine.x || (other.x == mine.x && c < b)) offset += other.y;
      }
    }
    for (int k = 0; k < blocks && offset + k < n; ++k) pairs[offset + k] = make_int2(b, blocks - 1 - k);
  }
  if (threadIdx.x == 0) *count = n;
}

}  // namespace

void build_varlen_tiles(const cuda::AttentionParams& p, TileKind kind, const VarlenTilesScratch& scratch,
                        cudaStream_t stream) {
  if (kind == TileKind::key_blocks_in_dq_order) {
    varlen_tiles_dq_order_kernel<<<1, kThreads, 0, stream>>>(p, scratch.key_rows, scratch.pairs, scratch.count,
                                                             scratch.first, int(scratch.capacity));
    FLASH4_CUDA_CHECK_LAUNCH("varlen_tiles_dq_order_kernel");
    return;
  }
  varlen_tiles_kernel<<<1, kThreads, 0, stream>>>(p, kind, scratch.key_rows, scratch.pairs, scratch.count,
                                                  scratch.first, int(scratch.capacity));
  FLASH4_CUDA_CHECK_LAUNCH("varlen_tiles_kernel");
}

}  // namespace flash4::hopper
