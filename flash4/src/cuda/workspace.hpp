// Stream-ordered scratch memory for one call (the backward's fp32 dQ accumulator and row
// statistics), carved in order and released on the stream when it goes out of scope.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/cuda_check.hpp"

namespace flash4::detail {

class Workspace {
 public:
  Workspace(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes > 0) FLASH4_CUDA_CHECK(cudaMallocAsync(&base_, bytes, stream));
  }
  ~Workspace() {
    if (base_ != nullptr) cudaFreeAsync(base_, stream_);  // nothing to report from a destructor
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  // `count` floats, 256-byte aligned (the Hopper backward's bulk copies need 16), in order.
  float* take(size_t count) {
    float* p = reinterpret_cast<float*>(static_cast<char*>(base_) + used_);
    used_ += bytes_for(count);
    return p;
  }
  static size_t bytes_for(size_t count) { return (count * sizeof(float) + 255) / 256 * 256; }

 private:
  void* base_ = nullptr;
  size_t used_ = 0;
  cudaStream_t stream_;
};

}  // namespace flash4::detail
