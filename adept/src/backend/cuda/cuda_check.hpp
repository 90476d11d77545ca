// One macro per library for checking return codes (STYLE.md: every CUDA / cuBLAS call is
// checked and the message names the call and the location). Usable from .cu files: the
// failure path lives in cuda_check.cpp, so nvcc never sees fmt.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

namespace adept::cuda {

[[noreturn]] void cuda_failure(const char* library, int code, const char* code_text, const char* call,
                               const char* file, int line);

// Throws adept::Error(message): for argument checks in .cu launchers.
[[noreturn]] void launch_failure(const std::string& message);

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) cuda_failure("CUDA", int(status), cudaGetErrorString(status), call, file, line);
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    cuda_failure("cuBLAS", int(status), cublasLtGetStatusString(status), call, file, line);
}

}  // namespace adept::cuda

#define ADEPT_CUDA_CHECK(call) ::adept::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define ADEPT_CUBLAS_CHECK(call) ::adept::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define ADEPT_CUDA_CHECK_LAUNCH(kernel_name) \
  ::adept::cuda::check_cuda(cudaGetLastError(), kernel_name, __FILE__, __LINE__)
