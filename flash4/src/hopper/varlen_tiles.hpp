// The work list of a packed (varlen, cu_seqlens) call for the Hopper kernels: every
// (sequence, block) pair that exists -- no tile of a sequence shorter than the longest --
// ordered heaviest first (the most blocks of the other side to visit), built on the device
// from cu_seqlens by one small kernel before the main one, so the host needs neither
// max_seqlen nor a copy of cu_seqlens. The forward's persistent CTAs walk the pairs
// round-robin (each pair times the query heads); the backward launches one CTA per pair
// and KV head. Heaviest first makes the last wave the lightest (FA3's longest-processing-
// time-first idea, here by a counting sort on the cost). The backward with deterministic dQ
// needs another order (key_blocks_in_dq_order).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/params.hpp"

namespace flash4::hopper {

struct VarlenTiles {
  const int2* pairs = nullptr;  // {sequence b, block index}, heaviest first; NULL: a dense call
  const int* count = nullptr;   // how many pairs the list holds (device)
};

enum class TileKind {
  query_blocks,  // forward: blocks of 128 query rows; cost = key blocks they see
  query_blocks_of_192,  // the d = 64 forward with three consumer warpgroups: blocks of 192 rows
  key_blocks,    // backward: blocks of 128 keys (the d 256 kernel: 64); cost = query blocks of 64 that see them
  // Backward with deterministic dQ: the same pairs, each sequence's key blocks together and
  // from its last block to its first (a CTA waits for the key blocks above its own, which
  // must start first: backward_sm90.cuh, "No deadlock"); the sequences heaviest first (the
  // query blocks of 64 that see their first or last key block, whichever is more; ties by
  // sequence index, so the list is the same on every run). Past kOrderedSequences sequences
  // they keep their index order.
  key_blocks_in_dq_order
};

// Sequences the key_blocks_in_dq_order list sorts (an O(batch^2 / 1024) rank per sequence).
inline constexpr int kOrderedSequences = 2048;

// Rows per block of each kind (ForwardSm90Config::kBlockM, BackwardSm90Config::kBlockN);
// query_blocks_of_192: kVarlenQueryRows3 (ForwardSm90Config<64, 3>::kBlockM); the backward's
// key blocks: VarlenTilesScratch::key_rows (128, or 64 for the d 256 kernel).
inline constexpr int kVarlenBlockRows = 128;
inline constexpr int kVarlenQueryRows3 = 192;

// An upper bound on the pairs of a packed batch in blocks of `rows`: sum_b ceil(len_b / rows)
// <= tokens / rows + batch (cu_seqlens end within the packed tensor: the API's contract).
inline int64_t varlen_tile_capacity(int64_t tokens, int64_t batch, int rows = kVarlenBlockRows) {
  return (tokens + rows - 1) / rows + batch;
}

// Device scratch of the list: pairs [capacity], count, first [batch + 1] (ints).
struct VarlenTilesScratch {
  int2* pairs = nullptr;
  int* count = nullptr;
  int* first = nullptr;  // first[b] = pairs of the sequences before b (the builder's prefix sum)
  int64_t capacity = 0;
  int key_rows = kVarlenBlockRows;  // keys per block of the backward kinds (the d 256 kernel: 64)
};

// Fills scratch (on `stream`) for the sequences of p (cu_seqlens_q / _k, batch, causal, window).
void build_varlen_tiles(const cuda::AttentionParams& p, TileKind kind, const VarlenTilesScratch& scratch,
                        cudaStream_t stream);

}  // namespace flash4::hopper
