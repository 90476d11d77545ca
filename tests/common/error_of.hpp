// The message of the adept::Error a call throws, or "" when it throws none: for tests
// that check an error names the field or value at fault.
#pragma once

#include <functional>
#include <string>

#include "core/error.hpp"

namespace testing_support {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const adept::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace testing_support
