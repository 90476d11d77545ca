// UTF-8 validation and repair for corpus text (Unicode 15, table 3-7: no overlong forms,
// no surrogates, nothing above U+10FFFF).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace adept {

// Offset of the first byte that is not part of a well-formed sequence, or npos.
size_t find_invalid_utf8(std::string_view text);
inline bool is_valid_utf8(std::string_view text) { return find_invalid_utf8(text) == std::string_view::npos; }

// Replaces each maximal ill-formed subsequence by U+FFFD (the Unicode "best practice"
// that Python's and Rust's lossy decoders follow).
std::string repair_utf8(std::string_view text);

}  // namespace adept
