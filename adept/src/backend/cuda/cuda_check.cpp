#include "backend/cuda/cuda_check.hpp"

#include "core/error.hpp"

namespace adept::cuda {

void cuda_failure(const char* library, int code, const char* code_text, const char* call, const char* file,
                  int line) {
  fail("{} error {} ({}) in {} at {}:{}", library, code, code_text ? code_text : "?", call, file, line);
}

void launch_failure(const std::string& message) { throw Error(message); }

}  // namespace adept::cuda
