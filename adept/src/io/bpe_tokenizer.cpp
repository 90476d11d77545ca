#include "io/bpe_tokenizer.hpp"

#include <array>
#include <fstream>
#include <queue>
#include <sstream>

#include "core/error.hpp"
#include "io/unicode.hpp"

namespace adept {

namespace {

// GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand
// for themselves, the other 68 bytes for U+0100.. in byte order ("Ġ" is the space).
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 324> char_to_byte;  // by code point; -1 when not in the alphabet
  ByteAlphabet() {
    char_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      char32_t c = printable ? char32_t(b) : char32_t(256 + extra++);
      append_utf8(byte_to_utf8[b], c);
      char_to_byte[c] = int16_t(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  for (size_t i = 0;;) {
    size_t j = s.find(from, i);
    if (j == std::string_view::npos) {
      out.append(s.substr(i));
      return out;
    }
    out.append(s.substr(i, j - i)).append(to);
    i = j + from.size();
  }
}

// "<0x41>" -> 0x41, as tokenizers' ByteFallback decoder reads a byte token.
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    char c = t[size_t(i)];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

std::vector<std::string> run_decoder(const std::vector<DecoderStep>& steps, std::vector<std::string> tokens) {
  const ByteAlphabet& alphabet = byte_alphabet();
  for (const DecoderStep& step : steps) {
    std::vector<std::string> out;
    switch (step.kind) {
      case DecoderStep::Kind::ByteLevel: {
        // A token whose characters are all in the alphabet becomes its bytes; any
        // other token (an added token like "<|endoftext|>" with a space) its UTF-8.
        std::string bytes;
        for (const std::string& t : tokens) {
          std::string mapped;
          bool all = true;
          for (const Utf8Char& c : decode_utf8(t)) {
            if (c.code_point >= alphabet.char_to_byte.size() || alphabet.char_to_byte[c.code_point] < 0) {
              all = false;
              break;
            }
            mapped.push_back(char(alphabet.char_to_byte[c.code_point]));
          }
          bytes += all ? mapped : t;
        }
        out.push_back(utf8_lossy(bytes));
        break;
      }
      case DecoderStep::Kind::ByteFallback: {
        std::string pending;
        size_t pending_count = 0;
        auto flush = [&] {
          if (pending_count == 0) return;
          if (utf8_lossy(pending) == pending) {
            out.push_back(pending);
          } else {
            for (size_t i = 0; i < pending_count; ++i) out.push_back("\xEF\xBF\xBD");
          }
          pending.clear();
          pending_count = 0;
        };
        for (std::string& t : tokens) {
          int b = byte_token_value(t);
          if (b >= 0) {
            pending.push_back(char(b));
            ++pending_count;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        break;
      }
      case DecoderStep::Kind::Fuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        out.push_back(std::move(all));
        break;
      }
      case DecoderStep::Kind::Replace:
        for (const std::string& t : tokens) out.push_back(replace_all(t, step.pattern, step.content));
        break;
      case DecoderStep::Kind::Strip: {
        std::vector<Utf8Char> strip = decode_utf8(step.content);
        char32_t c = strip.size() == 1 ? strip[0].code_point : char32_t(-1);
        for (const std::string& t : tokens) {
          std::vector<Utf8Char> chars = decode_utf8(t);
          size_t b = 0, e = chars.size();
          while (b < e && b < size_t(step.start) && chars[b].code_point == c) ++b;
          while (e > b && chars.size() - e < size_t(step.stop) && chars[e - 1].code_point == c) --e;
          size_t from = b < chars.size() ? chars[b].offset : t.size();
          size_t to = e < chars.size() ? chars[e].offset : t.size();
          out.push_back(t.substr(from, to - from));
        }
        break;
      }
      case DecoderStep::Kind::Metaspace:
        // As tokenizers does: in the first token every replacement character is dropped
        // (not only the leading one) unless prepend_scheme is "never".
        for (size_t i = 0; i < tokens.size(); ++i)
          out.push_back(replace_all(tokens[i], step.pattern, i == 0 && step.prepend_scheme != "never" ? "" : " "));
        break;
    }
    tokens = std::move(out);
  }
  return tokens;
}

}  // namespace

void BpeTokenizer::Trie::insert(std::string_view s, int32_t token) {
  int32_t node = 0;
  for (char ch : s) {
    auto [it, inserted] = nodes[size_t(node)].next.emplace(uint8_t(ch), int32_t(nodes.size()));
    if (inserted) nodes.emplace_back();
    node = it->second;
  }
  nodes[size_t(node)].token = token;
}

BpeTokenizer::BpeTokenizer(TokenizerJson spec) : spec_(std::move(spec)) {
  id_to_token_ = spec_.model.id_to_token;
  for (size_t i = 0; i < spec_.added_tokens.size(); ++i) {
    const AddedTokenSpec& a = spec_.added_tokens[i];
    if (size_t(a.id) >= id_to_token_.size()) id_to_token_.resize(size_t(a.id) + 1);
    id_to_token_[size_t(a.id)] = a.content;
    added_by_content_[a.content] = a.id;
    if (a.normalized) {
      normalized_trie_.insert(normalize(a.content), int32_t(i));
      has_normalized_tokens_ = true;
    } else {
      raw_trie_.insert(a.content, int32_t(i));
    }
  }
  is_special_.assign(id_to_token_.size(), 0);
  for (const AddedTokenSpec& a : spec_.added_tokens) {
    if (!a.special || is_special_[size_t(a.id)]) continue;
    is_special_[size_t(a.id)] = 1;
    special_tokens_.push_back({a.id, a.content});
  }
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream s;
  s << in.rdbuf();
  return std::make_unique<BpeTokenizer>(parse_tokenizer_json(s.str(), path));
}

std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  std::string key(token);
  if (auto it = added_by_content_.find(key); it != added_by_content_.end()) return it->second;
  if (auto it = spec_.model.vocab.find(key); it != spec_.model.vocab.end()) return it->second;
  return std::nullopt;
}

std::string BpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_token_.size()) fail("token id {} is out of range (vocab size {})", id, vocab_size());
  return id_to_token_[size_t(id)];
}

