// Writing a file so that a crash never leaves a half-written one in its place: write a
// temporary file beside it, fsync it, rename it over the target, fsync the directory.
#pragma once

#include <string>
#include <string_view>

namespace adept {

void write_file_atomic(const std::string& path, std::string_view contents);

// Creates the directory and its parents; throws adept::Error naming it on failure.
void make_directories(const std::string& path);

}  // namespace adept
