// One token per byte (ids 0..255), no merges, no special tokens: the tokenizer of the
// tiny default run, which needs no tokenizer file. Decoding returns the bytes as they
// were, so encode/decode is lossless for any input, valid UTF-8 or not.
#pragma once

#include "io/tokenizer.hpp"

namespace adept {

class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override;
  int64_t vocab_size() const override { return 256; }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  const std::vector<SpecialToken>& special_tokens() const override { return none_; }
  std::string kind() const override { return "bytes"; }

 protected:
  std::string decode_ids(std::span<const int32_t> ids, bool skip_special_tokens) const override;

 private:
  std::vector<SpecialToken> none_;
};

}  // namespace adept
