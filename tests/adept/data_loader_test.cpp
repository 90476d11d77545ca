// The packing loader: rows never mix documents (checked against an independent, naive
// packing), targets follow the loss mask and stop at every document's end, the shuffle
// is a function of the seed, a restored position gives the same batches, weights give
// the row shares, and held-out documents stay out of training.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <numeric>
#include <set>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "data/packed_loader.hpp"
#include "data/shard_writer.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::make_rng;

using testing_support::TempDir;

struct Doc {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;  // empty: every token is a target
};

// Writes docs as a dataset directory (shards and manifest) the way `adept data prepare`
// lays one out.
std::shared_ptr<const TokenDataset> write_dataset(const fs::path& dir, const std::vector<Doc>& docs, uint32_t vocab,
                                                  int64_t shard_tokens) {
  fs::create_directories(dir);
  ShardWriter writer(dir.string(), vocab, shard_tokens);
  Manifest m;
  m.tokenizer.kind = "test";
  m.tokenizer.vocab_size = vocab;
  m.fingerprint = "test:" + dir.string();
  for (const Doc& d : docs) {
    writer.add_document(d.tokens, d.mask);
    ++m.documents;
    m.tokens += int64_t(d.tokens.size());
  }
  m.shards = writer.finish();
  write_manifest(dir.string(), m);
  return std::make_shared<const TokenDataset>(dir.string());
}

// Documents whose tokens are all distinct (first_token, first_token + 1, ...), so a
// token tells which document and position it came from. Lengths 1..max_len.
std::vector<Doc> unique_docs(std::mt19937_64& rng, int n, int64_t max_len, uint32_t first_token, bool masks) {
  std::uniform_int_distribution<int64_t> len(1, max_len);
  std::vector<Doc> docs(n);
  uint32_t next = first_token;
  for (Doc& d : docs) {
    d.tokens.resize(len(rng));
    for (uint32_t& t : d.tokens) t = next++;
    if (masks && rng() % 2) {
      // An instruction: a prompt (mask 0) then a response (mask 1).
      size_t prompt = rng() % d.tokens.size();
      d.mask.assign(d.tokens.size(), 1);
      std::fill(d.mask.begin(), d.mask.begin() + int64_t(prompt), 0);
    }
  }
  return docs;
}

struct Where {
  int64_t doc, pos;
};

std::map<int32_t, Where> token_index(const std::vector<Doc>& docs) {
  std::map<int32_t, Where> index;
  for (size_t d = 0; d < docs.size(); ++d)
    for (size_t p = 0; p < docs[d].tokens.size(); ++p) index[int32_t(docs[d].tokens[p])] = {int64_t(d), int64_t(p)};
  return index;
}

int32_t expected_target(const Doc& d, int64_t pos) {
  if (pos + 1 >= int64_t(d.tokens.size())) return kIgnoreIndex;
  if (!d.mask.empty() && d.mask[pos + 1] == 0) return kIgnoreIndex;
  return int32_t(d.tokens[pos + 1]);
}

void expect_same_batch(const TokenBatch& a, const TokenBatch& b, int64_t k) {
  EXPECT_EQ(a.tokens, b.tokens) << "batch " << k;
  EXPECT_EQ(a.targets, b.targets) << "batch " << k;
  EXPECT_EQ(a.documents, b.documents) << "batch " << k;
}

TEST(DataLoader, NoDocumentPieceSpansTwoDocumentsAndEveryRowStartsOne) {
  auto rng = make_rng(701);
  TempDir tmp(rng);
  const int64_t S = 2 + int64_t(rng() % 30), B = 1 + int64_t(rng() % 4);
  std::vector<Doc> docs = unique_docs(rng, 40, 3 * S, 0, true);
  auto data = write_dataset(tmp.path / "a", docs, 1 << 20, 1 + int64_t(rng() % 200));
  auto index = token_index(docs);
  PackedLoader loader({{data, 1.0}}, {B, S, rng(), 0.0, 0});

  for (int64_t k = 0; k < 60; ++k) {
    TokenBatch b = loader.next_batch();
    ASSERT_EQ(b.documents.front(), 0);
    ASSERT_EQ(b.documents.back(), B * S);
    std::set<int32_t> starts(b.documents.begin(), b.documents.end());
    ASSERT_EQ(starts.size(), b.documents.size()) << "offsets must increase strictly";
    for (int64_t r = 0; r < B; ++r) EXPECT_TRUE(starts.count(int32_t(r * S))) << "row " << r << " is not a boundary";
    for (size_t s = 0; s + 1 < b.documents.size(); ++s) {
      int32_t begin = b.documents[s], end = b.documents[s + 1];
      ASSERT_EQ(begin / S, (end - 1) / S) << "a piece spans two rows";
      Where first = index.at(b.tokens[begin]);
      if (begin % S != 0) EXPECT_EQ(first.pos, 0) << "a piece inside a row must start its document";
      for (int32_t i = begin; i < end; ++i) {
        Where w = index.at(b.tokens[i]);
        ASSERT_EQ(w.doc, first.doc) << "batch " << k << " piece " << s << " mixes documents";
        ASSERT_EQ(w.pos, first.pos + (i - begin));
        EXPECT_EQ(b.targets[i], expected_target(docs[w.doc], w.pos)) << "batch " << k << " token " << i;
      }
      // The piece is maximal: it ends at the row's end or at its document's end.
      Where last = index.at(b.tokens[end - 1]);
      if (end % S != 0) EXPECT_EQ(last.pos + 1, int64_t(docs[last.doc].tokens.size()));
    }
  }
}

