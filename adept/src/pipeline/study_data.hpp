// The data of a study: the tokenizer, the general and domain corpora as prepared token
// datasets, their held-out documents, training loaders (domain plus optional general
// replay) and probe batches. Every batch is packed with document boundaries.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/corpus.hpp"
#include "data/packed_loader.hpp"
#include "dist/sharded_loader.hpp"
#include "train/run_config.hpp"
#include "train/trainer.hpp"

namespace adept {

// data.tokenizer resolved: "auto" means the base checkpoint's tokenizer when there is a
// base, else bytes. files_dir: where tokenizer files to copy next to a saved model are
// ("" for the byte tokenizer, which has none).
struct RunTokenizer {
  NamedTokenizer named;
  std::string name;       // as resolved ("bytes" or a path)
  std::string files_dir;
  // save_hf_model's tokenizer argument: the files to copy, or "bytes".
  std::string checkpoint_source() const { return name == "bytes" ? "bytes" : files_dir; }
};
RunTokenizer resolve_tokenizer(const std::string& setting, const std::string& base_dir);

// A model's vocabulary must hold every id the tokenizer produces. `where` names the
// config file and field in the error.
void check_vocabulary(int64_t model_vocab, const RunTokenizer& tokenizer, const std::string& where);

struct StudyData {
  RunTokenizer tokenizer;
  Corpus general, domain;
  HeldOutCorpus general_holdout, domain_holdout;
  LoaderConfig loader_config(const TrainConfig& train) const;
  double holdout_fraction = 0.0;
  uint64_t split_seed = 0;
};

CorpusSpec corpus_spec(const std::string& name, const std::vector<std::string>& sources, const std::string& split,
                       const DataConfig& data);

// Prepares (or reuses) both corpora under <out_dir>/data and splits off held-out text.
StudyData open_study_data(const RunConfig& rc, const std::string& out_dir, bool show_progress);

// The loss of one batch on some model (an engine, or a CPU decoder).
using BatchLossFn = std::function<cpu::CrossEntropyResult(const TokenBatch& batch)>;
// Mean held-out loss per token over the first `batches` batches of every held-out set
// (targets, if given, receives how many tokens were scored).
double held_out_loss(const HeldOutCorpus& holdout, int64_t batches, const BatchLossFn& loss, int64_t* targets = nullptr);

// A PackedLoader as the training loop's data (position saved in checkpoints).
TrainData loader_train_data(PackedLoader& loader);
// Data parallelism: this rank's rows of every global batch; the position saved is the
// global one (the same on every rank), so a checkpoint resumes on any process count.
TrainData loader_train_data(dist::ShardedLoader& loader);

// `batches` packed batches of general training text (seeded; the same every call).
std::vector<TokenBatch> probe_batches(const StudyData& data, int64_t seq_len, int64_t batches, int64_t batch_size,
                                      uint64_t seed);

}  // namespace adept
