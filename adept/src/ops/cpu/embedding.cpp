#include <cstring>

#include "ops/cpu/ops.hpp"

namespace adept::cpu {

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* wte, int64_t N, int64_t C) {
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * C, wte + int64_t(ids[n]) * C, sizeof(T) * C);
}

template <typename T>
void embedding_backward(T* dwte, const T* dout, const int32_t* ids, int64_t N, int64_t C) {
  // Parallel over channels, sequential over tokens: every row sums in token order, so the
  // result does not depend on the thread count.
#pragma omp parallel for
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = 0; n < N; ++n) dwte[int64_t(ids[n]) * C + c] += dout[n * C + c];
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t);

}  // namespace adept::cpu