TEST(DataLoader, BatchesEqualAnIndependentNaivePackingOfTheShuffledDocuments) {
  auto rng = make_rng(702);
  TempDir tmp(rng);
  const int64_t S = 1 + int64_t(rng() % 24), B = 1 + int64_t(rng() % 5);
  std::vector<Doc> docs = unique_docs(rng, 25, 2 * S + 3, 7, true);
  auto data = write_dataset(tmp.path / "a", docs, 1 << 20, 64);
  PackedLoader loader({{data, 1.0}}, {B, S, rng(), 0.0, 0});

  // The naive packing: concatenate the documents of epochs 0, 1, 2 in the loader's
  // order, then cut rows of S; a piece starts at each row start and each document start.
  struct Tok {
    int32_t token, target;
    bool starts_piece;
  };
  std::vector<Tok> stream;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> order = loader.epoch_order(0, epoch);
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(docs.size());
    std::iota(all.begin(), all.end(), 0);
    ASSERT_EQ(sorted, all) << "epoch " << epoch << " order is not a permutation";
    for (int64_t d : order)
      for (size_t p = 0; p < docs[d].tokens.size(); ++p)
        stream.push_back({int32_t(docs[d].tokens[p]), expected_target(docs[d], int64_t(p)), p == 0});
  }
  const int64_t batches = int64_t(stream.size()) / (B * S);
  ASSERT_GT(batches, 2);
  for (int64_t k = 0; k < batches; ++k) {
    TokenBatch expected;
    for (int64_t i = 0; i < B * S; ++i) {
      const Tok& t = stream[k * B * S + i];
      expected.tokens.push_back(t.token);
      expected.targets.push_back(t.target);
      if (i % S == 0 || t.starts_piece) expected.documents.push_back(int32_t(i));
    }
    expected.documents.push_back(int32_t(B * S));
    expect_same_batch(loader.next_batch(), expected, k);
  }
}

TEST(DataLoader, InstructionTargetsCountOnlyResponseTokensAndNeverTheDocumentEnd) {
  auto rng = make_rng(703);
  TempDir tmp(rng);
  // Every document is prompt (mask 0) + response (mask 1), tokens tagged by role:
  // prompt tokens are even, response tokens odd.
  auto instruction = [&](int64_t prompt, int64_t response) {
    Doc d;
    for (int64_t i = 0; i < prompt + response; ++i) {
      bool in_response = i >= prompt;
      d.tokens.push_back(uint32_t(2 * (rng() % 100) + in_response));
      d.mask.push_back(in_response);
    }
    return d;
  };
  const int64_t S = 16;
  std::vector<Doc> docs;
  int64_t total = 0, response_tokens = 0;
  for (int i = 0; i < 30; ++i) {
    docs.push_back(instruction(1 + int64_t(rng() % 8), 1 + int64_t(rng() % 8)));
    total += int64_t(docs.back().tokens.size());
  }
  // One more document makes one epoch exactly total / S rows.
  docs.push_back(instruction(1, 2 * S - total % S - 1));
  total += int64_t(docs.back().tokens.size());
  ASSERT_EQ(total % S, 0);
  for (const Doc& d : docs) response_tokens += int64_t(std::count(d.mask.begin(), d.mask.end(), 1));
  auto data = write_dataset(tmp.path / "i", docs, 256, 1000);
  PackedLoader loader({{data, 1.0}}, {1, S, rng(), 0.0, 0});

  int64_t counted = 0;
  for (int64_t k = 0; k < total / S; ++k) {
    TokenBatch b = loader.next_batch();
    for (size_t s = 0; s + 1 < b.documents.size(); ++s)
      for (int32_t i = b.documents[s]; i < b.documents[s + 1]; ++i) {
        if (b.targets[i] == kIgnoreIndex) continue;
        ++counted;
        EXPECT_EQ(b.targets[i] % 2, 1) << "a prompt token is a target";
        if (i + 1 < b.documents[s + 1]) EXPECT_EQ(b.targets[i], b.tokens[i + 1]);
      }
  }
  // Over one epoch every response token is a target exactly once (each has a prompt
  // token before it), also where a row break falls between it and its predecessor.
  EXPECT_EQ(counted, response_tokens);
}

