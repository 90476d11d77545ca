// Thread-local error and backend reporting behind flash4_last_error / flash4_last_backend.
#include "backends.hpp"

namespace {
thread_local std::string last_error;
thread_local const char* last_backend = "";
}  // namespace

namespace flash4::detail {
void set_last_error(const std::string& message) { last_error = message; }
void set_last_backend(const char* name) { last_backend = name; }
}  // namespace flash4::detail

extern "C" const char* flash4_last_error(void) { return last_error.c_str(); }
extern "C" const char* flash4_last_backend(void) { return last_backend; }
