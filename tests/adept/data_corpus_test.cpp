// A run's corpora: text, JSONL and already-prepared directories side by side, prepared
// once and reused, weighted by tokens in the loader, and held-out documents kept apart.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "data/corpus.hpp"
#include "data/prepare.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;

using testing_support::TempDir;

std::string words(std::mt19937_64& rng, int n) {
  std::uniform_int_distribution<int> letter('a', 'z');
  std::string s;
  for (int i = 0; i < n; ++i) {
    s += char(letter(rng));
    if (i % 5 == 4) s += ' ';
  }
  return s;
}

TEST(Corpus, TextJsonlAndPreparedDirectoriesMakeOneCorpus) {
  auto rng = testing_support::make_rng(81);
  TempDir tmp(rng());
  std::ofstream(tmp.path / "a.txt") << words(rng, 200) << "\n\n" << words(rng, 100) << "\n\n" << words(rng, 50) << "\n";
  std::ofstream(tmp.path / "b.jsonl") << "{\"text\": \"" << words(rng, 80) << "\"}\n{\"text\": \"" << words(rng, 90)
                                      << "\"}\n{\"other\": 1}\n";
  std::ofstream(tmp.path / "c.txt") << words(rng, 300) << "\n%\n" << words(rng, 40) << "\n%\n";
  NamedTokenizer bytes = load_named_tokenizer("bytes");
  PrepareOptions po;
  po.inputs = {(tmp.path / "c.txt").string()};
  po.out_dir = (tmp.path / "prepared").string();
  po.split = TextSplit::Fortune;
  po.show_progress = false;
  prepare_dataset(po, prepare_tokenizer(bytes));

  CorpusSpec spec;
  spec.name = "domain";
  spec.sources = {(tmp.path / "a.txt").string(), (tmp.path / "b.jsonl").string(), (tmp.path / "prepared").string()};
  spec.split = TextSplit::Blocks;
  Corpus c = open_corpus(spec, bytes, (tmp.path / "cache").string(), false);
  ASSERT_EQ(c.datasets.size(), 3u);
  EXPECT_EQ(c.documents, 3 + 2 + 2);  // blocks, JSONL lines with a text field, fortune entries
  EXPECT_TRUE(fs::exists(tmp.path / "cache" / "domain-text" / "manifest.json"));
  EXPECT_TRUE(fs::exists(tmp.path / "cache" / "domain-jsonl" / "manifest.json"));
  // Unchanged inputs: the same fingerprint, nothing redone.
  auto stamp = fs::last_write_time(tmp.path / "cache" / "domain-text" / "manifest.json");
  Corpus again = open_corpus(spec, bytes, (tmp.path / "cache").string(), false);
  EXPECT_EQ(again.fingerprint, c.fingerprint);
  EXPECT_EQ(fs::last_write_time(tmp.path / "cache" / "domain-text" / "manifest.json"), stamp);
  // The loader's shares follow the datasets' token counts.
  std::vector<LoaderSource> sources;
  add_loader_sources(sources, c, 0.75);
  double total = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    EXPECT_NEAR(sources[i].weight, 0.75 * double(c.datasets[i]->tokens()) / double(c.tokens), 1e-12);
    total += sources[i].weight;
  }
  EXPECT_NEAR(total, 0.75, 1e-12);
}

TEST(Corpus, InstructionJsonlTrainsOnlyOnTheResponses) {
  auto rng = testing_support::make_rng(84);
  TempDir tmp(rng());
  std::ofstream(tmp.path / "pairs.jsonl") << "{\"q\": \"What is 2+2?\", \"a\": \"4\"}\n"
                                          << "{\"q\": \"Name a colour.\", \"a\": \"Blue.\"}\n";
  CorpusSpec spec;
  spec.name = "general";
  spec.sources = {(tmp.path / "pairs.jsonl").string()};
  spec.instruct = true;
  spec.prompt_field = "q", spec.response_field = "a";
  Corpus c = open_corpus(spec, load_named_tokenizer("bytes"), (tmp.path / "cache").string(), false);
  ASSERT_EQ(c.documents, 2);
  EXPECT_TRUE(fs::exists(tmp.path / "cache" / "general-instruct" / "manifest.json"));
  const std::string prompt = "User: What is 2+2?\nAssistant: ";
  DocumentView d = c.datasets[0]->document(0);
  ASSERT_EQ(d.length, int64_t(prompt.size() + 1));  // the byte tokenizer has no BOS/EOS
  ASSERT_NE(d.mask, nullptr);
  for (int64_t i = 0; i < d.length; ++i) EXPECT_EQ(d.mask[i], i < int64_t(prompt.size()) ? 0 : 1) << i;
}

TEST(Corpus, APreparedDirectoryOfAnotherTokenizerIsAnErrorNamingItsManifest) {
  auto rng = testing_support::make_rng(82);
  TempDir tmp(rng());
  std::ofstream(tmp.path / "a.txt") << words(rng, 100);
  PrepareOptions po;
  po.inputs = {(tmp.path / "a.txt").string()};
  po.out_dir = (tmp.path / "bpe").string();
  po.show_progress = false;
  NamedTokenizer bpe =
      load_named_tokenizer((fs::path(ADEPT_SOURCE_DIR) / "tests/fixtures/data/tiny_bpe/tokenizer.json").string());
  prepare_dataset(po, prepare_tokenizer(bpe));
  CorpusSpec spec;
  spec.name = "general";
  spec.sources = {(tmp.path / "bpe").string()};
  try {
    open_corpus(spec, load_named_tokenizer("bytes"), (tmp.path / "cache").string(), false);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("bpe/manifest.json"), std::string::npos) << what;
    EXPECT_NE(what.find("tokenizer"), std::string::npos) << what;
  }
}

TEST(Corpus, AMissingSourceNamesTheCorpusAndThePath) {
  CorpusSpec spec;
  spec.name = "domain";
  spec.sources = {"/nonexistent/domain.txt"};
  try {
    open_corpus(spec, load_named_tokenizer("bytes"), "/tmp/adept-corpus-missing", false);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.domain: /nonexistent/domain.txt"), std::string::npos) << e.what();
  }
}

TEST(Corpus, HeldOutDocumentsAreTheLoadersHeldOutSplit) {
  auto rng = testing_support::make_rng(83);
  TempDir tmp(rng());
  std::string text;
  for (int i = 0; i < 40; ++i) text += words(rng, 20 + i) + "\n\n";
  std::ofstream(tmp.path / "a.txt") << text;
  CorpusSpec spec;
  spec.name = "general";
  spec.sources = {(tmp.path / "a.txt").string()};
  Corpus c = open_corpus(spec, load_named_tokenizer("bytes"), (tmp.path / "cache").string(), false);
  LoaderConfig lc;
  lc.batch_size = 2, lc.seq_len = 32, lc.holdout_fraction = 0.2, lc.split_seed = rng();
  HeldOutCorpus h = held_out_corpus(c, lc);
  DocumentSplit split = split_documents(*c.datasets[0], lc.holdout_fraction, lc.split_seed);
  int64_t tokens = 0;
  for (int64_t d : split.holdout) tokens += c.datasets[0]->document(d).length;
  EXPECT_EQ(h.tokens, tokens);
  EXPECT_GT(h.tokens, 0);
  HeldOutCorpus all = held_out_corpus(c, lc, /*every_document=*/true);
  EXPECT_EQ(all.tokens, c.tokens);
}

}  // namespace
}  // namespace adept
