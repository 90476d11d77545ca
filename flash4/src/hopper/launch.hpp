// Launchers of the Hopper (sm90a) kernels, one explicit instantiation per head dim in its
// own .cu file (forward_sm90_hdim*.cu) so the build parallelises. Called by hopper.cpp
// with params it has checked are covered and TMA descriptors it has encoded.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "cuda/params.hpp"
#include "hopper/varlen_tiles.hpp"

namespace flash4::hopper {

// Tensor maps: 4-d (D, S, H, B) views of q, k, v (packed: (D, T, H, 1)) with a box of 64
// columns x rows (q: forward_query_rows; k, v: forward_key_box_rows(d)) and the 128-byte swizzle
// (see ptx_sm90.cuh).
struct ForwardTensorMaps {
  CUtensorMap q, k, v;
  CUtensorMap o;  // out, box 64 columns x 64 rows: the TMA store of O (ForwardSchedule::tma_store_o)
};

inline constexpr int kTmaBoxRows = 128;  // kBlockN of the backward (and the forward's kBlockM with two warpgroups)

// The forward's key block (ForwardSm90Config<d>::kBlockN, launch_impl.cuh checks): the rows
// of the k / v boxes. 80 at d = 256, where registers and shared memory allow no more.
constexpr int forward_key_box_rows(int d) { return d <= 128 ? 128 : 80; }

// Rows of one TMA box of a paged K / V tensor (forward_sm90.cuh, load_key_block): the largest
// that divides both page_size and the key block.
constexpr int paged_box_rows(int page_size, int block_n) {
  int a = page_size, b = block_n;
  while (b != 0) {
    const int r = a % b;
    a = b;
    b = r;
  }
  return a;
}

// The forward's query block (ForwardSm90Config<d, warpgroups>::kBlockM): the rows of the q
// box and of the varlen list's query blocks. 64 per consumer warpgroup.
constexpr int forward_query_rows(int warpgroups) { return 64 * warpgroups; }

// Scheduling switches of the forward (forward_sm90.cuh), for A/B runs.
struct ForwardSchedule {
  bool pingpong = false;  // the two consumer warpgroups alternate their wgmma batches
  // Consumer warpgroups: 2, or 3 at d = 64 (192-row tiles; the caller encoded the q map and
  // built the varlen list for forward_query_rows(3)).
  int warpgroups = 2;
  // Non-null: the dynamic schedule -- persistent CTAs take tiles from this counter, which the
  // caller has zeroed on the launch's stream (one int of the call's workspace). Null: the
  // static round-robin.
  int* tile_counter = nullptr;
  // The consumers write each finished O tile into its (done) Q buffer and one thread stores it
  // with TMA, instead of 16-byte stores from registers: dense q, not packed, d <= 128 (two Q
  // buffers); the caller encoded maps.o.
  bool tma_store_o = false;
  // With tma_store_o: a producer warp issues the stores and waits for their reads, so the
  // consumers only write their rows and go on (opt-in, FLASH4_HOPPER_O_STORE_WARP=1).
  bool store_warp_o = false;
};

// `list`: the varlen work list (pairs == nullptr for a dense call), of at most
// `list_capacity` pairs (it bounds the grid; the kernel reads the real count).
// p.softcap > 0 picks the kernels with the softcap; p.sink (may be null) is read in the finish.
template <int D>
void forward_sm90(const ForwardTensorMaps& maps, const cuda::AttentionParams& p, const VarlenTiles& list,
                  int64_t list_capacity, const ForwardSchedule& schedule, cudaStream_t stream);

}  // namespace flash4::hopper

namespace flash4::hopper {
// Whether the Hopper kernels in this binary are sm_90a machine code the current device
// runs (cudaFuncGetAttributes' binaryVersion 90); false on any other device.
bool forward_sm90_runs_here();
}  // namespace flash4::hopper
