// A SentencePiece model (tokenizer.model of Llama-2 / Mistral-style checkpoints),
// through libsentencepiece. Encoding is the model's own (its normalizer, dummy
// prefix, byte fallback); special tokens written in the text are not recognised, as
// in SentencePiece itself. Decoding writes control tokens (<s>, </s>) as their text
// unless asked to skip them, as Hugging Face's decode does.
#pragma once

#include <memory>

#include "io/tokenizer.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace adept {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path);  // throws naming the file
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> encode(std::string_view text) const override;
  int64_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  const std::vector<SpecialToken>& special_tokens() const override { return special_tokens_; }
  std::string kind() const override { return "sentencepiece"; }

 protected:
  std::string decode_ids(std::span<const int32_t> ids, bool skip_special_tokens) const override;

 private:
  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<SpecialToken> special_tokens_;
  std::vector<uint8_t> is_special_;
};

}  // namespace adept
