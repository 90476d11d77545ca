// Causal GQA attention over packed documents (varlen), on the device, in the decoder's
// layout: q, k, v are column blocks of the fused qkv activation [N][ld] (q at column 0,
// k at Hq·D, v at (Hq+Hkv)·D), out [N][Hq][D], lse [Hq][N] fp32 (natural log, of the
// scaled scores), exactly flash4's varlen contract.
//
// Two implementations:
//  - flash4 (its CUDA API: the portable or Hopper kernels), the normal path;
//  - materialised scores: per document and per query group, S = scale·Q Kᵀ by a batched
//    cuBLASLt GEMM, a masked softmax kernel, O = P V; backward recomputes P from lse.
//    O(L²) memory per document and no causal skipping: it exists so that training runs
//    (and is tested) where flash4 has no CUDA kernel for a shape, not to be fast.
// Forward and backward switch to the fallback independently, the first time flash4
// answers FLASH4_UNSUPPORTED; both follow the same lse convention, so they mix.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "backend/cuda/gemm.hpp"

namespace adept::cuda {

struct AttentionShape {
  int64_t Hq = 0, Hkv = 0, D = 0;
  float softmax_scale = 0.0f;
  int window_left = -1;  // < 0: unbounded (plain causal)
};

// The documents of one batch: device cu_seqlens for flash4, the host copy for the fallback's
// per-document loop.
struct AttentionDocuments {
  const int32_t* cu_seqlens_device = nullptr;
  std::vector<int32_t> cu_seqlens;  // host, [docs + 1]
  int32_t max_len = 0;
};

// Fallback scratch, planned by the caller inside its arena.
struct AttentionScratch {
  float* scores = nullptr;    // [Hkv][Lmax][Lmax]
  __nv_bfloat16* probs = nullptr;  // [Hkv][Lmax][Lmax]
  float* dk = nullptr;        // [N][Hkv·D]
  float* dv = nullptr;        // [N][Hkv·D]
  float* delta = nullptr;     // [Hq][N]
};
struct AttentionScratchSize {
  int64_t scores_floats, probs_elems, dkv_floats, delta_floats;
};
AttentionScratchSize attention_scratch_size(const AttentionShape& shape, int64_t max_tokens, int64_t max_len);

enum class AttentionImpl { flash4, fallback };
const char* attention_impl_name(AttentionImpl impl);

class Attention {
 public:
  // prefer: flash4 → try flash4 first; fallback → never call flash4.
  Attention(const AttentionShape& shape, Gemm& gemm, AttentionScratch scratch, AttentionImpl prefer);

  void forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int64_t ld, int64_t N,
               const AttentionDocuments& docs, cudaStream_t stream);
  // Writes dq, dk, dv into the matching column blocks of dqkv [N][ld] (overwritten).
  void backward(__nv_bfloat16* dqkv, const __nv_bfloat16* qkv, int64_t ld, const __nv_bfloat16* out,
                const __nv_bfloat16* dout, const float* lse, int64_t N, const AttentionDocuments& docs,
                cudaStream_t stream);

  AttentionImpl forward_impl() const { return forward_impl_; }
  AttentionImpl backward_impl() const { return backward_impl_; }
  bool fallback_available() const { return scratch_.scores != nullptr; }

 private:
  bool flash4_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int64_t ld, int64_t N,
                      const AttentionDocuments& docs, cudaStream_t stream);
  bool flash4_backward(__nv_bfloat16* dqkv, const __nv_bfloat16* qkv, int64_t ld, const __nv_bfloat16* out,
                       const __nv_bfloat16* dout, const float* lse, int64_t N, const AttentionDocuments& docs,
                       cudaStream_t stream);
  void fallback_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int64_t ld, int64_t N,
                        const AttentionDocuments& docs, cudaStream_t stream);
  void fallback_backward(__nv_bfloat16* dqkv, const __nv_bfloat16* qkv, int64_t ld, const __nv_bfloat16* out,
                         const __nv_bfloat16* dout, const float* lse, int64_t N, const AttentionDocuments& docs,
                         cudaStream_t stream);

  AttentionShape shape_;
  Gemm& gemm_;
  AttentionScratch scratch_;
  AttentionImpl forward_impl_, backward_impl_;
};

// Whether flash4's CUDA path runs this shape (a tiny forward and backward on temporary
// device memory; call before the arena is planned). Returns the reason when it does not.
bool flash4_cuda_supports(const AttentionShape& shape, std::string* reason);

}  // namespace adept::cuda
