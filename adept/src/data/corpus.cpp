#include "data/corpus.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "core/atomic_file.hpp"
#include "core/embedded.hpp"
#include "core/error.hpp"
#include "data/content_hash.hpp"
#include "data/prepare.hpp"

namespace adept {

namespace fs = std::filesystem;

namespace {

// An embedded file as a real one, rewritten only when its content differs.
std::string materialize_embedded(const std::string& source, const std::string& cache_dir) {
  std::string name = source.substr(std::string("embedded:").size());
  std::string text = read_text_source(source);
  fs::path path = fs::path(cache_dir) / "embedded" / name;
  bool same = false;
  if (fs::exists(path) && fs::file_size(path) == text.size()) same = read_text_source(path.string()) == text;
  if (!same) {
    make_directories(path.parent_path().string());
    write_file_atomic(path.string(), text);
  }
  return path.string();
}

void check_tokenizer(const TokenDataset& data, const TokenizerIdentity& want) {
  const TokenizerIdentity& got = data.manifest().tokenizer;
  if (got.kind != want.kind || got.hash != want.hash || got.vocab_size != want.vocab_size)
    fail("{}/{}: tokenizer is {} {} (vocab {}), but this run tokenizes with {} {} (vocab {}); prepare the dataset "
         "with the run's tokenizer",
         data.dir(), kManifestFile, got.kind, got.path.empty() ? "(built-in)" : got.path, got.vocab_size, want.kind,
         want.path.empty() ? "(built-in)" : want.path, want.vocab_size);
}

}  // namespace

Corpus open_corpus(const CorpusSpec& spec, const NamedTokenizer& tokenizer, const std::string& cache_dir,
                   bool show_progress) {
  if (spec.sources.empty()) fail("data.{} lists no files", spec.name);
  std::vector<std::string> text_files, jsonl_files, dirs;
  for (const std::string& s : spec.sources) {
    if (s.starts_with("embedded:")) text_files.push_back(materialize_embedded(s, cache_dir));
    else if (fs::is_directory(s)) dirs.push_back(s);
    else if (!fs::is_regular_file(s)) fail("data.{}: {}: no such file or dataset directory", spec.name, s);
    else if (fs::path(s).extension() == ".jsonl") jsonl_files.push_back(s);
    else text_files.push_back(s);
  }
  Corpus c;
  c.name = spec.name;
  auto prepare = [&](const std::vector<std::string>& files, InputFormat format, const char* suffix) {
    if (files.empty()) return;
    PrepareOptions o;
    o.inputs = files;
    o.out_dir = (fs::path(cache_dir) / (spec.name + suffix)).string();
    o.format = format;
    o.split = spec.split;
    o.text_field = spec.text_field;
    o.prompt_field = spec.prompt_field;
    o.response_field = spec.response_field;
    o.instruct_template = spec.instruct_template;
    o.add_bos = tokenizer.tokenizer->special_ids().add_bos;
    o.show_progress = show_progress;
    PrepareResult r = prepare_dataset(o, prepare_tokenizer(tokenizer));
    for (const SourceReport& s : r.manifest.sources)
      if (s.issue_total() > 0 && !r.up_to_date)
        fmt::print("data     {}: {} records with bad input skipped or repaired (see {}/{})\n", s.path,
                   s.issue_total(), o.out_dir, kManifestFile);
    if (r.manifest.documents == 0) fail("data.{}: {} hold no document", spec.name, fmt::join(files, ", "));
    dirs.insert(dirs.begin(), o.out_dir);
  };
  if (spec.instruct) prepare(jsonl_files, InputFormat::Instruct, "-instruct");
  else prepare(jsonl_files, InputFormat::Jsonl, "-jsonl");
  prepare(text_files, InputFormat::Text, "-text");
  Fnv1a64 fingerprint;
  for (const std::string& d : dirs) {
    auto data = std::make_shared<const TokenDataset>(d);
    check_tokenizer(*data, tokenizer.identity);
    if (data->documents() == 0) fail("data.{}: {} holds no document", spec.name, d);
    c.documents += data->documents();
    c.tokens += data->tokens();
    fingerprint.update(data->manifest().fingerprint + "|");
    for (const ShardEntry& e : data->manifest().shards) fingerprint.update(e.hash + "|");
    c.datasets.push_back(std::move(data));
  }
  c.fingerprint = hash_string(fingerprint.value());
  return c;
}

void add_loader_sources(std::vector<LoaderSource>& sources, const Corpus& corpus, double share) {
  if (share <= 0.0) return;
  for (const auto& d : corpus.datasets)
    sources.push_back({d, share * double(d->tokens()) / double(std::max<int64_t>(corpus.tokens, 1))});
}

HeldOutCorpus held_out_corpus(const Corpus& corpus, const LoaderConfig& config, bool every_document) {
  HeldOutCorpus h;
  for (const auto& d : corpus.datasets) {
    HeldOutSet set(d, config, every_document);
    if (set.tokens() == 0) continue;
    h.tokens += set.tokens();
    h.sets.push_back(std::move(set));
  }
  return h;
}

}  // namespace adept
