#include "data/tokenizer_source.hpp"

#include <filesystem>

#include "core/error.hpp"
#include "data/content_hash.hpp"
#include "io/bpe_tokenizer.hpp"
#include "io/sentencepiece_tokenizer.hpp"

namespace adept {

namespace fs = std::filesystem;

NamedTokenizer load_named_tokenizer(const std::string& name) {
  NamedTokenizer n;
  std::unique_ptr<Tokenizer> tok;
  if (name == "bytes") {
    tok = make_byte_tokenizer();
  } else if (fs::is_directory(name)) {
    tok = load_tokenizer(name);
    n.identity.path = fs::absolute(name).lexically_normal().string();
    Fnv1a64 h;
    for (const char* file : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json"}) {
      fs::path p = fs::path(name) / file;
      if (fs::exists(p)) h.update(std::string(file) + "=" + hash_file(p.string()) + "|");
    }
    n.identity.hash = hash_string(h.value());
  } else if (fs::is_regular_file(name)) {
    if (fs::path(name).extension() == ".model") {
      tok = std::make_unique<SentencePieceTokenizer>(name);
    } else {
      auto bpe = BpeTokenizer::from_file(name);
      SpecialTokenIds ids;
      ids.bos = bpe->spec().template_bos;
      ids.eos = bpe->spec().template_eos;
      ids.add_bos = ids.bos >= 0;
      ids.add_eos = ids.eos >= 0;
      bpe->set_special_ids(ids);
      tok = std::move(bpe);
    }
    n.identity.path = fs::absolute(name).lexically_normal().string();
    n.identity.hash = hash_file(name);
  } else {
    fail("{}: no such tokenizer (\"bytes\", a model directory, a tokenizer.json or a *.model file)", name);
  }
  n.identity.kind = tok->kind();
  n.identity.vocab_size = tok->vocab_size();
  n.identity.bos_id = tok->bos_id();
  n.identity.eos_id = tok->eos_id();
  n.tokenizer = std::move(tok);
  return n;
}

PrepareTokenizer prepare_tokenizer(const NamedTokenizer& named) {
  PrepareTokenizer p;
  std::shared_ptr<const Tokenizer> tok = named.tokenizer;
  p.encode = [tok](std::string_view text) { return tok->encode(text); };
  p.identity = named.identity;
  return p;
}

}  // namespace adept
