#include "backend/cuda/device_arena.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "backend/cuda/cuda_check.hpp"
#include "core/error.hpp"

namespace adept::cuda {

DeviceArena::~DeviceArena() {
  if (base_) cudaFree(base_);  // no check: destructors must not throw
}

size_t DeviceArena::reserve(const std::string& what, size_t bytes, size_t align) {
  if (base_) fail("device arena: '{}' reserved after the arena was allocated", what);
  size_t offset = (size_ + align - 1) / align * align;
  size_ = offset + bytes;
  regions_.push_back({what, bytes});
  return offset;
}

void DeviceArena::allocate() {
  if (base_) return;
  size_ = std::max<size_t>(size_, 256);
  cudaError_t status = cudaMalloc(&base_, size_);
  if (status != cudaSuccess) {
    base_ = nullptr;
    size_t free_bytes = 0, total_bytes = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_bytes, &total_bytes);
    fail("device arena: cannot allocate {:.2f} GiB ({} GiB free of {}): {}\n{}", double(size_) / (1 << 30),
         double(free_bytes) / (1 << 30), double(total_bytes) / (1 << 30), cudaGetErrorString(status), report());
  }
  // cudaMemset of device memory returns before it is done, on the legacy default stream,
  // which the decoder's non-blocking stream does not wait for: the tables and weights the
  // decoder uploads right after could land first and be zeroed by it (2026-12-01: the
  // 1B-shape train-bench learned, half-learned or did not learn depending on the machine's
  // timing). So the zeros are complete before anything else is written.
  ADEPT_CUDA_CHECK(cudaMemset(base_, 0, size_));
  ADEPT_CUDA_CHECK(cudaDeviceSynchronize());
}

std::string DeviceArena::report() const {
  // Regions of one kind (e.g. every layer's "act.qkv") are summed under their name.
  std::map<std::string, size_t> by_name;
  for (const Region& r : regions_) by_name[r.what] += r.bytes;
  std::vector<std::pair<std::string, size_t>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string out = fmt::format("device arena {:.3f} GiB:", double(size_) / (1 << 30));
  for (const auto& [name, bytes] : rows) out += fmt::format("\n  {:<28} {:10.1f} MiB", name, double(bytes) / (1 << 20));
  return out;
}

}  // namespace adept::cuda
