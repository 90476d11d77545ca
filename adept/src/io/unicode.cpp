#include "io/unicode.hpp"

#include <algorithm>

#include "io/unicode_tables.hpp"

namespace adept {
namespace {

// Hangul syllables compose and decompose by arithmetic (Unicode 3.12).
constexpr char32_t kHangulBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t range_value(std::span<const unicode_tables::ClassRange> ranges, char32_t cp) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                             [](char32_t c, const unicode_tables::ClassRange& r) { return c < r.first; });
  if (it == ranges.begin()) return 0;
  --it;
  return cp <= it->last ? it->value : 0;
}

// Length of the valid UTF-8 sequence at s[i], or 0 if the bytes there are not one.
// Second-byte ranges exclude overlong forms, surrogates and code points past U+10FFFF.
int valid_sequence_length(std::string_view s, size_t i, char32_t* cp_out) {
  auto b = [&](size_t k) { return uint8_t(s[k]); };
  uint8_t b0 = b(i);
  if (b0 < 0x80) {
    *cp_out = b0;
    return 1;
  }
  int n;
  uint8_t lo = 0x80, hi = 0xBF;
  char32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) return -k;  // truncated after k bytes
    uint8_t c = b(i + k);
    if (c < lo || c > hi) return -k;
    lo = 0x80;
    hi = 0xBF;
    cp = (cp << 6) | (c & 0x3F);
  }
  *cp_out = cp;
  return n;
}

char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kHangulBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kHangulBase && a < kHangulBase + kSCount && (a - kHangulBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  auto table = unicode_tables::primary_compositions();
  auto it = std::lower_bound(table.begin(), table.end(), std::pair{a, b},
                             [](const unicode_tables::Composition& c, const std::pair<char32_t, char32_t>& key) {
                               return c.first != key.first ? c.first < key.first : c.second < key.second;
                             });
  if (it != table.end() && it->first == a && it->second == b) return it->composite;
  return 0;
}

void append_decomposed(std::u32string& out, char32_t cp) {
  if (cp >= kHangulBase && cp < kHangulBase + kSCount) {
    char32_t s = cp - kHangulBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  auto table = unicode_tables::canonical_decompositions();
  auto it = std::lower_bound(table.begin(), table.end(), cp,
                             [](const unicode_tables::Decomposition& d, char32_t c) { return d.code_point < c; });
  if (it != table.end() && it->code_point == cp) {
    auto data = unicode_tables::decomposition_data().subspan(it->offset, it->length);
    out.append(data.begin(), data.end());
  } else {
    out.push_back(cp);
  }
}

uint8_t ccc_of(char32_t cp) { return (cp & kInvalidByte) ? 0 : canonical_combining_class(cp); }

}  // namespace

std::vector<Utf8Char> decode_utf8(std::string_view text) {
  std::vector<Utf8Char> out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    char32_t cp = 0;
    int n = valid_sequence_length(text, i, &cp);
    if (n > 0) {
      out.push_back({cp, uint32_t(i), uint32_t(n)});
      i += size_t(n);
    } else {
      out.push_back({kInvalidByte | uint8_t(text[i]), uint32_t(i), 1});
      i += 1;
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp & kInvalidByte) {
    out.push_back(char(cp & 0xFF));
  } else if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

CharClass char_class(char32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    return CharClass::Other;
  }
  if (cp & kInvalidByte) return CharClass::Other;
  return CharClass(range_value(unicode_tables::letter_number_ranges(), cp));
}

bool is_white_space(char32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_word_char(char32_t cp) {
  if (cp & kInvalidByte) return false;
  if (cp < 0x80) return cp == '_' || char_class(cp) != CharClass::Other;
  return range_value(unicode_tables::word_ranges(), cp) != 0;
}

uint8_t canonical_combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  return range_value(unicode_tables::combining_class_ranges(), cp);
}

std::string nfc(std::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return uint8_t(c) < 0x80; })) return std::string(text);
  std::u32string d;
  d.reserve(text.size());
  for (const Utf8Char& c : decode_utf8(text)) {
    if (c.code_point & kInvalidByte)
      d.push_back(c.code_point);
    else
      append_decomposed(d, c.code_point);
  }
  // Canonical ordering: a stable sort of each run of non-starters by combining class.
  for (size_t i = 1; i < d.size(); ++i) {
    uint8_t c = ccc_of(d[i]);
    if (c == 0) continue;
    for (size_t j = i; j > 0; --j) {
      uint8_t p = ccc_of(d[j - 1]);
      if (p == 0 || p <= c) break;
      std::swap(d[j - 1], d[j]);
    }
  }
  // Canonical composition: a character joins the last starter unless a character
  // between them is a starter or has a class >= its own ("blocked").
  std::u32string out;
  out.reserve(d.size());
  ptrdiff_t starter = -1;
  int last_ccc = 0;
  for (char32_t cp : d) {
    int ccc = ccc_of(cp);
    bool adjacent = starter >= 0 && size_t(starter) + 1 == out.size();
    if (starter >= 0 && !(out[starter] & kInvalidByte) && !(cp & kInvalidByte) &&
        (adjacent || (last_ccc != 0 && last_ccc < ccc))) {
      if (char32_t composite = compose_pair(out[starter], cp)) {
        out[starter] = composite;
        continue;
      }
    }
    if (ccc == 0) {
      starter = ptrdiff_t(out.size());
      last_ccc = 0;
    } else {
      last_ccc = ccc;
    }
    out.push_back(cp);
  }
  std::string result;
  result.reserve(text.size());
  for (char32_t cp : out) append_utf8(result, cp);
  return result;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    char32_t cp = 0;
    int n = valid_sequence_length(bytes, i, &cp);
    if (n > 0) {
      out.append(bytes.substr(i, size_t(n)));
      i += size_t(n);
    } else {
      out.append("\xEF\xBF\xBD");  // one U+FFFD per maximal invalid prefix
      i += n == 0 ? 1 : size_t(-n);
    }
  }
  return out;
}

}  // namespace adept
