#include "io/byte_tokenizer.hpp"

#include "core/error.hpp"

namespace adept {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = uint8_t(text[i]);
  return ids;
}

std::optional<int32_t> ByteTokenizer::token_to_id(std::string_view token) const {
  if (token.size() != 1) return std::nullopt;
  return int32_t(uint8_t(token[0]));
}

std::string ByteTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id > 255) fail("token id {} is out of range (vocab size 256)", id);
  return std::string(1, char(id));
}

std::string ByteTokenizer::decode_ids(std::span<const int32_t> ids, bool) const {
  std::string out(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] > 255) fail("cannot decode token id {}: out of range (vocab size 256)", ids[i]);
    out[i] = char(ids[i]);
  }
  return out;
}

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

}  // namespace adept
