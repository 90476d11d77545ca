// All device memory of a model in one allocation, planned before it is made: the plan
// hands out offsets, allocate() makes the one cudaMalloc, and pointers are resolved after
// it. Nothing is allocated after that, inside or outside a training step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace adept::cuda {

class DeviceArena {
 public:
  DeviceArena() = default;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena();

  // Reserves `bytes` at an `align`-byte boundary (256 by default: what cuBLASLt's fastest
  // kernels and 16-byte vector loads need) and returns its offset. `what` names the
  // region in the memory report.
  size_t reserve(const std::string& what, size_t bytes, size_t align = 256);
  template <typename T>
  size_t reserve_array(const std::string& what, int64_t count, size_t align = 256) {
    return reserve(what, size_t(count) * sizeof(T), align);
  }

  // The one allocation; zero-filled so that padding never holds NaN.
  void allocate();

  template <typename T>
  T* at(size_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }
  size_t bytes() const { return size_; }
  bool allocated() const { return base_ != nullptr; }

  // "what: bytes" per region, largest first, for logs and benchmarks.
  std::string report() const;

 private:
  struct Region {
    std::string what;
    size_t bytes;
  };
  std::vector<Region> regions_;
  unsigned char* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace adept::cuda