std::string BpeTokenizer::normalize(std::string_view text) const {
  std::string s(text);
  for (const NormalizerStep& step : spec_.normalizer) {
    switch (step.kind) {
      case NormalizerStep::Kind::Nfc: s = nfc(s); break;
      case NormalizerStep::Kind::Prepend:
        if (!s.empty()) s = step.pattern + s;
        break;
      case NormalizerStep::Kind::Replace: s = replace_all(s, step.pattern, step.content); break;
    }
  }
  return s;
}

// Cuts the added tokens out of every piece not yet cut, leftmost-longest as the
// Aho-Corasick automaton of tokenizers finds them.
void BpeTokenizer::split_added(std::vector<Piece>& pieces, bool normalized_tokens) const {
  const Trie& trie = normalized_tokens ? normalized_trie_ : raw_trie_;
  if (trie.nodes[0].next.empty()) return;
  std::vector<Piece> out;
  for (Piece& piece : pieces) {
    if (piece.added_id >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    const std::string& s = piece.text;
    size_t done = 0;  // end of what has been emitted
    for (size_t pos = 0; pos < s.size();) {
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t k = pos; k < s.size(); ++k) {
        auto it = trie.nodes[size_t(node)].next.find(uint8_t(s[k]));
        if (it == trie.nodes[size_t(node)].next.end()) break;
        node = it->second;
        if (trie.nodes[size_t(node)].token >= 0) {
          best = trie.nodes[size_t(node)].token;
          best_end = k + 1;
        }
      }
      if (best < 0) {
        ++pos;
        continue;
      }
      const AddedTokenSpec& a = spec_.added_tokens[size_t(best)];
      size_t start = pos, stop = best_end;
      pos = best_end;
      if (a.single_word) {
        std::vector<Utf8Char> before = decode_utf8(std::string_view(s).substr(0, start));
        std::vector<Utf8Char> after = decode_utf8(std::string_view(s).substr(stop, 4));
        bool word_before = !before.empty() && is_word_char(before.back().code_point);
        bool word_after = !after.empty() && is_word_char(after.front().code_point);
        if (word_before || word_after) continue;
      }
      if (a.lstrip) {
        std::vector<Utf8Char> before = decode_utf8(std::string_view(s).substr(done, start - done));
        while (!before.empty() && is_white_space(before.back().code_point)) {
          start = done + before.back().offset;
          before.pop_back();
        }
      }
      if (a.rstrip) {
        std::vector<Utf8Char> after = decode_utf8(std::string_view(s).substr(stop));
        for (const Utf8Char& c : after) {
          if (!is_white_space(c.code_point)) break;
          stop += c.length;
        }
        pos = stop;
      }
      if (done < start) out.push_back({s.substr(done, start - done), -1, piece.at_text_start && done == 0});
      out.push_back({s.substr(start, stop - start), a.id, false});
      done = stop;
    }
    if (done < s.size()) out.push_back({s.substr(done), -1, piece.at_text_start && done == 0});
  }
  pieces = std::move(out);
}

