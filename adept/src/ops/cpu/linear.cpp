#include <algorithm>

#include "ops/cpu/ops.hpp"

namespace adept::cpu {

namespace {
constexpr int64_t kRowBlock = 8;  // rows of `in` that share one pass over a weight row
}

template <typename T>
void linear_forward(T* out, const T* in, const T* weight, const T* bias, int64_t N, int64_t IC, int64_t OC) {
  // Blocks of kRowBlock input rows reuse each weight row while it is in L1.
  int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t n0 = b * kRowBlock, n1 = std::min(N, n0 + kRowBlock);
    for (int64_t o = 0; o < OC; ++o) {
      const T* w = weight + o * IC;
      for (int64_t n = n0; n < n1; ++n) {
        const T* x = in + n * IC;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < IC; ++i) acc += x[i] * w[i];
        out[n * OC + o] = acc + (bias ? bias[o] : T(0));
      }
    }
  }
}

template <typename T>
void linear_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, int64_t N,
                     int64_t IC, int64_t OC) {
  if (din) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      T* dx = din + n * IC;
      std::fill(dx, dx + IC, T(0));
      for (int64_t o = 0; o < OC; ++o) {
        T g = dout[n * OC + o];
        const T* w = weight + o * IC;
#pragma omp simd
        for (int64_t i = 0; i < IC; ++i) dx[i] += g * w[i];
      }
    }
  }
  if (dweight || dbias) {
    // Parallel over output rows: each thread owns its rows of dweight, summed in token
    // order, so gradients are deterministic.
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < OC; ++o) {
      T bsum = 0;
      T* dw = dweight ? dweight + o * IC : nullptr;
      for (int64_t n = 0; n < N; ++n) {
        T g = dout[n * OC + o];
        bsum += g;
        if (dw) {
          const T* x = in + n * IC;
#pragma omp simd
          for (int64_t i = 0; i < IC; ++i) dw[i] += g * x[i];
        }
      }
      if (dbias) dbias[o] += bsum;
    }
  }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      int64_t, int64_t, int64_t);

}  // namespace adept::cpu
