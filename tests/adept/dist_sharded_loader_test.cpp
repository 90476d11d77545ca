// The rank-sharded loader: the ranks' rows of each batch, put together in rank order,
// are the batch one process draws at the same global batch size; the loader's position
// is the global one, so a run saved on N ranks resumes on M.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "common/random.hpp"
#include "core/error.hpp"
#include "data/shard_writer.hpp"
#include "dist/sharded_loader.hpp"

namespace adept::dist {
namespace {

namespace fs = std::filesystem;
using testing_support::make_rng;

struct TempDir {
  fs::path path;
  explicit TempDir(std::mt19937_64& rng) {
    path = fs::temp_directory_path() / ("adept-dist-loader-" + std::to_string(rng()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::shared_ptr<const TokenDataset> random_dataset(std::mt19937_64& rng, const fs::path& dir, int docs, int64_t max_len) {
  fs::create_directories(dir);
  ShardWriter writer(dir.string(), 50000, 1 + int64_t(rng() % 300));
  Manifest m;
  m.tokenizer.kind = "test";
  m.tokenizer.vocab_size = 50000;
  m.fingerprint = "test:" + dir.string();
  for (int d = 0; d < docs; ++d) {
    std::vector<uint32_t> tokens(size_t(1 + rng() % uint64_t(max_len)));
    for (uint32_t& t : tokens) t = uint32_t(rng() % 50000);
    writer.add_document(tokens, {});
    ++m.documents;
    m.tokens += int64_t(tokens.size());
  }
  m.shards = writer.finish();
  write_manifest(dir.string(), m);
  return std::make_shared<const TokenDataset>(dir.string());
}

// Rank batches concatenated in rank order (documents re-based and merged).
TokenBatch concat(const std::vector<TokenBatch>& parts) {
  TokenBatch out;
  out.S = parts.front().S;
  for (const TokenBatch& p : parts) {
    const int32_t base = int32_t(out.B * out.S);
    out.tokens.insert(out.tokens.end(), p.tokens.begin(), p.tokens.end());
    out.targets.insert(out.targets.end(), p.targets.begin(), p.targets.end());
    for (size_t i = 0; i < p.documents.size(); ++i)
      if (!(i == 0 && !out.documents.empty())) out.documents.push_back(base + p.documents[i]);
    out.B += p.B;
  }
  return out;
}

TEST(DistShardedLoader, RanksTogetherDrawTheSingleProcessBatch) {
  auto rng = make_rng(31);
  TempDir tmp(rng);
  auto a = random_dataset(rng, tmp.path / "a", 60, 90);
  auto b = random_dataset(rng, tmp.path / "b", 40, 30);
  for (int world : {1, 2, 4}) {
    LoaderConfig cfg{8, 2 + int64_t(rng() % 40), rng(), 0.1, 7};
    std::vector<LoaderSource> sources{{a, 2.0}, {b, 1.0}};
    PackedLoader single(sources, cfg);
    std::vector<ShardedLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(sources, cfg, r, world);
    for (int k = 0; k < 25; ++k) {
      std::vector<int32_t> want_sources;
      TokenBatch want = single.next_batch(&want_sources);
      std::vector<TokenBatch> parts;
      std::vector<int32_t> got_sources;
      for (ShardedLoader& r : ranks) {
        std::vector<int32_t> s;
        parts.push_back(r.next_batch(&s));
        EXPECT_EQ(parts.back().B, cfg.batch_size / world);
        got_sources.insert(got_sources.end(), s.begin(), s.end());
      }
      TokenBatch got = concat(parts);
      ASSERT_EQ(got.tokens, want.tokens) << "world " << world << " batch " << k;
      ASSERT_EQ(got.targets, want.targets) << "world " << world << " batch " << k;
      ASSERT_EQ(got.documents, want.documents) << "world " << world << " batch " << k;
      ASSERT_EQ(got_sources, want_sources);
    }
  }
}

TEST(DistShardedLoader, ASavedPositionResumesOnAnotherWorldSize) {
  auto rng = make_rng(32);
  TempDir tmp(rng);
  auto a = random_dataset(rng, tmp.path / "a", 50, 70);
  LoaderConfig cfg{4, 16, rng(), 0.0, 0};
  std::vector<LoaderSource> sources{{a, 1.0}};
  // Four ranks run 7 batches and save (rank 0's state is every rank's state).
  std::vector<ShardedLoader> four;
  for (int r = 0; r < 4; ++r) four.emplace_back(sources, cfg, r, 4);
  for (int k = 0; k < 7; ++k)
    for (ShardedLoader& r : four) r.next_batch();
  for (ShardedLoader& r : four) EXPECT_EQ(loader_state_to_json(r.state()), loader_state_to_json(four[0].state()));
  const LoaderState saved = four[0].state();
  // Two ranks resume; together they draw what one uninterrupted process draws next.
  PackedLoader single(sources, cfg);
  for (int k = 0; k < 7; ++k) single.next_batch();
  std::vector<ShardedLoader> two;
  for (int r = 0; r < 2; ++r) {
    two.emplace_back(sources, cfg, r, 2);
    two.back().restore(saved);
  }
  for (int k = 0; k < 10; ++k) {
    TokenBatch want = single.next_batch();
    TokenBatch got = concat({two[0].next_batch(), two[1].next_batch()});
    ASSERT_EQ(got.tokens, want.tokens) << "batch " << k;
    ASSERT_EQ(got.documents, want.documents) << "batch " << k;
  }
}

TEST(DistShardedLoader, AGlobalBatchThatDoesNotSplitIsAnError) {
  auto rng = make_rng(33);
  TempDir tmp(rng);
  auto a = random_dataset(rng, tmp.path / "a", 10, 20);
  try {
    ShardedLoader bad({{a, 1.0}}, LoaderConfig{6, 8, 1, 0.0, 0}, 0, 4);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("6 rows does not split evenly over 4 ranks"), std::string::npos) << e.what();
  }
}

TEST(DistShardedLoader, SliceRowsKeepsDocumentBoundaries) {
  TokenBatch b;
  b.B = 3, b.S = 4;
  b.tokens = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  b.targets = b.tokens;
  b.documents = {0, 2, 4, 8, 9, 12};
  TokenBatch mid = slice_rows(b, 1, 3);
  EXPECT_EQ(mid.B, 2);
  EXPECT_EQ(mid.tokens, (std::vector<int32_t>{4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(mid.documents, (std::vector<int32_t>{0, 4, 5, 8}));
}

TEST(DistShardedLoader, RanksShareAHeldOutBatchByRowsDifferingByAtMostOne) {
  for (int64_t rows : {0, 1, 2, 5, 8, 13})
    for (int world : {1, 2, 3, 4, 8}) {
      int64_t at = 0, least = rows, most = 0;
      for (int r = 0; r < world; ++r) {
        RowRange range = rank_rows(rows, r, world);
        EXPECT_EQ(range.begin, at) << rows << " rows, rank " << r << " of " << world;
        at = range.end;
        least = std::min(least, range.end - range.begin);
        most = std::max(most, range.end - range.begin);
      }
      EXPECT_EQ(at, rows);
      EXPECT_LE(most - least, 1);
      EXPECT_EQ(most, (rows + world - 1) / world);
    }
}

TEST(DistShardedLoader, TheRanksPiecesTogetherAreTheBatchAndTheBusiestRankSetsThePieceCount) {
  auto rng = make_rng(34);
  for (int trial = 0; trial < 30; ++trial) {
    TokenBatch b;
    b.B = 1 + int64_t(rng() % 9), b.S = 1 + int64_t(rng() % 7);
    for (int64_t n = 0; n < b.B * b.S; ++n) b.tokens.push_back(int32_t(rng() % 1000)), b.targets.push_back(int32_t(n));
    for (int64_t r = 0; r < b.B; ++r) {
      b.documents.push_back(int32_t(r * b.S));
      if (b.S > 2 && rng() % 2) b.documents.push_back(int32_t(r * b.S + 1 + int64_t(rng() % uint64_t(b.S - 1))));
    }
    b.documents.push_back(int32_t(b.B * b.S));
    const int world = 1 + int(rng() % 4);
    const int64_t max_rows = 1 + int64_t(rng() % 3);
    std::vector<TokenBatch> all;
    int64_t most = 0;
    for (int r = 0; r < world; ++r) {
      std::vector<TokenBatch> mine = rank_pieces(b, r, world, max_rows);
      for (const TokenBatch& p : mine) EXPECT_LE(p.B, max_rows);
      most = std::max(most, int64_t(mine.size()));
      all.insert(all.end(), mine.begin(), mine.end());
    }
    EXPECT_EQ(most, most_pieces(b.B, world, max_rows));
    TokenBatch whole = concat(all);
    EXPECT_EQ(whole.B, b.B);
    EXPECT_EQ(whole.tokens, b.tokens);
    EXPECT_EQ(whole.targets, b.targets);
    EXPECT_EQ(whole.documents, b.documents);
  }
}

}  // namespace
}  // namespace adept::dist