TEST(DataLoader, TheLastTokenOfEveryDocumentHasNoTarget) {
  auto rng = make_rng(704);
  TempDir tmp(rng);
  std::vector<Doc> docs = unique_docs(rng, 30, 12, 0, false);
  auto data = write_dataset(tmp.path / "a", docs, 1 << 16, 1000);
  auto index = token_index(docs);
  PackedLoader loader({{data, 1.0}}, {3, 10, rng(), 0.0, 0});
  int64_t ends = 0;
  for (int k = 0; k < 20; ++k) {
    TokenBatch b = loader.next_batch();
    for (size_t i = 0; i < b.tokens.size(); ++i) {
      Where w = index.at(b.tokens[i]);
      bool last = w.pos + 1 == int64_t(docs[w.doc].tokens.size());
      EXPECT_EQ(b.targets[i] == kIgnoreIndex, last) << "token " << i;
      ends += last;
    }
  }
  EXPECT_GT(ends, 20);
}

TEST(DataLoader, TheShuffleIsAFunctionOfTheSeed) {
  auto rng = make_rng(705);
  TempDir tmp(rng);
  auto data = write_dataset(tmp.path / "a", unique_docs(rng, 50, 20, 0, false), 1 << 16, 100);
  uint64_t seed = rng();
  PackedLoader a({{data, 1.0}}, {2, 8, seed, 0.0, 0}), b({{data, 1.0}}, {2, 8, seed, 0.0, 0}),
      c({{data, 1.0}}, {2, 8, seed + 1, 0.0, 0});
  bool differs = false;
  for (int k = 0; k < 30; ++k) {
    TokenBatch x = a.next_batch(), y = b.next_batch(), z = c.next_batch();
    expect_same_batch(x, y, k);
    differs |= x.tokens != z.tokens;
  }
  EXPECT_TRUE(differs) << "another seed gave the same order";
  EXPECT_NE(a.epoch_order(0, 0), a.epoch_order(0, 1)) << "every epoch needs a new order";
}

TEST(DataLoader, ResumingFromASavedStateYieldsTheSameBatches) {
  auto rng = make_rng(706);
  TempDir tmp(rng);
  auto general = write_dataset(tmp.path / "g", unique_docs(rng, 30, 40, 0, true), 1 << 20, 150);
  auto domain = write_dataset(tmp.path / "d", unique_docs(rng, 20, 25, 100000, true), 1 << 20, 150);
  LoaderConfig config{3, 1 + int64_t(rng() % 20), rng(), 0.1, rng()};
  std::vector<LoaderSource> sources{{general, 0.3}, {domain, 0.7}};
  PackedLoader first(sources, config);
  const int64_t before = 1 + int64_t(rng() % 60), after = 40;
  for (int64_t k = 0; k < before; ++k) first.next_batch();
  // The state as it would be saved beside a checkpoint, then read back after a restart.
  std::string saved = loader_state_to_json(first.state()).dump();
  std::vector<TokenBatch> expected;
  for (int64_t k = 0; k < after; ++k) expected.push_back(first.next_batch());

  PackedLoader restarted(sources, config);
  restarted.restore(loader_state_from_json(nlohmann::json::parse(saved)));
  for (int64_t k = 0; k < after; ++k) expect_same_batch(restarted.next_batch(), expected[k], before + k);
  EXPECT_EQ(restarted.state().batches, before + after);
}

TEST(DataLoader, RestoringAStateOfOtherSettingsIsAnError) {
  auto rng = make_rng(707);
  TempDir tmp(rng);
  auto data = write_dataset(tmp.path / "a", unique_docs(rng, 10, 20, 0, false), 1 << 16, 100);
  PackedLoader a({{data, 1.0}}, {2, 8, 1, 0.0, 0});
  a.next_batch();
  PackedLoader other_seed({{data, 1.0}}, {2, 8, 2, 0.0, 0});
  EXPECT_THROW(other_seed.restore(a.state()), Error);
  LoaderState corrupt = a.state();
  corrupt.sources[0].next = 1000;
  PackedLoader same({{data, 1.0}}, {2, 8, 1, 0.0, 0});
  EXPECT_THROW(same.restore(corrupt), Error);
  EXPECT_THROW(loader_state_from_json(nlohmann::json{{"batches", 1}}), Error);
}

