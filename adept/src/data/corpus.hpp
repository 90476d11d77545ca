// A corpus as a run names it — text files, JSONL files, files compiled into the binary
// ("embedded:<name>") and already-prepared dataset directories — opened as token
// datasets. Files are prepared (data/prepare.hpp) into a cache folder and reused while
// they and the tokenizer are unchanged; a prepared directory is used as it is, after a
// check that it was made by the same tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/input_reader.hpp"
#include "data/packed_loader.hpp"
#include "data/token_dataset.hpp"
#include "data/tokenizer_source.hpp"

namespace adept {

struct CorpusSpec {
  std::string name;                  // "general", "domain", ...: messages and the cache folder
  std::vector<std::string> sources;  // files (*.jsonl: JSONL, else text), embedded:<name>, or dataset dirs
  TextSplit split = TextSplit::Blocks;  // how text files are cut into documents
  std::string text_field = "text";      // JSONL files: the document's field
  // JSONL files as instruction pairs (prompt / response fields, laid out by the template;
  // the prompt's tokens are not trained on) instead of documents in text_field.
  bool instruct = false;
  std::string prompt_field = "prompt", response_field = "response";
  std::string instruct_template = "User: {prompt}\nAssistant: {response}";
};

struct Corpus {
  std::string name;
  std::vector<std::shared_ptr<const TokenDataset>> datasets;
  int64_t documents = 0, tokens = 0;
  std::string fingerprint;  // of every dataset's content: equal means the same data
};

// Prepares what needs preparing under cache_dir/<name>-text and cache_dir/<name>-jsonl
// (embedded files are first written to cache_dir/embedded/). Errors name the source.
Corpus open_corpus(const CorpusSpec& spec, const NamedTokenizer& tokenizer, const std::string& cache_dir,
                   bool show_progress);

// The corpus's datasets as loader sources, weighted by their token counts (as if the
// corpus were one stream) and scaled to `share` of the rows in total.
void add_loader_sources(std::vector<LoaderSource>& sources, const Corpus& corpus, double share);

// Held-out documents of every dataset of a corpus (the split a PackedLoader with the
// same holdout_fraction and split_seed leaves out of training).
struct HeldOutCorpus {
  std::vector<HeldOutSet> sets;
  int64_t tokens = 0;
  bool empty() const { return tokens == 0; }
};
// every_document: the whole corpus is evaluation text.
HeldOutCorpus held_out_corpus(const Corpus& corpus, const LoaderConfig& config, bool every_document = false);

}  // namespace adept
