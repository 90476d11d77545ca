// The Split regexes of the GPT-2 family of byte-level BPE tokenizers, implemented by
// hand (no regex library): each function walks the pattern's alternatives in order at
// the current position, with the same greedy-with-backtracking result as Oniguruma
// gives for these particular patterns. Letters and numbers are \p{L} and \p{N} from
// io/unicode_tables.cpp; \s is Unicode White_Space.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace adept {

enum class SplitPattern {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Gpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Llama3,
  // as Llama3 with \p{N} (one digit per piece)
  Qwen2,
};

// The pattern a tokenizer.json Split regex spells, if it is one we implement.
std::optional<SplitPattern> recognize_split_pattern(std::string_view regex);
const char* split_pattern_name(SplitPattern pattern);

// Cuts text into the pieces the regex matches, in order ("Isolated" behaviour: the
// text between matches, if any, is a piece too). Invalid UTF-8 bytes are treated as
// characters that are neither letters, numbers nor white space.
std::vector<std::string_view> split_pretokens(std::string_view text, SplitPattern pattern);

}  // namespace adept