TEST(DataLoader, MixingRatiosHoldWithinOnePercentOverALongRun) {
  auto rng = make_rng(708);
  TempDir tmp(rng);
  // Three sources with disjoint token ranges, of very different sizes (the small one
  // is repeated over many epochs), and random weights.
  std::vector<std::shared_ptr<const TokenDataset>> data;
  std::vector<LoaderSource> sources;
  std::vector<double> weights;
  for (int s = 0; s < 3; ++s) {
    data.push_back(write_dataset(tmp.path / std::to_string(s), unique_docs(rng, 5 + 40 * s, 30, 100000 * s, false),
                                 1 << 20, 500));
    weights.push_back(0.05 + double(rng() % 1000) / 1000.0);
    sources.push_back({data.back(), weights.back()});
  }
  const double total = weights[0] + weights[1] + weights[2];
  PackedLoader loader(sources, {5, 32, rng(), 0.0, 0});
  std::vector<int64_t> tokens(3, 0);
  int64_t all = 0;
  std::vector<int32_t> row_source;
  for (int k = 0; k < 2000; ++k) {
    TokenBatch b = loader.next_batch(&row_source);
    for (int64_t i = 0; i < b.B * b.S; ++i) {
      int source = b.tokens[i] / 100000;
      ASSERT_EQ(source, row_source[i / b.S]) << "a row holds tokens of another source";
      ++tokens[source];
      ++all;
    }
  }
  for (int s = 0; s < 3; ++s) EXPECT_NEAR(double(tokens[s]) / double(all), weights[s] / total, 0.01) << "source " << s;
}

TEST(DataLoader, AZeroWeightSourceIsNeverDrawn) {
  auto rng = make_rng(709);
  TempDir tmp(rng);
  auto a = write_dataset(tmp.path / "a", unique_docs(rng, 10, 20, 0, false), 1 << 20, 100);
  auto b = write_dataset(tmp.path / "b", unique_docs(rng, 10, 20, 100000, false), 1 << 20, 100);
  PackedLoader loader({{a, 1.0}, {b, 0.0}}, {4, 16, rng(), 0.0, 0});
  for (int k = 0; k < 50; ++k)
    for (int32_t t : loader.next_batch().tokens) ASSERT_LT(t, 100000);
}

TEST(DataLoader, HeldOutDocumentsNeverAppearInTrainingAndAreEachEvaluatedOnce) {
  auto rng = make_rng(710);
  TempDir tmp(rng);
  std::vector<Doc> docs = unique_docs(rng, 200, 30, 1, false);  // token 0 is left for padding
  auto data = write_dataset(tmp.path / "a", docs, 1 << 20, 300);
  const LoaderConfig config{4, 16, rng(), 0.2, rng()};
  PackedLoader loader({{data, 1.0}}, config);
  const DocumentSplit& split = loader.split(0);
  EXPECT_EQ(split.train.size() + split.holdout.size(), docs.size());
  EXPECT_NEAR(double(split.holdout.size()) / double(docs.size()), 0.2, 0.1);

  std::set<int64_t> held(split.holdout.begin(), split.holdout.end());
  auto index = token_index(docs);
  for (int k = 0; k < 100; ++k)
    for (int32_t t : loader.next_batch().tokens) ASSERT_FALSE(held.count(index.at(t).doc)) << "token " << t;

  HeldOutSet holdout(data, config);
  std::map<int32_t, int> seen;
  for (int64_t k = 0; k < holdout.batch_count(); ++k) {
    TokenBatch b = holdout.batch(k);
    for (size_t s = 0; s + 1 < b.documents.size(); ++s)
      for (int32_t i = b.documents[s]; i < b.documents[s + 1]; ++i) {
        if (b.tokens[i] == 0) {  // padding after the last held-out token
          EXPECT_EQ(b.targets[i], kIgnoreIndex);
          continue;
        }
        Where w = index.at(b.tokens[i]);
        EXPECT_TRUE(held.count(w.doc)) << "a training document in the held-out set";
        ++seen[b.tokens[i]];
        EXPECT_EQ(b.targets[i], expected_target(docs[w.doc], w.pos));
      }
  }
  int64_t held_tokens = 0;
  for (int64_t d : split.holdout) held_tokens += int64_t(docs[d].tokens.size());
  EXPECT_EQ(int64_t(seen.size()), held_tokens);
  for (auto& [token, n] : seen) EXPECT_EQ(n, 1) << "token " << token;

  // Another training seed holds out the same documents.
  PackedLoader reseeded({{data, 1.0}}, {4, 16, config.seed + 1, 0.2, config.split_seed});
  EXPECT_EQ(reseeded.split(0).holdout, split.holdout);
}

