// Launchers of the portable CUDA kernels, one explicit instantiation per supported
// (padded) head-dim pair in its own .cu file so the build parallelises and each file
// stays small. Called by portable.cpp with validated, supported params.
#pragma once

#include <cuda_runtime.h>

#include "params.hpp"

namespace flash4::cuda {

// Padded (d_qk, d_v) pairs with kernels: the kernels zero-fill the columns past the
// real head dim, so any d <= the padded one (multiple of 8) runs on it.
inline constexpr int kHeadDimPairs[][2] = {{64, 64}, {96, 96}, {128, 128}, {192, 128}, {192, 192}, {256, 256}};

// `two_stages`: double-buffer K / V (more shared memory); else FA2's one buffer each.
template <int DQK, int DV>
void forward_hdim(const AttentionParams& p, bool two_stages, cudaStream_t stream);
template <int DQK, int DV>
size_t forward_smem_bytes(bool two_stages);

// The per-key-block kernel (dK, dV, and dQ by atomics unless p.deterministic) and, when
// deterministic, the per-query-block dQ kernel. Expects the preprocess to have run.
// `two_stages`: double-buffer Q / dO (needs the larger shared memory of sm90);
// `dq_two_stages`: double-buffer K / V in the deterministic dQ kernel.
template <int DQK, int DV>
void backward_hdim(const AttentionParams& p, bool two_stages, bool dq_two_stages, cudaStream_t stream);
template <int DQK, int DV>
size_t backward_dq_smem_bytes(bool two_stages);

// Shared memory the backward needs with one / two Q-dO stages (bytes).
size_t backward_smem_bytes(int dqk_padded, int dv_padded, bool two_stages);

// Row-wise helpers of the backward (backward_rows.cu).
void backward_preprocess(const AttentionParams& p, cudaStream_t stream);  // D, lse2, dsink rows
void backward_finish(const AttentionParams& p, cudaStream_t stream);      // dq (atomic), zero rows, dsink

}  // namespace flash4::cuda
