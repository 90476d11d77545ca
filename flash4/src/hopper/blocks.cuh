// Which blocks of the other side one tile of the Hopper kernels visits: the key blocks of a
// forward query tile, the query blocks of a backward key block. Shared by the kernels and
// by the varlen work list (varlen_tiles.cu), which orders tiles by these counts, so the two
// can never disagree on what a tile costs.
#pragma once

#include "cuda/params.hpp"
#include "cuda/sequence.cuh"

namespace flash4::hopper {

// Blocks [begin, end) of block_rows rows each; empty when end <= begin.
struct BlockRange {
  int begin = 0, end = 0;
};

// Forward: the key blocks (block_n keys each) holding every key that query rows
// [m0, m0 + block_m) of `seq` see. Both bounds of visible_keys grow with the row, so the
// first row's lower bound and the last row's upper bound enclose them all.
__device__ __forceinline__ BlockRange key_blocks_of_query_tile(const cuda::AttentionParams& p, const cuda::Sequence& seq,
                                                               int m0, int block_m, int block_n) {
  BlockRange r;
  const int last = min(m0 + block_m, seq.sq) - 1;
  if (last < m0) return r;
  const int lo = cuda::visible_keys(p, m0, seq).lo, hi = cuda::visible_keys(p, last, seq).hi;
  if (hi <= lo) return r;
  r.begin = lo / block_n;
  r.end = (hi + block_n - 1) / block_n;
  return r;
}

// Backward: the query blocks of one CTA's key block [n0, n0 + block_n): steps = group * n_mb,
// step -> (query head, first row); the query blocks mb_lo .. mb_lo + n_mb - 1 (block_m rows
// each) hold every query that sees one of the keys.
struct BackwardSteps {
  int mb_lo = 0, n_mb = 0, steps = 0;
  __device__ int head(int step, int hk, int group) const { return hk * group + step / n_mb; }
  __device__ int row0(int step, int block_m) const { return (mb_lo + step % n_mb) * block_m; }
};

__device__ __forceinline__ BackwardSteps backward_steps(const cuda::AttentionParams& p, const cuda::Sequence& seq,
                                                        int n0, int block_n, int block_m) {
  BackwardSteps s;
  const int rows_k = min(block_n, seq.sk - n0);
  if (rows_k <= 0) return s;
  const cuda::QueryInterval qi = cuda::queries_seeing(p, n0, n0 + rows_k, seq);
  if (qi.end <= qi.begin) return s;
  s.mb_lo = qi.begin / block_m;
  s.n_mb = (qi.end + block_m - 1) / block_m - s.mb_lo;
  s.steps = p.group * s.n_mb;
  return s;
}

// Rows [row_begin, row_end) of a 16-bit shared-memory tile in the 128B-swizzled layout of
// ptx_sm90.cuh ([chunks][rows][64], chunk_bytes apart) -> 0, 16 bytes per store, by threads
// `thread` = 0 .. threads - 1. Whole rows, so the swizzle inside a row does not matter.
// The varlen kernels call it on the rows a TMA box read past the end of its sequence: they
// hold the next sequence's tokens (or the caller's padding), which P = 0 or dS = 0 would
// multiply -- and 0 * inf or 0 * NaN is NaN. The caller fences (fence_proxy_async) and
// synchronises the readers before any wgmma reads the tile.
__device__ __forceinline__ void zero_tile_rows(unsigned char* tile, uint32_t chunk_bytes, int chunks, int row_begin,
                                               int row_end, int thread, int threads) {
  const int per_chunk = (row_end - row_begin) * 8;  // 16-byte pieces
  if (per_chunk <= 0) return;
#pragma unroll 1
  for (int i = thread; i < chunks * per_chunk; i += threads) {
    const int c = i / per_chunk, piece = i % per_chunk;
    *reinterpret_cast<uint4*>(tile + c * chunk_bytes + row_begin * 128 + piece * 16) = make_uint4(0, 0, 0, 0);
  }
}

}  // namespace flash4::hopper
