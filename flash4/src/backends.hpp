// Internal interface between flash4's public entry points (api.cpp: validation,
// backend choice, error reporting) and its implementations. Each implementation may
// assume its arguments passed validate_forward / validate_backward.
#pragma once

#include <flash4/flash4.h>

#include <string>

namespace flash4::detail {

// Records the message flash4_last_error() returns on this thread.
void set_last_error(const std::string& message);
void set_last_backend(const char* name);

// CPU float64-accumulating reference: every feature, every dtype.
flash4_status reference_forward(const flash4_forward_args& args);
flash4_status reference_backward(const flash4_backward_args& args);

#ifdef FLASH4_WITH_CUDA
// Portable CUDA kernels (sm80+: mma.sync, ldmatrix, cp.async).
// Return FLASH4_UNSUPPORTED (with set_last_error) for what they do not cover.
flash4_status portable_forward(const flash4_forward_args& args);
flash4_status portable_backward(const flash4_backward_args& args);
#endif

}  // namespace flash4::detail
