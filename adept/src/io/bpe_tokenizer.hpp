// A BPE tokenizer from tokenizer.json, encoding as Hugging Face `tokenizers` does:
//   1. added tokens are cut out of the text first (leftmost-longest; special ones on
//      the raw text, "normalized" ones after normalization), honouring lstrip / rstrip /
//      single_word;
//   2. each remaining piece is normalized (NFC, Prepend, Replace);
//   3. pre-tokenized (Split by the GPT-2 / Llama-3 / Qwen2 pattern, ByteLevel with its
//      byte-to-unicode alphabet, Metaspace);
//   4. each word is merged by BPE rank (lowest first, leftmost on ties), with byte
//      fallback / unk for characters outside the vocabulary.
// Decoding runs the decoder chain (ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace).
#pragma once

#include <memory>

#include "io/tokenizer.hpp"
#include "io/tokenizer_json.hpp"

namespace adept {

class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(TokenizerJson spec);
  static std::unique_ptr<BpeTokenizer> from_file(const std::string& path);

  std::vector<int32_t> encode(std::string_view text) const override;
  int64_t vocab_size() const override { return int64_t(id_to_token_.size()); }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  const std::vector<SpecialToken>& special_tokens() const override { return special_tokens_; }
  std::string kind() const override { return "bpe"; }
  const TokenizerJson& spec() const { return spec_; }

 protected:
  std::string decode_ids(std::span<const int32_t> ids, bool skip_special_tokens) const override;

 private:
  struct Piece {
    std::string text;
    int32_t added_id = -1;  // >= 0: an added token, not to be tokenized further
    bool at_text_start = false;
  };
  void split_added(std::vector<Piece>& pieces, bool normalized_tokens) const;
  std::string normalize(std::string_view text) const;
  std::vector<std::string> pre_tokenize(const Piece& piece) const;
  void encode_word(const std::string& word, std::vector<int32_t>& out) const;

  TokenizerJson spec_;
  std::vector<std::string> id_to_token_;  // model vocab, with added tokens over it
  std::vector<uint8_t> is_special_;       // by id
  std::vector<SpecialToken> special_tokens_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  // Byte tries over the added tokens matched on the raw / the normalized text.
  struct Trie {
    struct Node {
      std::unordered_map<uint8_t, int32_t> next;
      int32_t token = -1;  // index into spec_.added_tokens
    };
    std::vector<Node> nodes{1};
    void insert(std::string_view s, int32_t token);
  };
  Trie raw_trie_, normalized_trie_;
  bool has_normalized_tokens_ = false;
};

}  // namespace adept
