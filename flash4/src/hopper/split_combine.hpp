// Split-KV (flash-decoding) for the Hopper forward's packed-GQA kernels: the merge of the
// per-split partial results into out and lse, one small kernel after the main one.
#pragma once

#include <cuda_runtime.h>

#include "cuda/params.hpp"

namespace flash4::hopper {

// out[b][i][h] = sum_s exp(lse_s - lse) O_s and lse = log sum_s exp(lse_s) over p.num_splits
// splits of p.o_partial / p.lse_partial (dense q: B x Sq x Hq rows), with the sink joining the
// denominator once (flash4.h); a row no split saw any key of: O = 0, lse = -inf (or the sink).
void combine_splits(const cuda::AttentionParams& p, cudaStream_t stream);

}  // namespace flash4::hopper
