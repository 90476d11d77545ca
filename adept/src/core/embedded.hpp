// Files compiled into the binary (see cmake/embed_files.cmake): the default config and
// the tiny corpus, so `adept train` works from any directory with no arguments.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace adept {

// The file's bytes, by its path relative to the repository root.
std::optional<std::string_view> embedded_file(std::string_view name);

// Reads a path, or "embedded:<name>" from the binary. Throws adept::Error naming it.
std::string read_text_source(const std::string& source);

}  // namespace adept
