// The tokenizer a data command names, with what identifies it in a manifest:
//   "bytes"                 one token per byte (the tiny default run's tokenizer)
//   a model directory       io/tokenizer.hpp's load_tokenizer (tokenizer.model or
//                           tokenizer.json, BOS/EOS from the directory's configs)
//   a tokenizer.json file   byte-level BPE alone (BOS/EOS from its post-processor)
//   a *.model file          SentencePiece alone
// The identity's hash covers every file that shapes the ids, so a changed tokenizer
// makes `adept data prepare` redo its work.
#pragma once

#include <memory>
#include <string>

#include "data/prepare.hpp"
#include "io/tokenizer.hpp"

namespace adept {

struct NamedTokenizer {
  std::shared_ptr<const Tokenizer> tokenizer;
  TokenizerIdentity identity;
};

NamedTokenizer load_named_tokenizer(const std::string& name);

// The adapter prepare_dataset takes (Tokenizer::encode is const and thread-safe).
PrepareTokenizer prepare_tokenizer(const NamedTokenizer& named);

}  // namespace adept
