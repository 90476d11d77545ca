#include <algorithm>
#include <numeric>

#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

__global__ void embedding_forward_kernel(bf16* out, const int32_t* ids, const bf16* wte, int64_t C) {
  const int64_t n = blockIdx.x;
  const bf16* src = wte + int64_t(ids[n]) * C;
  bf16* dst = out + n * C;
  if (C % 8 == 0) {
    for (int64_t i = threadIdx.x; i < C / 8; i += blockDim.x)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) dst[i] = src[i];
  }
}

// One block per id: its tokens are summed in token order, then added once.
__global__ void embedding_backward_kernel(float* dwte, const bf16* dout, const int32_t* sorted_tokens,
                                          const int32_t* segment_start, const int32_t* segment_id,
                                          const int32_t* num_segments, int64_t C) {
  const int s = blockIdx.x;
  if (s >= *num_segments) return;
  const int begin = segment_start[s], end = segment_start[s + 1];
  float* row = dwte + int64_t(segment_id[s]) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    for (int i = begin; i < end; ++i) acc += __bfloat162float(dout[int64_t(sorted_tokens[i]) * C + c]);
    row[c] += acc;
  }
}

}  // namespace

void embedding_forward(bf16* out, const int32_t* ids, const bf16* wte, int64_t N, int64_t C, cudaStream_t stream) {
  embedding_forward_kernel<<<unsigned(N), 128, 0, stream>>>(out, ids, wte, C);
  ADEPT_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

EmbeddingSegments embedding_segments(const int32_t* ids, int64_t N) {
  EmbeddingSegments s;
  s.sorted_tokens.resize(N);
  std::iota(s.sorted_tokens.begin(), s.sorted_tokens.end(), 0);
  std::stable_sort(s.sorted_tokens.begin(), s.sorted_tokens.end(),
                   [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  for (int64_t i = 0; i < N; ++i) {
    if (i == 0 || ids[s.sorted_tokens[i]] != ids[s.sorted_tokens[i - 1]]) {
      s.segment_start.push_back(int32_t(i));
      s.segment_id.push_back(ids[s.sorted_tokens[i]]);
    }
  }
  s.segment_start.push_back(int32_t(N));
  return s;
}

void embedding_backward(float* dwte, const bf16* dout, const int32_t* sorted_tokens, const int32_t* segment_start,
                        const int32_t* segment_id, const int32_t* num_segments, int64_t N, int64_t C,
                        cudaStream_t stream) {
  int threads = int(std::min<int64_t>(256, (C + 31) / 32 * 32));
  embedding_backward_kernel<<<unsigned(N), threads, 0, stream>>>(dwte, dout, sorted_tokens, segment_start,
                                                                 segment_id, num_segments, C);
  ADEPT_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
}

}  // namespace adept::cuda
