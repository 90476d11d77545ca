// The C ABI entry points: defaults, validation, backend choice, and the guarantee that
// no exception crosses the ABI (every one becomes a status and a message).
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "backends.hpp"
#include "validate.hpp"

namespace {

using flash4::detail::set_last_backend;
using flash4::detail::set_last_error;

// Runs `body` and converts whatever escapes it into a status with a message. On success
// the last error is cleared.
template <class Body>
flash4_status guarded(const char* entry_point, Body&& body) noexcept {
  try {
    set_last_error("");
    flash4_status status = body();
    return status;
  } catch (const flash4::detail::InvalidArgument& e) {
    set_last_error(e.what());
    return FLASH4_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    set_last_error(std::string(entry_point) + ": out of host memory");
    return FLASH4_INTERNAL;
  } catch (const std::exception& e) {
    set_last_error(std::string(entry_point) + ": internal error: " + e.what());
    return FLASH4_INTERNAL;
  } catch (...) {
    set_last_error(std::string(entry_point) + ": internal error (unknown exception)");
    return FLASH4_INTERNAL;
  }
}

[[maybe_unused]] flash4_status no_cuda_implementation() {  // used by builds without CUDA kernels
  set_last_error("flash4: no CUDA implementation built");
  return FLASH4_UNSUPPORTED;
}

flash4_status hopper_not_built() {
#ifdef FLASH4_HAVE_HOPPER
  set_last_error(
      "flash4: the Hopper (sm90a) backward is switched off (FLASH4_HOPPER_BWD=0 in the environment); use "
      "FLASH4_BACKEND_AUTO or FLASH4_BACKEND_PORTABLE");
#else
  set_last_error("flash4: the Hopper (sm90a) backend is not built; use FLASH4_BACKEND_AUTO or FLASH4_BACKEND_PORTABLE");
#endif
  return FLASH4_UNSUPPORTED;
}

// On the CPU (validate_* has rejected PORTABLE / HOPPER there): the float64 reference for
// REFERENCE, and for AUTO with f64 tensors (who asks in float64 wants float64 exactness); the
// float32 kernels (src/cpu) for CPU, and for AUTO with f32 / f16 / bf16 tensors.
template <class Args, class Reference, class Cpu, class Portable>
flash4_status dispatch(const Args& args, Reference reference, Cpu cpu, Portable portable) {
  if (args.device == FLASH4_CPU) {
    const bool exact = args.backend == FLASH4_BACKEND_REFERENCE ||
                       (args.backend == FLASH4_BACKEND_AUTO && args.q.dtype == FLASH4_F64);
    flash4_status status = exact ? reference(args) : cpu(args);
    if (status == FLASH4_OK) set_last_backend(exact ? "reference" : "cpu");
    return status;
  }
  if (args.backend == FLASH4_BACKEND_HOPPER) return hopper_not_built();
  return portable(args);
}

#ifdef FLASH4_HAVE_HOPPER
// Offers a call to the Hopper kernels (`run_hopper`: hopper_forward or hopper_backward). True
// when that settles it, with *status its result: they ran it, or FLASH4_BACKEND_HOPPER asked
// for them and they do not cover it. False: *not_hopper says why they did not run it.
template <class Args, class RunHopper>
bool hopper_settles(const char* entry_point, const Args& args, RunHopper run_hopper, flash4_status* status,
                    std::string* not_hopper) {
  if (run_hopper(args, status, not_hopper)) {
    if (*status == FLASH4_OK) set_last_backend("hopper");
    flash4::detail::log_backend(entry_point, "hopper", "");
    return true;
  }
  if (args.backend == FLASH4_BACKEND_HOPPER) {
    set_last_error(std::string(entry_point) + ": FLASH4_BACKEND_HOPPER does not cover this call: " + *not_hopper);
    *status = FLASH4_UNSUPPORTED;
    return true;
  }
  return false;
}
#endif

}  // namespace

extern "C" void flash4_forward_args_init(flash4_forward_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->device = FLASH4_CPU;
  args->backend = FLASH4_BACKEND_AUTO;
  args->options.window_left = -1;
  args->options.window_right = -1;
}

extern "C" void flash4_backward_args_init(flash4_backward_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->device = FLASH4_CPU;
  args->backend = FLASH4_BACKEND_AUTO;
  args->options.window_left = -1;
  args->options.window_right = -1;
}

extern "C" flash4_status flash4_forward(const flash4_forward_args* args) {
  return guarded("flash4_forward", [&]() -> flash4_status {
    if (args == nullptr) throw flash4::detail::InvalidArgument("flash4_forward: args is NULL");
    flash4::detail::validate_forward(*args);
    std::string not_hopper;  // why the Hopper kernels did not run a call they were preferred for
#ifdef FLASH4_HAVE_HOPPER
    if (args->device == FLASH4_CUDA && flash4::detail::hopper_preferred(args->backend)) {
      flash4_status status = FLASH4_OK;
      if (hopper_settles("flash4_forward", *args, flash4::detail::hopper_forward, &status, &not_hopper))
        return status;
    }
#endif
    return dispatch(*args, flash4::detail::reference_forward, flash4::detail::cpu_forward,
                    [&](const flash4_forward_args& a) {
#if defined(FLASH4_WITH_CUDA) && defined(FLASH4_HAVE_PORTABLE)
      flash4_status status = flash4::detail::portable_forward(a);
      if (status == FLASH4_OK) set_last_backend("portable");
#ifdef FLASH4_HAVE_HOPPER
      flash4::detail::log_backend("flash4_forward", "portable", not_hopper.empty() ? "" : "not hopper: " + not_hopper);
#endif
      return status;
#else
      (void)a;
      return no_cuda_implementation();
#endif
    });
  });
}

extern "C" flash4_status flash4_backward(const flash4_backward_args* args) {
  return guarded("flash4_backward", [&]() -> flash4_status {
    if (args == nullptr) throw flash4::detail::InvalidArgument("flash4_backward: args is NULL");
    flash4::detail::validate_backward(*args);
    std::string not_hopper;  // why the Hopper backward did not run a call it was preferred for
#ifdef FLASH4_HAVE_HOPPER
    // On unless FLASH4_HOPPER_BWD=0: AUTO and HOPPER try it first.
    if (args->device == FLASH4_CUDA && flash4::detail::hopper_backward_preferred(args->backend)) {
      flash4_status status = FLASH4_OK;
      if (hopper_settles("flash4_backward", *args, flash4::detail::hopper_backward, &status, &not_hopper))
        return status;
    }
#endif
    return dispatch(*args, flash4::detail::reference_backward, flash4::detail::cpu_backward,
                    [&](const flash4_backward_args& a) {
#if defined(FLASH4_WITH_CUDA) && defined(FLASH4_HAVE_PORTABLE)
      flash4_status status = flash4::detail::portable_backward(a);
      if (status == FLASH4_OK) set_last_backend("portable");
#ifdef FLASH4_HAVE_HOPPER
      if (!not_hopper.empty()) flash4::detail::log_backend("flash4_backward", "portable", "not hopper: " + not_hopper);
#endif
      return status;
#else
      (void)a;
      return no_cuda_implementation();
#endif
    });
  });
}