TEST(DataLoader, ADatasetWithoutDocumentsIsAnErrorNamingIt) {
  auto rng = make_rng(712);
  TempDir tmp(rng);
  auto empty = write_dataset(tmp.path / "empty", {}, 100, 100);
  try {
    PackedLoader loader({{empty, 1.0}}, {2, 8, 1, 0.0, 0});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((tmp.path / "empty").string()), std::string::npos) << e.what();
  }
}

TEST(DataLoader, ATinyDatasetKeepsOneTrainingAndOneHeldOutDocument) {
  auto rng = make_rng(714);
  TempDir tmp(rng);
  auto one = write_dataset(tmp.path / "one", unique_docs(rng, 1, 5, 0, false), 100, 100);
  auto two = write_dataset(tmp.path / "two", unique_docs(rng, 2, 5, 10, false), 100, 100);
  for (double fraction : {0.01, 0.5, 0.99}) {
    uint64_t split_seed = rng();
    DocumentSplit s1 = split_documents(*one, fraction, split_seed), s2 = split_documents(*two, fraction, split_seed);
    EXPECT_EQ(s1.train.size(), 1u);
    EXPECT_EQ(s1.holdout.size(), 0u);
    EXPECT_EQ(s2.train.size(), 1u) << fraction;
    EXPECT_EQ(s2.holdout.size(), 1u) << fraction;
  }
}

TEST(DataLoader, BatchViewPassesTheDocumentsToTheDecoder) {
  auto rng = make_rng(711);
  TempDir tmp(rng);
  auto data = write_dataset(tmp.path / "a", unique_docs(rng, 10, 5, 0, false), 1 << 16, 100);
  PackedLoader loader({{data, 1.0}}, {2, 8, rng(), 0.0, 0});
  TokenBatch b = loader.next_batch();
  Batch view = batch_view(b);
  EXPECT_EQ(view.B, 2);
  EXPECT_EQ(view.S, 8);
  ASSERT_NE(view.documents, nullptr);
  EXPECT_EQ(*view.documents, b.documents);
  EXPECT_EQ(view.tokens, b.tokens.data());
}

TEST(DataLoader, APackedBatchScoresEachDocumentPieceAsIfItWereAlone) {
  // The decoder on a packed batch: its loss is the sum of each piece run on its own
  // (positions from 0, nothing visible from other pieces), in float64.
  auto rng = make_rng(713);
  TempDir tmp(rng);
  const uint32_t vocab = 32;
  std::vector<Doc> docs(12);
  for (Doc& d : docs) {
    d.tokens.resize(1 + rng() % 14);
    for (uint32_t& t : d.tokens) t = uint32_t(rng() % vocab);
    if (rng() % 2) {
      d.mask.assign(d.tokens.size(), 1);
      d.mask[0] = 0;
    }
  }
  auto data = write_dataset(tmp.path / "a", docs, vocab, 1000);
  ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  Decoder<double> model(c);
  model.init_random(rng(), 0.5);
  PackedLoader loader({{data, 1.0}}, {3, 10, rng(), 0.0, 0});
  for (int k = 0; k < 3; ++k) {
    TokenBatch b = loader.next_batch();
    ASSERT_GT(b.documents.size(), size_t(b.B + 1)) << "the batch should pack several documents per row";
    cpu::CrossEntropyResult packed = model.forward(batch_view(b));
    double alone = 0.0;
    int64_t count = 0;
    for (size_t s = 0; s + 1 < b.documents.size(); ++s) {
      int32_t begin = b.documents[s], n = b.documents[s + 1] - begin;
      cpu::CrossEntropyResult r = model.forward(Batch{1, n, &b.tokens[begin], &b.targets[begin], nullptr});
      alone += r.loss_sum;
      count += r.count;
    }
    EXPECT_EQ(packed.count, count);
    EXPECT_NEAR(packed.loss_sum, alone, 1e-9 * std::abs(alone)) << "batch " << k;
  }
}

}  // namespace
}  // namespace adept
