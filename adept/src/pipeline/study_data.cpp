#include "pipeline/study_data.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "core/embedded.hpp"
#include "core/error.hpp"

namespace adept {

namespace fs = std::filesystem;

namespace {

// "auto" with a base: its tokenizer files, or the byte tokenizer when adept wrote the
// checkpoint of a byte-level model (adept.json says so).
std::string base_tokenizer(const std::string& base_dir) {
  fs::path dir(base_dir);
  if (fs::exists(dir / "tokenizer.json") || fs::exists(dir / "tokenizer.model")) return base_dir;
  if (fs::exists(dir / "adept.json")) {
    nlohmann::json j = nlohmann::json::parse(read_text_source((dir / "adept.json").string()), nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.value("tokenizer", "") == "bytes") return "bytes";
  }
  fail("{}: no tokenizer.json or tokenizer.model; set data.tokenizer to the model's tokenizer (\"bytes\", a model "
       "directory, a tokenizer.json or a *.model file)",
       base_dir);
}

}  // namespace

RunTokenizer resolve_tokenizer(const std::string& setting, const std::string& base_dir) {
  RunTokenizer t;
  t.name = setting == "auto" ? (base_dir.empty() ? "bytes" : base_tokenizer(base_dir)) : setting;
  t.named = load_named_tokenizer(t.name);
  if (t.name != "bytes") t.files_dir = fs::is_directory(t.name) ? t.name : fs::path(t.name).parent_path().string();
  return t;
}

void check_vocabulary(int64_t model_vocab, const RunTokenizer& tokenizer, const std::string& where) {
  if (tokenizer.named.identity.vocab_size > model_vocab)
    fail("{}: vocab_size {} is smaller than the vocabulary of tokenizer {} ({} ids); the model cannot embed its "
         "tokens",
         where, model_vocab, tokenizer.name, tokenizer.named.identity.vocab_size);
}

LoaderConfig StudyData::loader_config(const TrainConfig& train) const {
  LoaderConfig c;
  c.batch_size = train.batch_size;
  c.seq_len = train.seq_len;
  c.seed = train.seed;
  c.holdout_fraction = holdout_fraction;
  c.split_seed = split_seed;
  return c;
}

CorpusSpec corpus_spec(const std::string& name, const std::vector<std::string>& sources, const std::string& split,
                       const DataConfig& data) {
  CorpusSpec s;
  s.name = name;
  s.sources = sources;
  s.split = parse_text_split(split);
  s.text_field = data.text_field;
  s.instruct = std::find(data.instruct.begin(), data.instruct.end(), name) != data.instruct.end();
  s.prompt_field = data.prompt_field;
  s.response_field = data.response_field;
  s.instruct_template = data.instruct_template;
  return s;
}

StudyData open_study_data(const RunConfig& rc, const std::string& out_dir, bool show_progress) {
  StudyData d;
  d.tokenizer = resolve_tokenizer(rc.data.tokenizer, rc.run.base);
  d.holdout_fraction = rc.data.holdout_fraction;
  d.split_seed = rc.data.split_seed;
  const std::string cache = (fs::path(out_dir) / "data").string();
  d.general = open_corpus(corpus_spec("general", rc.data.general, rc.data.general_split, rc.data), d.tokenizer.named,
                          cache, show_progress);
  d.domain = open_corpus(corpus_spec("domain", rc.data.domain, rc.data.domain_split, rc.data), d.tokenizer.named,
                         cache, show_progress);
  LoaderConfig eval = d.loader_config(rc.train);
  eval.batch_size = rc.eval.batch_size;
  d.general_holdout = held_out_corpus(d.general, eval);
  d.domain_holdout = held_out_corpus(d.domain, eval);
  return d;
}

double held_out_loss(const HeldOutCorpus& holdout, int64_t batches, const BatchLossFn& loss, int64_t* targets) {
  double sum = 0.0;
  int64_t count = 0;
  for (const HeldOutSet& set : holdout.sets)
    for (int64_t k = 0; k < std::min(batches, set.batch_count()); ++k) {
      cpu::CrossEntropyResult r = loss(set.batch(k));
      sum += r.loss_sum;
      count += r.count;
    }
  if (targets) *targets = count;
  return count ? sum / double(count) : NAN;
}

TrainData loader_train_data(PackedLoader& loader) {
  TrainData t;
  t.next = [&loader](int64_t, int64_t) { return loader.next_batch(); };
  t.save_position = [&loader] { return loader_state_to_json(loader.state()); };
  t.restore_position = [&loader](const nlohmann::json& j) { loader.restore(loader_state_from_json(j)); };
  return t;
}

TrainData loader_train_data(dist::ShardedLoader& loader) {
  TrainData t;
  t.next = [&loader](int64_t, int64_t) { return loader.next_batch(); };
  t.save_position = [&loader] { return loader_state_to_json(loader.state()); };
  t.restore_position = [&loader](const nlohmann::json& j) { loader.restore(loader_state_from_json(j)); };
  return t;
}

std::vector<TokenBatch> probe_batches(const StudyData& data, int64_t seq_len, int64_t batches, int64_t batch_size,
                                      uint64_t seed) {
  std::vector<LoaderSource> sources;
  add_loader_sources(sources, data.general, 1.0);
  LoaderConfig c;
  c.batch_size = batch_size;
  c.seq_len = seq_len;
  c.seed = seed;
  c.holdout_fraction = data.holdout_fraction;
  c.split_seed = data.split_seed;
  PackedLoader loader(std::move(sources), c);
  std::vector<TokenBatch> out;
  for (int64_t i = 0; i < batches; ++i) out.push_back(loader.next_batch());
  return out;
}

}  // namespace adept
