// A corpus of text files as byte-level token streams, split into a training part and a
// held-out tail (each file contributes its own tail, so every source is represented).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "data/window_sampler.hpp"

namespace adept {

struct TextCorpus {
  std::string name;
  std::optional<WindowSampler> train, holdout;
  int64_t train_tokens = 0, holdout_tokens = 0;
};

// Files may be paths or "embedded:<name>". Throws naming the file when one is missing or
// too small to give a training window and a held-out window.
TextCorpus load_text_corpus(const std::string& name, const std::vector<std::string>& files, double holdout_fraction,
                            int64_t seq_len, uint64_t seed);

}  // namespace adept
