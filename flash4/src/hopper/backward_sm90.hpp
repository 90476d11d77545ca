// Launchers of the Hopper (sm90a) backward (backward_sm90.cuh), one explicit instantiation
// per head dim in its own .cu file. Called by backward_sm90_host.cpp with params it has
// checked are covered, tensor maps it has encoded and a workspace it has carved.
// NOT YET RUN ON A GPU.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/params.hpp"

namespace flash4::hopper {

// Tensor maps: 4-d (D, S, H, B) views with the 128-byte swizzle and a box 64 columns wide;
// q and dout kBackwardQBoxRows rows high (the query block), k and v kTmaBoxRows (the key
// block, launch.hpp).
struct BackwardTensorMaps {
  CUtensorMap q, k, v, dout;
};

inline constexpr int kBackwardQBoxRows = 64;  // = BackwardSm90Config::kBlockM

// Rows of the per-row arrays (lse2, D) of one (sequence, head): Sq rounded up to the query
// block, so that every block's rows are one aligned 256-byte copy.
inline int64_t backward_sm90_padded_rows(int seqlen_q) {
  return (int64_t(seqlen_q) + kBackwardQBoxRows - 1) / kBackwardQBoxRows * kBackwardQBoxRows;
}

// The per-row inputs lse2 / D, [B][Hq][backward_sm90_padded_rows(Sq)] floats (p.lse_log2,
// p.d_rows), from out, dout and lse.
void backward_sm90_rows(const cuda::AttentionParams& p, int64_t padded_rows, cudaStream_t stream);

// The main kernel: dk, dv written, dQ added to p.dq_accum (zeroed by the caller).
template <int D>
void backward_sm90(const BackwardTensorMaps& maps, const cuda::AttentionParams& p, int64_t padded_rows,
                   cudaStream_t stream);

// Whether this binary's backward kernels are sm_90a machine code the current device runs.
bool backward_sm90_runs_here();

}  // namespace flash4::hopper
