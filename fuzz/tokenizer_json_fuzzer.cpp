// Any byte string as tokenizer.json: parsing either throws adept::Error or gives a
// tokenizer that can encode and decode a varied text without crashing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.hpp"
#include "io/bpe_tokenizer.hpp"
#include "io/tokenizer_json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    adept::BpeTokenizer tok(adept::parse_tokenizer_json(text, "fuzz/tokenizer.json"));
    std::vector<int32_t> ids = tok.encode("Hello w\xc3\xb6rld  123\n\n<|endoftext|> \xf0\x9f\x98\x80 it's <s>\xff");
    tok.decode(ids);
    tok.decode(ids, true);
  } catch (const adept::Error&) {
  }
  return 0;
}
