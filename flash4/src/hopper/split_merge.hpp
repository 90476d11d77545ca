// The arithmetic of merging split-KV partial results (hopper/split_combine.cu), on its own so
// that the CPU tests check it against a softmax over all the keys at once. A run s of a row's
// keys gives its normalised output O_s and natural-log LSE lse_s (-inf: the run saw no key);
// the row's output is sum_s w_s O_s / denominator with w_s = exp(lse_s - top), and its LSE
// top + log(denominator), where top = max(max_s lse_s, sink) keeps the exponentials <= 1 and a
// learnable sink (flash4.h) adds exp(sink - top) to the denominator only.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FLASH4_HOST_DEVICE __host__ __device__
#else
#define FLASH4_HOST_DEVICE
#endif

namespace flash4::hopper {

struct SplitMerge {
  float top = -INFINITY;   // the largest LSE (or the sink)
  float denominator = 0;   // 0: no run saw a key and there is no sink (output 0, LSE -inf)
};

// The merge of `splits` runs whose LSEs are lse[0], lse[stride], ...; `sink` -inf for none.
FLASH4_HOST_DEVICE inline SplitMerge split_merge(const float* lse, int64_t stride, int splits, float sink) {
  SplitMerge m;
  for (int s = 0; s < splits; ++s) m.top = fmaxf(m.top, lse[s * stride]);
  m.top = fmaxf(m.top, sink);
  if (m.top == -INFINITY) return m;
  for (int s = 0; s < splits; ++s) m.denominator += expf(lse[s * stride] - m.top);
  m.denominator += expf(sink - m.top);  // 0 without a sink
  return m;
}

// Run s's weight in the merged output (0 for a run that saw no key, or when nothing did).
FLASH4_HOST_DEVICE inline float split_weight(const SplitMerge& m, float lse_s) {
  return m.denominator > 0 && lse_s != -INFINITY ? expf(lse_s - m.top) / m.denominator : 0.0f;
}

// The merged row's natural-log LSE.
FLASH4_HOST_DEVICE inline float split_lse(const SplitMerge& m) {
  return m.denominator > 0 ? m.top + logf(m.denominator) : -INFINITY;
}

}  // namespace flash4::hopper

#undef FLASH4_HOST_DEVICE
