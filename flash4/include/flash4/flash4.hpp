// flash4 — C++ API: thin, header-only conveniences over the C ABI in flash4.h.
// The C ABI is the contract (see flash4.h for layouts and semantics); this header adds
// tensor-view builders and exceptions for C++ callers.
#pragma once

#include <flash4/flash4.h>

#include <initializer_list>
#include <stdexcept>
#include <string>

namespace flash4 {

using ForwardArgs = flash4_forward_args;
using BackwardArgs = flash4_backward_args;

// Thrown by the C++ wrappers when the C call returns a status other than FLASH4_OK.
class Error : public std::runtime_error {
 public:
  Error(flash4_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  flash4_status status() const { return status_; }

 private:
  flash4_status status_;
};

// A row-major (contiguous) view of `shape`.
inline flash4_tensor contiguous(void* data, flash4_dtype dtype, std::initializer_list<int64_t> shape) {
  flash4_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.rank = static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.stride[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

// A view with explicit strides (in elements), e.g. BHSD memory seen as [B, S, H, D].
inline flash4_tensor strided(void* data, flash4_dtype dtype, std::initializer_list<int64_t> shape,
                             std::initializer_list<int64_t> strides) {
  flash4_tensor t = contiguous(data, dtype, shape);
  int i = 0;
  for (int64_t s : strides) t.stride[i++] = s;
  return t;
}

inline ForwardArgs forward_args() {
  ForwardArgs a;
  flash4_forward_args_init(&a);
  return a;
}

inline BackwardArgs backward_args() {
  BackwardArgs a;
  flash4_backward_args_init(&a);
  return a;
}

inline void forward(const ForwardArgs& args) {
  flash4_status s = flash4_forward(&args);
  if (s != FLASH4_OK) throw Error(s, flash4_last_error());
}

inline void backward(const BackwardArgs& args) {
  flash4_status s = flash4_backward(&args);
  if (s != FLASH4_OK) throw Error(s, flash4_last_error());
}

}  // namespace flash4
