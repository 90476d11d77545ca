#include <cmath>

#include "ops/cpu/ops.hpp"

namespace adept::cpu {

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* in, const T* weight, int64_t N, int64_t C, double eps) {
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + n * C;
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += double(x[c]) * double(x[c]);
    T r = T(1.0 / std::sqrt(ss / double(C) + eps));
    rstd[n] = r;
    T* y = out + n * C;
    for (int64_t c = 0; c < C; ++c) y[c] = x[c] * r * weight[c];
  }
}

template <typename T>
void rmsnorm_backward(T* din, T* dweight, const T* dout, const T* in, const T* weight, const T* rstd, int64_t N,
                      int64_t C) {
  // y = w ⊙ x·r with r = (mean(x²)+eps)^-1/2:  dx = r·(w⊙dy) − x·r³·mean(x ⊙ w ⊙ dy).
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + n * C;
    const T* dy = dout + n * C;
    double r = rstd[n];
    double dot = 0.0;
    for (int64_t c = 0; c < C; ++c) dot += double(x[c]) * double(weight[c]) * double(dy[c]);
    double k = r * r * r * dot / double(C);
    T* dx = din + n * C;
    for (int64_t c = 0; c < C; ++c) dx[c] = T(r * double(weight[c]) * double(dy[c]) - double(x[c]) * k);
  }
  if (dweight) {
#pragma omp parallel for
    for (int64_t c = 0; c < C; ++c) {
      double acc = 0.0;
      for (int64_t n = 0; n < N; ++n) acc += double(dout[n * C + c]) * double(in[n * C + c]) * double(rstd[n]);
      dweight[c] += T(acc);
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t, double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*,
                                      int64_t, int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*,
                                       const double*, int64_t, int64_t);

}  // namespace adept::cpu
