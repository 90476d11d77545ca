#include <algorithm>
#include <cmath>

#include "ops/cpu/ops.hpp"

namespace adept::cpu {

template <typename T>
CrossEntropyResult cross_entropy(T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t V,
                                 int32_t ignore_index, double grad_scale) {
  double loss_sum = 0.0;
  int64_t count = 0;
#pragma omp parallel for reduction(+ : loss_sum, count)
  for (int64_t n = 0; n < N; ++n) {
    const T* z = logits + n * V;
    T* dz = dlogits ? dlogits + n * V : nullptr;
    int32_t t = targets[n];
    if (t == ignore_index) {
      if (dz) std::fill(dz, dz + V, T(0));
      continue;
    }
    double zmax = z[0];
    for (int64_t v = 1; v < V; ++v) zmax = std::max(zmax, double(z[v]));
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(z[v]) - zmax);
    double lse = zmax + std::log(sum);
    loss_sum += lse - double(z[t]);
    ++count;
    if (dz) {
      for (int64_t v = 0; v < V; ++v) dz[v] = T(std::exp(double(z[v]) - lse) * grad_scale);
      dz[t] -= T(grad_scale);
    }
  }
  CrossEntropyResult r;
  r.loss_sum = loss_sum;
  r.count = count;
  r.loss = count ? loss_sum / double(count) : 0.0;
  return r;
}

template CrossEntropyResult cross_entropy<float>(float*, const float*, const int32_t*, int64_t, int64_t, int32_t,
                                                 double);
template CrossEntropyResult cross_entropy<double>(double*, const double*, const int32_t*, int64_t, int64_t, int32_t,
                                                  double);

}  // namespace adept::cpu
