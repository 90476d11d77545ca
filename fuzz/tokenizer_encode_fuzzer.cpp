// Any byte string as text for the Llama-3-style byte-level fixture tokenizer (no
// normalizer): encoding must not crash, and decoding must give the text back exactly
// where it is valid UTF-8 (Hugging Face's decoder is lossy only on invalid bytes).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "io/bpe_tokenizer.hpp"
#include "io/unicode.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<adept::BpeTokenizer> tok =
      adept::BpeTokenizer::from_file(std::string(ADEPT_FUZZ_FIXTURES) + "/tokenizer/llama3/tokenizer.json");
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<int32_t> ids = tok->encode(text);
  if (tok->decode(ids) != adept::utf8_lossy(text)) std::abort();
  return 0;
}
