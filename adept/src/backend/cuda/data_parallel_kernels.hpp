// The two small kernels of the data-parallel step that ops/cuda has no use for on one
// GPU (cuda_decoder.cpp, "Data parallel"). Plain host launchers; no CUDA headers needed
// beyond the runtime's stream type.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace adept::cuda {

// scale := count > 0 ? float(1 / double(count)) : 0 — the step's gradient scale from the
// targets counted over every rank's micro-batches (all-reduced on the device), rounded
// exactly as the host rounds it on one GPU, so that no host round trip waits for it.
void grad_scale_from_count(float* scale, const int64_t* count, cudaStream_t stream);

// dst[i] += src[i] for i < n (ZeRO-2: a micro-batch's reduced gradient slice added into
// the rank's gradient shard).
void accumulate_f32(float* dst, const float* src, int64_t n, cudaStream_t stream);

}  // namespace adept::cuda
