// Unicode data the tokenizer needs, generated from Python's unicodedata by
// tools/fixtures/make_unicode_tables.py into unicode_tables.cpp. All tables are sorted
// by their first field so that lookups are binary searches.
#pragma once

#include <cstdint>
#include <span>

namespace adept::unicode_tables {

struct ClassRange {
  char32_t first, last;
  uint8_t value;  // letter_number: 1 = \p{L}, 2 = \p{N}; word: 1; combining class: 1..254
};

// Full canonical decomposition of `code_point`: decomposition_data()[offset, offset + length).
struct Decomposition {
  char32_t code_point;
  uint16_t offset;
  uint8_t length;
};

// NFC composes first + second into composite (primary composites only).
struct Composition {
  char32_t first, second, composite;
};

extern const char* const kUnicodeVersion;
std::span<const ClassRange> letter_number_ranges();
std::span<const ClassRange> word_ranges();  // value 1: \w (Alphabetic, M, Nd, Pc, Join_Control)
std::span<const ClassRange> combining_class_ranges();
std::span<const Decomposition> canonical_decompositions();
std::span<const char32_t> decomposition_data();
std::span<const Composition> primary_compositions();

}  // namespace adept::unicode_tables
