#include "io/pretokenize.hpp"

#include "io/unicode.hpp"

namespace adept {
namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// The same pattern as some conversions spell the case-insensitive group.
constexpr std::string_view kLlama3RegexExplicitCase =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The characters of the text with their classes, and matchers over them. Each
// matcher returns the end index (in characters) of its match at i, or i if none.
class Matcher {
 public:
  explicit Matcher(std::string_view text) : text_(text), chars_(decode_utf8(text)) {
    kinds_.reserve(chars_.size());
    for (const Utf8Char& c : chars_) {
      uint8_t k = uint8_t(char_class(c.code_point));  // kLetter or kNumber
      if (is_white_space(c.code_point)) k |= kSpace;
      if (c.code_point == '\r' || c.code_point == '\n') k |= kNewline;
      kinds_.push_back(k);
    }
  }

  size_t size() const { return chars_.size(); }
  std::string_view piece(size_t begin, size_t end) const {
    size_t b = chars_[begin].offset;
    size_t e = end < chars_.size() ? chars_[end].offset : text_.size();
    return text_.substr(b, e - b);
  }

  char32_t cp(size_t i) const { return chars_[i].code_point; }
  bool letter(size_t i) const { return i < size() && (kinds_[i] & kLetter); }
  bool number(size_t i) const { return i < size() && (kinds_[i] & kNumber); }
  bool space(size_t i) const { return i < size() && (kinds_[i] & kSpace); }
  bool other(size_t i) const { return i < size() && kinds_[i] == 0; }
  bool newline(size_t i) const { return i < size() && (kinds_[i] & kNewline); }
  bool is(size_t i, char32_t c) const { return i < size() && cp(i) == c; }

  // Case-insensitive ASCII letter; with Unicode case folding, U+017F (long s) folds to
  // 's' and U+212A (Kelvin sign) to 'k', so Oniguruma's (?i) matches them too.
  bool is_fold(size_t i, char lower) const {
    if (i >= size()) return false;
    char32_t c = cp(i);
    if (c == char32_t(lower) || c == char32_t(lower - 'a' + 'A')) return true;
    return (lower == 's' && c == 0x17F) || (lower == 'k' && c == 0x212A);
  }

  // 's|'t|'re|'ve|'m|'ll|'d, case-sensitively or not.
  size_t contraction(size_t i, bool ignore_case) const {
    if (!is(i, '\'')) return i;
    auto at = [&](size_t k, char c) { return ignore_case ? is_fold(k, c) : is(k, char32_t(c)); };
    if (at(i + 1, 's') || at(i + 1, 't')) return i + 2;
    if (at(i + 1, 'r') && at(i + 2, 'e')) return i + 3;
    if (at(i + 1, 'v') && at(i + 2, 'e')) return i + 3;
    if (at(i + 1, 'm')) return i + 2;
    if (at(i + 1, 'l') && at(i + 2, 'l')) return i + 3;
    if (at(i + 1, 'd')) return i + 2;
    return i;
  }

  template <typename Pred>
  size_t run(size_t i, Pred pred) const {
    while (i < size() && pred(i)) ++i;
    return i;
  }

  // \s+(?!\S) then \s+ : a white-space run, less its last character when a
  // non-space follows (that character goes with the next word); the whole run if
  // only one character long.
  size_t trailing_space(size_t i) const {
    size_t j = run(i, [&](size_t k) { return space(k); });
    if (j == i) return i;
    if (j < size() && j - 1 > i) return j - 1;
    return j;
  }

  size_t gpt2(size_t i) const {
    size_t j;
    if ((j = contraction(i, false)) > i) return j;
    size_t s = is(i, ' ') ? i + 1 : i;  // the optional leading space of the next three
    if (letter(s)) return run(s, [&](size_t k) { return letter(k); });
    if (number(s)) return run(s, [&](size_t k) { return number(k); });
    if (other(s)) return run(s, [&](size_t k) { return other(k); });
    return trailing_space(i);
  }

  size_t llama3(size_t i, size_t max_digits) const {
    size_t j;
    if ((j = contraction(i, true)) > i) return j;
    // [^\r\n\p{L}\p{N}]?\p{L}+
    bool lead = i < size() && !newline(i) && !letter(i) && !number(i);
    if (lead && letter(i + 1)) return run(i + 1, [&](size_t k) { return letter(k); });
    if (letter(i)) return run(i, [&](size_t k) { return letter(k); });
    // \p{N}{1,max_digits}
    if (number(i)) {
      j = i;
      while (j < size() && j - i < max_digits && number(j)) ++j;
      return j;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    size_t s = is(i, ' ') ? i + 1 : i;
    if (other(s)) {
      j = run(s, [&](size_t k) { return other(k); });
      return run(j, [&](size_t k) { return newline(k); });
    }
    // \s*[\r\n]+ : up to the last line break of the white-space run
    j = run(i, [&](size_t k) { return space(k); });
    for (size_t k = j; k > i; --k)
      if (newline(k - 1)) return k;
    return trailing_space(i);
  }

  size_t match(size_t i, SplitPattern p) const {
    switch (p) {
      case SplitPattern::Gpt2: return gpt2(i);
      case SplitPattern::Llama3: return llama3(i, 3);
      case SplitPattern::Qwen2: return llama3(i, 1);
    }
    return i;
  }

 private:
  static constexpr uint8_t kLetter = 1, kNumber = 2, kSpace = 4, kNewline = 8;
  std::string_view text_;
  std::vector<Utf8Char> chars_;
  std::vector<uint8_t> kinds_;
};

}  // namespace

std::optional<SplitPattern> recognize_split_pattern(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::Gpt2;
  if (regex == kLlama3Regex || regex == kLlama3RegexExplicitCase) return SplitPattern::Llama3;
  if (regex == kQwen2Regex) return SplitPattern::Qwen2;
  return std::nullopt;
}

const char* split_pattern_name(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::Gpt2: return "GPT-2";
    case SplitPattern::Llama3: return "Llama-3";
    case SplitPattern::Qwen2: return "Qwen2";
  }
  return "?";
}

std::vector<std::string_view> split_pretokens(std::string_view text, SplitPattern pattern) {
  Matcher m(text);
  std::vector<std::string_view> pieces;
  size_t gap = 0;  // start of text not matched yet
  for (size_t i = 0; i < m.size();) {
    size_t j = m.match(i, pattern);
    if (j == i) {
      ++i;
      continue;
    }
    if (gap < i) pieces.push_back(m.piece(gap, i));
    pieces.push_back(m.piece(i, j));
    i = gap = j;
  }
  if (gap < m.size()) pieces.push_back(m.piece(gap, m.size()));
  return pieces;
}

}  // namespace adept
