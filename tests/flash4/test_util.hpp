// Shared helpers for the flash4 tests: seeded random inputs, host tensors of any dtype,
// NaN poisoning, and an independent naive attention (full score matrix, explicit mask,
// softmax with sink) to compare the library against.
#pragma once

#include <flash4/flash4.hpp>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "reference/numeric.hpp"

namespace flash4_test {

// A seed from std::random_device, or FLASH4_TEST_SEED when set; printed so a failure
// can be replayed.
inline uint64_t test_seed() {
  if (const char* env = std::getenv("FLASH4_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  std::random_device device;
  return (uint64_t(device()) << 32) ^ device();
}

// Base fixture: every test gets its own printed seed and generator.
class Flash4Test : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = test_seed();
    rng_.seed(seed_);
    std::cout << "[   seed   ] " << seed_ << " (FLASH4_TEST_SEED=" << seed_ << " replays it)\n";
    RecordProperty("seed", std::to_string(seed_));
  }
  double uniform(double lo = -1.0, double hi = 1.0) { return std::uniform_real_distribution<double>(lo, hi)(rng_); }
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

// A row-major host tensor of any flash4 dtype; element access in double.
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(flash4_dtype dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
    numel_ = 1;
    for (int64_t s : shape_) numel_ *= s;
    bytes_.assign(size_t(numel_ * flash4::detail::dtype_size(dtype_)) + 1, 0);
  }

  int64_t numel() const { return numel_; }
  flash4_dtype dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  void* data() { return bytes_.data(); }

  double get(int64_t i) const {
    double x;
    flash4::detail::load_row(dtype_, bytes_.data(), i, 1, &x);
    return x;
  }
  void set(int64_t i, double x) { flash4::detail::store_row(dtype_, bytes_.data(), i, 1, &x); }
  std::vector<double> values() const {
    std::vector<double> out(numel_);
    flash4::detail::load_row(dtype_, bytes_.data(), 0, numel_, out.data());
    return out;
  }
  // Values rounded to this dtype.
  void assign(const std::vector<double>& values) {
    for (int64_t i = 0; i < numel_; ++i) set(i, values[i]);
  }
  void poison() {
    for (int64_t i = 0; i < numel_; ++i) set(i, std::numeric_limits<double>::quiet_NaN());
  }
  bool all_finite() const {
    for (int64_t i = 0; i < numel_; ++i)
      if (!std::isfinite(get(i))) return false;
    return true;
  }

  // The contiguous (row-major) view.
  flash4_tensor view() {
    flash4_tensor t{};
    t.data = data();
    t.dtype = dtype_;
    t.rank = int(shape_.size());
    int64_t stride = 1;
    for (int d = t.rank - 1; d >= 0; --d) {
      t.shape[d] = shape_[d];
      t.stride[d] = stride;
      stride *= shape_[d];
    }
    return t;
  }

 private:
  flash4_dtype dtype_ = FLASH4_F64;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  std::vector<unsigned char> bytes_;
};

inline std::vector<double> random_values(std::mt19937_64& rng, int64_t n, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

// --- Independent naive attention -------------------------------------------------------
// One sequence: q[Sq][Hq][Dqk], k[Sk][Hkv][Dqk], v[Sk][Hkv][Dv] (row-major doubles).
// Returns out[Sq][Hq][Dv] and lse[Hq][Sq]. Builds the whole score matrix, masks it
// explicitly, and takes the softmax with the sink as an extra zero-value column. The sink
// logits come from `sink` ([Hq] doubles, or NULL), not from o.sink, so finite
// differences can perturb them in float64.
struct NaiveOutput {
  std::vector<double> out;
  std::vector<double> lse;
};

inline bool naive_visible(int64_t i, int64_t j, int64_t Sq, int64_t Sk, const flash4_options& o) {
  const int64_t shift = Sk - Sq;  // bottom-right alignment: query i sits at key i + shift
  if (o.causal && j > i + shift) return false;
  if (o.window_left >= 0 && j < i + shift - o.window_left) return false;
  if (o.window_right >= 0 && j > i + shift + o.window_right) return false;
  return true;
}

inline NaiveOutput naive_attention(const double* q, const double* k, const double* v, int64_t Sq, int64_t Sk,
                                   int64_t Hq, int64_t Hkv, int64_t Dqk, int64_t Dv, const flash4_options& o,
                                   const double* sink = nullptr) {
  const double inf = std::numeric_limits<double>::infinity();
  const double scale = o.softmax_scale != 0 ? double(o.softmax_scale) : 1.0 / std::sqrt(double(Dqk));
  NaiveOutput r{std::vector<double>(Sq * Hq * Dv, 0.0), std::vector<double>(Hq * Sq, -inf)};
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t hk = h / (Hq / Hkv);
    // S[i][j], -inf where masked.
    std::vector<double> S(Sq * Sk, -inf);
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t j = 0; j < Sk; ++j) {
        if (!naive_visible(i, j, Sq, Sk, o)) continue;
        double dot = 0;
        for (int64_t d = 0; d < Dqk; ++d) dot += q[(i * Hq + h) * Dqk + d] * k[(j * Hkv + hk) * Dqk + d];
        double s = scale * dot;
        if (o.softcap > 0) s = o.softcap * std::tanh(s / o.softcap);
        S[i * Sk + j] = s;
      }
    for (int64_t i = 0; i < Sq; ++i) {
      double m = sink ? sink[h] : -inf;
      for (int64_t j = 0; j < Sk; ++j) m = std::max(m, S[i * Sk + j]);
      if (m == -inf) continue;  // no key, no sink: out 0, lse -inf
      double z = sink ? std::exp(sink[h] - m) : 0.0;
      for (int64_t j = 0; j < Sk; ++j) z += std::exp(S[i * Sk + j] - m);
      r.lse[h * Sq + i] = m + std::log(z);
      for (int64_t j = 0; j < Sk; ++j) {
        const double p = std::exp(S[i * Sk + j] - m) / z;
        for (int64_t d = 0; d < Dv; ++d) r.out[(i * Hq + h) * Dv + d] += p * v[(j * Hkv + hk) * Dv + d];
      }
    }
  }
  return r;
}

