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

// CPU float32 kernels (src/cpu): every feature of the reference, every dtype; P and D_i in
// the backward from the forward's lse and out, as on the GPU.
flash4_status cpu_forward(const flash4_forward_args& args);
flash4_status cpu_backward(const flash4_backward_args& args);

#ifdef FLASH4_WITH_CUDA
// Portable CUDA kernels (sm80+: mma.sync, ldmatrix, cp.async).
// Return FLASH4_UNSUPPORTED (with set_last_error) for what they do not cover.
flash4_status portable_forward(const flash4_forward_args& args);
flash4_status portable_backward(const flash4_backward_args& args);
#endif

#ifdef FLASH4_HAVE_HOPPER
// Hopper (sm90a) kernels (src/hopper), forward only so far. hopper_forward runs `args` when
// they cover it (returns true, the launch's status in *status) and otherwise returns false
// with the reason in *gap, having touched nothing. hopper_preferred: whether to try them
// for the requested backend (AUTO: the library default; the environment variable
// FLASH4_BACKEND=portable|hopper overrides it for A/B runs).
bool hopper_preferred(flash4_backend requested);
bool hopper_forward(const flash4_forward_args& args, flash4_status* status, std::string* gap);
// The Hopper backward (hopper/backward_sm90*): preferred for AUTO (without
// FLASH4_BACKEND=portable) and HOPPER unless FLASH4_HOPPER_BWD=0 (the A/B switch).
// hopper_backward: as hopper_forward.
bool hopper_backward_preferred(flash4_backend requested);
bool hopper_backward(const flash4_backward_args& args, flash4_status* status, std::string* gap);
// FLASH4_LOG=1: one line on stderr per call naming the implementation that ran, and why
// the Hopper kernels did not when they were preferred.
void log_backend(const char* entry, const char* backend, const std::string& note);
#endif

}  // namespace flash4::detail