std::vector<std::string> BpeTokenizer::pre_tokenize(const Piece& piece) const {
  struct Word {
    std::string text;
    bool at_text_start;
  };
  std::vector<Word> words{{piece.text, piece.at_text_start}};
  const ByteAlphabet& alphabet = byte_alphabet();
  for (const PreTokenizerStep& step : spec_.pre_tokenizer) {
    std::vector<Word> next;
    for (Word& w : words) {
      switch (step.kind) {
        case PreTokenizerStep::Kind::Split: {
          bool first = true;
          for (std::string_view p : split_pretokens(w.text, step.pattern)) {
            next.push_back({std::string(p), w.at_text_start && first});
            first = false;
          }
          break;
        }
        case PreTokenizerStep::Kind::ByteLevel: {
          std::string text = step.add_prefix_space && !w.text.starts_with(' ') ? " " + w.text : w.text;
          std::vector<std::string_view> parts;
          if (step.use_regex)
            parts = split_pretokens(text, SplitPattern::Gpt2);
          else
            parts.push_back(text);
          bool first = true;
          for (std::string_view p : parts) {
            std::string mapped;
            mapped.reserve(p.size() * 2);
            for (char b : p) mapped += alphabet.byte_to_utf8[uint8_t(b)];
            next.push_back({std::move(mapped), w.at_text_start && first});
            first = false;
          }
          break;
        }
        case PreTokenizerStep::Kind::Metaspace: {
          std::string text = replace_all(w.text, " ", step.replacement);
          bool prepend = step.prepend_scheme == "always" || (step.prepend_scheme == "first" && w.at_text_start);
          if (prepend && !text.starts_with(step.replacement)) text = step.replacement + text;
          if (!step.split) {
            next.push_back({std::move(text), w.at_text_start});
            break;
          }
          // Each replacement character starts a new word (tokenizers' MergedWithNext).
          size_t begin = 0;
          bool first = true;
          for (size_t j = text.find(step.replacement, 1); j != std::string::npos;
               j = text.find(step.replacement, j + step.replacement.size())) {
            if (j > begin) {
              next.push_back({text.substr(begin, j - begin), w.at_text_start && first});
              first = false;
            }
            begin = j;
          }
          next.push_back({text.substr(begin), w.at_text_start && first});
          break;
        }
      }
    }
    words = std::move(next);
  }
  std::vector<std::string> out;
  out.reserve(words.size());
  for (Word& w : words)
    if (!w.text.empty()) out.push_back(std::move(w.text));
  return out;
}

void BpeTokenizer::encode_word(const std::string& word, std::vector<int32_t>& out) const {
  const BpeModelSpec& m = spec_.model;
  if (m.ignore_merges) {
    if (auto it = m.vocab.find(word); it != m.vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_is_unk = false;
  for (const Utf8Char& c : decode_utf8(word)) {
    std::string_view ch = std::string_view(word).substr(c.offset, c.length);
    auto add = [&](int32_t id) {
      int32_t i = int32_t(symbols.size());
      symbols.push_back({id, i - 1, -1, true});
      if (i > 0) symbols[size_t(i - 1)].next = i;
    };
    if (auto it = m.vocab.find(std::string(ch)); it != m.vocab.end()) {
      add(it->second);
      last_is_unk = false;
      continue;
    }
    if (m.byte_fallback) {
      std::vector<int32_t> ids;
      for (char b : ch) {
        auto it = m.vocab.find(fmt::format("<0x{:02X}>", uint8_t(b)));
        if (it == m.vocab.end()) break;
        ids.push_back(it->second);
      }
      if (ids.size() == ch.size()) {
        for (int32_t id : ids) add(id);
        last_is_unk = false;
        continue;
      }
    }
    if (m.unk_id >= 0) {
      if (!(m.fuse_unk && last_is_unk)) add(m.unk_id);
      last_is_unk = true;
    }
    // With neither, tokenizers drops the character.
  }

  struct Candidate {
    int32_t rank, pos, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0 || symbols[size_t(pos)].next < 0) return;
    auto it = m.merges.find(merge_key(symbols[size_t(pos)].id, symbols[size_t(symbols[size_t(pos)].next)].id));
    if (it != m.merges.end()) queue.push({it->second.rank, pos, it->second.merged});
  };
  for (int32_t i = 0; i + 1 < int32_t(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[size_t(c.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[size_t(left.next)];
    auto it = m.merges.find(merge_key(left.id, right.id));
    if (it == m.merges.end() || it->second.merged != c.merged) continue;  // stale: a neighbour changed
    left.id = c.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[size_t(right.next)].prev = c.pos;
    consider(left.prev);
    consider(c.pos);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[size_t(i)].next) out.push_back(symbols[size_t(i)].id);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<Piece> pieces{{std::string(text), -1, true}};
  split_added(pieces, false);
  for (Piece& p : pieces)
    if (p.added_id < 0) p.text = normalize(p.text);
  if (has_normalized_tokens_) split_added(pieces, true);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  for (const Piece& p : pieces) {
    if (p.added_id >= 0) {
      ids.push_back(p.added_id);
      continue;
    }
    for (const std::string& word : pre_tokenize(p)) encode_word(word, ids);
  }
  return ids;
}

std::string BpeTokenizer::decode_ids(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || size_t(id) >= id_to_token_.size())
      fail("cannot decode token id {}: out of range (vocab size {})", id, vocab_size());
    if (skip_special_tokens && is_special_[size_t(id)]) continue;
    tokens.push_back(id_to_token_[size_t(id)]);
  }
  std::string out;
  if (!spec_.decoder) {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const std::string& t : run_decoder(*spec_.decoder, std::move(tokens))) out += t;
  return out;
}

}  // namespace adept
