#include <cmath>
#include <numbers>

#include "ops/cpu/ops.hpp"

namespace adept::cpu {

std::vector<double> rope_inverse_frequencies(const RopeSpec& spec) {
  int64_t half = spec.head_dim / 2;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(spec.theta, double(2 * i) / double(spec.head_dim));
  if (spec.scaling_type == "linear") {
    for (double& f : inv) f /= spec.factor;
  } else if (spec.scaling_type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band
    // between interpolates smoothly (transformers' _compute_llama3_parameters).
    double old_len = double(spec.original_max_position_embeddings);
    double low_wavelen = old_len / spec.low_freq_factor;
    double high_wavelen = old_len / spec.high_freq_factor;
    for (double& f : inv) {
      double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = f / spec.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (old_len / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor);
        f = (1.0 - smooth) * f / spec.factor + smooth * f;
      }
    }
  }
  return inv;
}

RopeTable rope_table(const RopeSpec& spec, int64_t max_positions) {
  RopeTable t;
  t.half_dim = spec.head_dim / 2;
  std::vector<double> inv = rope_inverse_frequencies(spec);
  t.cos.resize(max_positions * t.half_dim);
  t.sin.resize(max_positions * t.half_dim);
  for (int64_t p = 0; p < max_positions; ++p)
    for (int64_t i = 0; i < t.half_dim; ++i) {
      double angle = double(p) * inv[i];
      t.cos[p * t.half_dim + i] = std::cos(angle);
      t.sin[p * t.half_dim + i] = std::sin(angle);
    }
  return t;
}

namespace {
// Rotates pairs (i, i + D/2) by +angle (sign = 1) or -angle (sign = -1).
template <typename T>
void rotate(T* x, const int32_t* pos, const RopeTable& table, int64_t N, int64_t H, int64_t D, double sign) {
  int64_t half = D / 2;
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n) {
    const double* c = table.cos.data() + int64_t(pos[n]) * half;
    const double* s = table.sin.data() + int64_t(pos[n]) * half;
    for (int64_t h = 0; h < H; ++h) {
      T* v = x + (n * H + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        double a = v[i], b = v[i + half], sn = sign * s[i];
        v[i] = T(a * c[i] - b * sn);
        v[i + half] = T(b * c[i] + a * sn);
      }
    }
  }
}
}  // namespace

template <typename T>
void rope_forward(T* x, const int32_t* pos, const RopeTable& table, int64_t N, int64_t H, int64_t D) {
  rotate(x, pos, table, N, H, D, 1.0);
}

template <typename T>
void rope_backward(T* dx, const int32_t* pos, const RopeTable& table, int64_t N, int64_t H, int64_t D) {
  rotate(dx, pos, table, N, H, D, -1.0);  // a rotation's transpose is its inverse
}

template void rope_forward<float>(float*, const int32_t*, const RopeTable&, int64_t, int64_t, int64_t);
template void rope_forward<double>(double*, const int32_t*, const RopeTable&, int64_t, int64_t, int64_t);
template void rope_backward<float>(float*, const int32_t*, const RopeTable&, int64_t, int64_t, int64_t);
template void rope_backward<double>(double*, const int32_t*, const RopeTable&, int64_t, int64_t, int64_t);

}  // namespace adept::cpu
