// One macro for every CUDA runtime call in flash4's CUDA backend (STYLE.md): a failure
// throws CudaError naming the call, the file and the line; the backend's entry points
// turn it into FLASH4_DEVICE_ERROR with that message (no exception crosses the C ABI).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace flash4::cuda {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                    cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

}  // namespace flash4::cuda

#define FLASH4_CUDA_CHECK(call) ::flash4::cuda::check_cuda((call), #call, __FILE__, __LINE__)
// After a kernel launch: a bad launch configuration surfaces here, not at the next sync.
#define FLASH4_CUDA_CHECK_LAUNCH(kernel_name) \
  ::flash4::cuda::check_cuda(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__)
