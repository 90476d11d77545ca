// Launchers of the Hopper (sm90a) backward (backward_sm90.cuh), one explicit instantiation
// per head dim in its own .cu file. Called by backward_sm90_host.cpp with params it has
// checked are covered, tensor maps it has encoded and a workspace it has carved.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/params.hpp"
#include "hopper/varlen_tiles.hpp"

namespace flash4::hopper {

// Tensor maps: 4-d (D, S, H, B) views (packed: (D, T, H, 1)) with the 128-byte swizzle and a
// box 64 columns wide; q and dout kBackwardQBoxRows rows high (the query block), k and v
// kTmaBoxRows (the key block, launch.hpp).
struct BackwardTensorMaps {
  CUtensorMap q, k, v, dout;
};

inline constexpr int kBackwardQBoxRows = 64;  // = BackwardSm90Config::kBlockM

// Floats per query head of the per-row arrays (lse2, D), indexed by the workspace token
// (dense b Sq + i, packed the token): every token, then room for one block's copy of
// kBackwardQBoxRows + 4 floats past the last one; a multiple of 4 (16-byte aligned heads).
inline int64_t backward_sm90_row_pitch(int64_t tokens_q) {
  return (tokens_q + kBackwardQBoxRows + 4 + 3) / 4 * 4;
}

// The per-row inputs lse2 / D, [Hq][row_pitch] floats (p.lse_log2, p.d_rows), from out,
// dout and lse (dense or packed).
void backward_sm90_rows(const cuda::AttentionParams& p, int64_t row_pitch, cudaStream_t stream);

// The main kernel: dk, dv written (rows of the sequences' keys), dQ added to p.dq_accum
// (zeroed by the caller). `list`: the varlen work list (pairs == nullptr for a dense call),
// at most `list_capacity` pairs.
template <int D>
void backward_sm90(const BackwardTensorMaps& maps, const cuda::AttentionParams& p, int64_t row_pitch,
                   const VarlenTiles& list, int64_t list_capacity, cudaStream_t stream);

// Whether this binary's backward kernels are sm_90a machine code the current device runs.
bool backward_sm90_runs_here();

}  // namespace flash4::hopper
