// Text <-> token ids. One interface over the three kinds a checkpoint may bring:
// a byte-level BPE from tokenizer.json (GPT-2 / Llama-3 / Qwen2 and Llama-2-style
// conversions), a SentencePiece model (tokenizer.model), and the one-token-per-byte
// tokenizer of the tiny default run. load_tokenizer(dir) picks the right one and reads
// BOS/EOS from tokenizer_config.json / generation_config.json.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace adept {

struct SpecialToken {
  int32_t id;
  std::string content;
};

struct SpecialTokenIds {
  int32_t bos = -1;  // -1: none
  int32_t eos = -1;
  bool add_bos = false;  // whether Hugging Face's tokenizer prepends BOS when it encodes a text
  bool add_eos = false;  // whether it appends EOS
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text` as Hugging Face's encode(text, add_special_tokens=False) gives
  // them: special tokens written in the text are recognised, but no BOS/EOS is added
  // (the data pipeline adds those itself, see special_ids().add_bos).
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;

  // The text of `ids`, as Hugging Face's decode(ids, skip_special_tokens=...) gives it.
  // Throws adept::Error for an id outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const {
    return decode_ids(ids, skip_special_tokens);
  }

  // One more than the largest id the tokenizer can produce (len(tokenizer) in HF).
  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;  // "" for an unused id
  virtual const std::vector<SpecialToken>& special_tokens() const = 0;
  virtual std::string kind() const = 0;  // "bpe", "sentencepiece", "bytes"

  const SpecialTokenIds& special_ids() const { return special_ids_; }
  int32_t bos_id() const { return special_ids_.bos; }
  int32_t eos_id() const { return special_ids_.eos; }
  void set_special_ids(const SpecialTokenIds& ids) { special_ids_ = ids; }

 protected:
  virtual std::string decode_ids(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  SpecialTokenIds special_ids_;
};

// The tokenizer of a Hugging Face model directory:
//   tokenizer.model (a SentencePiece model, Llama-2 / Mistral style) if present and
//   loadable, else tokenizer.json (byte-level BPE). BOS/EOS come from
//   tokenizer_config.json (bos_token / eos_token / add_bos_token / add_eos_token), then
//   generation_config.json, then the tokenizer itself. Errors name the file and field.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

// One token per byte, vocab 256, no special tokens: the tokenizer of the tiny default run.
std::unique_ptr<Tokenizer> make_byte_tokenizer();

}  // namespace adept
