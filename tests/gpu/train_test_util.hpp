// Helpers of the CUDA training-backend tests: device buffers that are poisoned (all bits
// set: NaN in fp32 and bf16) before a kernel writes them, bf16 rounding on the host, and
// the relative error used for every comparison.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/random.hpp"

namespace train_test {

#define TRAIN_CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call << ": " << cudaGetErrorString(cudaGetLastError())

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define REQUIRE_GPU() \
  if (!::train_test::have_gpu()) GTEST_SKIP() << "no CUDA device"

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (cudaMalloc(&ptr_, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  operator T*() const { return ptr_; }
  size_t size() const { return count_; }
  void poison() { cudaMemset(ptr_, 0xFF, count_ * sizeof(T)); }
  void upload(const std::vector<T>& host) { cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice); }
  std::vector<T> download() const {
    cudaDeviceSynchronize();
    std::vector<T> host(count_);
    cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t count_;
};

using bf16 = __nv_bfloat16;

inline float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Normal(0, scale) values that are exactly representable in bf16 (so that the CPU
// reference and the GPU see the same inputs).
inline std::vector<float> random_bf16_values(std::mt19937_64& rng, size_t n, double scale = 1.0) {
  std::vector<float> v = testing_support::random_vector<float>(rng, n, scale);
  for (float& x : v) x = round_bf16(x);
  return v;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16(v[i]);
  return out;
}

inline std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

// ‖got − want‖ / ‖want‖ over all elements; infinity if any element of got is not finite.
inline double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// bf16 operands or outputs, float or double reference: ~1e-2 relative (8 mantissa bits).
inline constexpr double kBf16Tolerance = 1e-2;
// fp32 arithmetic in a different order.
inline constexpr double kF32Tolerance = 1e-5;

}  // namespace train_test
