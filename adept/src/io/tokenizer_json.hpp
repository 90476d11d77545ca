// Hugging Face tokenizer.json, parsed and validated into a plain description of the
// pipeline: added tokens, normalizer steps, pre-tokenizer steps, the BPE model, decoder
// steps. Only what a BPE tokenizer of the GPT-2 / Llama / Qwen / Mistral families uses
// is accepted; anything else is an error naming the file and the field path, e.g.
// "tokenizer.json: field 'pre_tokenizer.pretokenizers[0].type': 'Whitespace' is not supported".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/pretokenize.hpp"

namespace adept {

struct AddedTokenSpec {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;  // matched after normalization rather than on the raw text
};

struct NormalizerStep {
  enum class Kind { Nfc, Prepend, Replace } kind;
  std::string pattern;  // Prepend: the prefix; Replace: the string replaced
  std::string content;  // Replace: its replacement
};

struct PreTokenizerStep {
  enum class Kind { ByteLevel, Split, Metaspace } kind;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = true;          // ByteLevel: split with the GPT-2 pattern first
  SplitPattern pattern = SplitPattern::Gpt2;  // Split
  std::string replacement;        // Metaspace, e.g. "\u2581"
  std::string prepend_scheme;     // Metaspace: "always", "first", "never"
  bool split = true;              // Metaspace
};

struct DecoderStep {
  enum class Kind { ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace } kind;
  std::string pattern, content;  // Replace; Strip: content is the stripped character
  int start = 0, stop = 0;       // Strip: at most this many from the start / the end
  std::string prepend_scheme;    // Metaspace
};

struct BpeModelSpec {
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // "" where an id is unused
  struct Merge {
    int32_t rank, merged;
  };
  // (left id << 32 | right id) -> the merge; a lower rank merges first.
  std::unordered_map<uint64_t, Merge> merges;
  int32_t unk_id = -1;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;  // a whole word found in the vocab is one token (Llama-3)
};

struct TokenizerJson {
  std::vector<AddedTokenSpec> added_tokens;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  BpeModelSpec model;
  std::optional<std::vector<DecoderStep>> decoder;  // nullopt: tokens are joined with spaces
  // Special tokens the post_processor's single-sequence template puts before / after
  // the text (Llama-3: <|begin_of_text|> before); -1 when none.
  int32_t template_bos = -1, template_eos = -1;
};

TokenizerJson parse_tokenizer_json(std::string_view json_text, const std::string& file_name);

inline uint64_t merge_key(int32_t left, int32_t right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }

}  // namespace adept
