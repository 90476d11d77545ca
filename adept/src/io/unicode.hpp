// The Unicode pieces a byte-level BPE tokenizer needs: UTF-8 decoding that keeps
// invalid bytes (so that byte-level tokenization stays lossless on any input), letter /
// number / white-space classes as the GPT-2-family pre-tokenizer regexes see them, NFC,
// and Rust's String::from_utf8_lossy (what Hugging Face's decoders return).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace adept {

// One decoded character and where its bytes are in the source text. An invalid byte
// becomes its own character with code_point = kInvalidByte | byte.
struct Utf8Char {
  char32_t code_point;
  uint32_t offset;  // byte offset in the text
  uint32_t length;  // bytes, 1..4
};
inline constexpr char32_t kInvalidByte = 0x80000000u;

std::vector<Utf8Char> decode_utf8(std::string_view text);
void append_utf8(std::string& out, char32_t code_point);

enum class CharClass : uint8_t { Other = 0, Letter = 1, Number = 2 };
CharClass char_class(char32_t code_point);  // \p{L}, \p{N} or neither
bool is_white_space(char32_t code_point);   // \s: the Unicode White_Space property
bool is_word_char(char32_t code_point);     // \w as Rust's regex crate has it
uint8_t canonical_combining_class(char32_t code_point);

// Canonical composition (Unicode normalization form C). Invalid UTF-8 bytes are kept
// as they are and break composition, as a non-starter would.
std::string nfc(std::string_view text);

// Replaces each maximal invalid UTF-8 subsequence by U+FFFD, as Rust's
// String::from_utf8_lossy does (and so as Hugging Face tokenizers decode).
std::string utf8_lossy(std::string_view bytes);

}  // namespace adept
