#include <cmath>

#include "ops/cpu/ops.hpp"

namespace adept::cpu {

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t N, int64_t C) {
  int64_t n = N * C;
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) {
    T g = gate[i];
    out[i] = g / (T(1) + std::exp(-g)) * up[i];
  }
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t N, int64_t C) {
  // silu(g) = g·σ(g);  silu'(g) = σ(g)·(1 + g·(1 − σ(g)))
  int64_t n = N * C;
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) {
    T g = gate[i];
    T sig = T(1) / (T(1) + std::exp(-g));
    dup[i] = dout[i] * g * sig;
    dgate[i] = dout[i] * up[i] * sig * (T(1) + g * (T(1) - sig));
  }
}

template <typename T>
void add_inplace(T* a, const T* b, int64_t n) {
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t, int64_t);
template void swiglu_forward<double>(double*, const double*, const double*, int64_t, int64_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*, int64_t, int64_t);
template void swiglu_backward<double>(double*, double*, const double*, const double*, const double*, int64_t,
                                      int64_t);
template void add_inplace<float>(float*, const float*, int64_t);
template void add_inplace<double>(double*, const double*, int64_t);

}  // namespace adept::cpu