// Packed sequences: q[Tq][Hq][Dqk] etc., sequence b is tokens cu_q[b]..cu_q[b+1] of q and
// the first used_k[b] keys of cu_k[b]..cu_k[b+1] of k/v. out[Tq][Hq][Dv], lse[Hq][Tq];
// tokens no sequence covers stay 0 / -inf.
inline NaiveOutput naive_varlen(const std::vector<double>& q, const std::vector<double>& k,
                                const std::vector<double>& v, const std::vector<int32_t>& cu_q,
                                const std::vector<int32_t>& cu_k, const std::vector<int32_t>& used_k, int64_t Tq,
                                int64_t Hq, int64_t Hkv, int64_t Dqk, int64_t Dv, const flash4_options& o,
                                const double* sink = nullptr) {
  NaiveOutput r{std::vector<double>(Tq * Hq * Dv, 0.0),
                std::vector<double>(Hq * Tq, -std::numeric_limits<double>::infinity())};
  for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
    const int64_t Sq = cu_q[b + 1] - cu_q[b];
    const int64_t Sk = used_k.empty() ? cu_k[b + 1] - cu_k[b] : used_k[b];
    NaiveOutput s = naive_attention(q.data() + cu_q[b] * Hq * Dqk, k.data() + cu_k[b] * Hkv * Dqk,
                                    v.data() + cu_k[b] * Hkv * Dv, Sq, Sk, Hq, Hkv, Dqk, Dv, o, sink);
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        r.lse[h * Tq + cu_q[b] + i] = s.lse[h * Sq + i];
        for (int64_t d = 0; d < Dv; ++d) r.out[((cu_q[b] + i) * Hq + h) * Dv + d] = s.out[(i * Hq + h) * Dv + d];
      }
  }
  return r;
}

// |a - b| <= atol + rtol * |b|, elementwise, with a message naming the first failure.
inline ::testing::AssertionResult all_close(const std::vector<double>& actual, const std::vector<double>& expected,
                                            double atol, double rtol) {
  if (actual.size() != expected.size())
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  double worst = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i], e = expected[i];
    if (std::isinf(e) && a == e) continue;
    const double err = std::fabs(a - e);
    if (!(err <= atol + rtol * std::fabs(e)))
      return ::testing::AssertionFailure() << "element " << i << ": " << a << " vs expected " << e << " (|diff| "
                                           << err << " > " << atol << " + " << rtol << " * |expected|)";
    worst = std::max(worst, err);
  }
  return ::testing::AssertionSuccess() << "max |diff| " << worst;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central finite differences of loss(x) for every element of x, step h.
template <class Loss>
std::vector<double> finite_difference_gradient(std::vector<double> x, Loss&& loss, double h = 1e-5) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss(x);
    x[i] = saved - h;
    const double down = loss(x);
    x[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

}  // namespace flash4_test
