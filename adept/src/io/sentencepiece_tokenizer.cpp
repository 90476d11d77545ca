#include "io/sentencepiece_tokenizer.hpp"

#include <sentencepiece_processor.h>

#include "core/error.hpp"

namespace adept {

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : path_(model_path), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  auto status = sp_->Load(model_path);
  if (!status.ok()) fail("{}: not a loadable SentencePiece model ({})", model_path, status.ToString());
  int n = sp_->GetPieceSize();
  is_special_.assign(size_t(n), 0);
  for (int i = 0; i < n; ++i) {
    if (sp_->IsControl(i) || sp_->IsUnknown(i)) {
      is_special_[size_t(i)] = 1;
      special_tokens_.push_back({i, sp_->IdToPiece(i)});
    }
  }
  special_ids_.bos = sp_->bos_id();
  special_ids_.eos = sp_->eos_id();
  special_ids_.add_bos = special_ids_.bos >= 0;  // LlamaTokenizer's default
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  auto status = sp_->Encode(std::string(text), &ids);
  if (!status.ok()) fail("{}: cannot encode ({})", path_, status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

int64_t SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::optional<int32_t> SentencePieceTokenizer::token_to_id(std::string_view token) const {
  int id = sp_->PieceToId(std::string(token));
  if (id < 0 || sp_->IdToPiece(id) != token) return std::nullopt;  // unknown pieces map to <unk>
  return id;
}

std::string SentencePieceTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) fail("token id {} is out of range (vocab size {})", id, vocab_size());
  return sp_->IdToPiece(id);
}

std::string SentencePieceTokenizer::decode_ids(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string out;
  std::vector<int> run;
  auto flush = [&] {
    if (run.empty()) return;
    std::string text;
    auto status = sp_->Decode(run, &text);
    if (!status.ok()) fail("{}: cannot decode ({})", path_, status.ToString());
    out += text;
    run.clear();
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= sp_->GetPieceSize())
      fail("cannot decode token id {}: out of range (vocab size {})", id, vocab_size());
    if (sp_->IsControl(id)) {  // SentencePiece would drop it silently
      flush();
      if (!skip_special_tokens) out += sp_->IdToPiece(id);
      continue;
    }
    if (skip_special_tokens && is_special_[size_t(id)]) continue;
    run.push_back(id);
  }
  flush();
  return out;
}

}  // namespace adept
