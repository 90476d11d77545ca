#include "pipeline/text_corpus.hpp"

#include "core/embedded.hpp"
#include "core/error.hpp"

namespace adept {

TextCorpus load_text_corpus(const std::string& name, const std::vector<std::string>& files, double holdout_fraction,
                            int64_t seq_len, uint64_t seed) {
  if (files.empty()) fail("data.{} lists no files", name);
  std::vector<int32_t> train, holdout;
  for (const std::string& file : files) {
    std::string text = read_text_source(file);
    size_t tail = size_t(double(text.size()) * holdout_fraction);
    if (text.size() - tail < size_t(seq_len) + 1)
      fail("{}: {} bytes is too little text for one training window of {} tokens", file, text.size(), seq_len + 1);
    for (size_t i = 0; i < text.size(); ++i)
      (i < text.size() - tail ? train : holdout).push_back(static_cast<unsigned char>(text[i]));
  }
  TextCorpus c;
  c.name = name;
  c.train_tokens = int64_t(train.size());
  c.holdout_tokens = int64_t(holdout.size());
  c.train.emplace(std::move(train), seq_len, seed);
  if (c.holdout_tokens > seq_len) c.holdout.emplace(std::move(holdout), seq_len, seed);
  return c;
}

}  // namespace adept
