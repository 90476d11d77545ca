// Token shards and the manifest: what is written reads back, and every way a dataset on
// disk can be damaged — a truncated shard, extra bytes, a wrong magic, an id outside the
// vocabulary, a manifest that disagrees with its shards, a missing shard, changed bytes —
// is an adept::Error naming the file, never a crash.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "data/content_hash.hpp"
#include "data/shard_writer.hpp"
#include "data/token_dataset.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::make_rng;

using testing_support::TempDir;

struct Doc {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
};

std::vector<Doc> random_docs(std::mt19937_64& rng, int n, uint32_t vocab) {
  std::vector<Doc> docs(n);
  for (Doc& d : docs) {
    d.tokens.resize(1 + rng() % 50);
    for (uint32_t& t : d.tokens) t = uint32_t(rng() % vocab);
    if (rng() % 3 == 0)
      for (size_t i = 0; i < d.tokens.size(); ++i) d.mask.push_back(uint8_t(rng() % 2));
  }
  return docs;
}

void write_dataset(const fs::path& dir, const std::vector<Doc>& docs, uint32_t vocab, int64_t shard_tokens) {
  ShardWriter writer(dir.string(), vocab, shard_tokens);
  Manifest m;
  m.tokenizer.kind = "test";
  m.tokenizer.vocab_size = vocab;
  for (const Doc& d : docs) {
    writer.add_document(d.tokens, d.mask);
    ++m.documents;
    m.tokens += int64_t(d.tokens.size());
  }
  m.shards = writer.finish();
  write_manifest(dir.string(), m);
}

// The message of the adept::Error `f` throws ("" if none).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }

TEST(DataShard, DocumentsAndLossMasksReadBackAcrossShards) {
  auto rng = make_rng(801);
  TempDir tmp(rng);
  std::vector<Doc> docs = random_docs(rng, 60, 1000);
  write_dataset(tmp.path, docs, 1000, 1 + int64_t(rng() % 300));
  TokenDataset data(tmp.path.string(), /*verify_hashes=*/true);
  ASSERT_EQ(data.documents(), int64_t(docs.size()));
  EXPECT_GT(data.manifest().shards.size(), 1u);
  for (size_t i = 0; i < docs.size(); ++i) {
    DocumentView v = data.document(int64_t(i));
    ASSERT_EQ(v.length, int64_t(docs[i].tokens.size()));
    EXPECT_TRUE(std::equal(v.tokens, v.tokens + v.length, docs[i].tokens.begin())) << "document " << i;
    for (int64_t j = 0; j < v.length; ++j) {
      uint8_t expected = docs[i].mask.empty() ? 1 : docs[i].mask[j];
      EXPECT_EQ(v.mask ? v.mask[j] : 1, expected) << "document " << i << " token " << j;
    }
  }
}

TEST(DataShard, AShardOfAllTargetsStoresNoMask) {
  auto rng = make_rng(802);
  TempDir tmp(rng);
  write_dataset(tmp.path, {{{1, 2, 3}, {}}, {{4, 5}, {1, 1}}}, 10, 100);
  ShardReader shard((tmp.path / shard_file_name(0)).string());
  EXPECT_FALSE(shard.has_loss_mask());
  EXPECT_EQ(shard.file_bytes(), kShardHeaderBytes + 8 * 3 + 4 * 5);
}

TEST(DataShard, ATruncatedShardIsAnErrorNamingTheFile) {
  auto rng = make_rng(803);
  TempDir tmp(rng);
  write_dataset(tmp.path, random_docs(rng, 10, 100), 100, 1000);
  fs::path shard = tmp.path / shard_file_name(0);
  std::string bytes = read_bytes(shard);
  for (size_t keep : {size_t(0), size_t(10), size_t(kShardHeaderBytes), bytes.size() - 1 - rng() % 40}) {
    write_bytes(shard, bytes.substr(0, keep));
    std::string message = error_of([&] { ShardReader r(shard.string()); });
    EXPECT_NE(message.find(shard.string()), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
    EXPECT_NE(error_of([&] { TokenDataset d(tmp.path.string()); }), "");
  }
}

TEST(DataShard, BytesBeyondWhatTheHeaderAccountsForAreAnError) {
  auto rng = make_rng(804);
  TempDir tmp(rng);
  write_dataset(tmp.path, random_docs(rng, 5, 100), 100, 1000);
  fs::path shard = tmp.path / shard_file_name(0);
  write_bytes(shard, read_bytes(shard) + "junk");
  EXPECT_NE(error_of([&] { ShardReader r(shard.string()); }).find("more than its header"), std::string::npos);
}

TEST(DataShard, AFileThatIsNotAShardIsAnError) {
  auto rng = make_rng(805);
  TempDir tmp(rng);
  fs::path p = tmp.path / "not-a-shard.bin";
  write_bytes(p, std::string(200, 'x'));
  EXPECT_NE(error_of([&] { ShardReader r(p.string()); }).find("bad magic"), std::string::npos);
}

TEST(DataShard, ATokenIdOutsideTheVocabularyIsAnError) {
  auto rng = make_rng(806);
  TempDir tmp(rng);
  write_dataset(tmp.path, {{{1, 2, 3, 4}, {}}}, 10, 100);
  fs::path shard = tmp.path / shard_file_name(0);
  std::string bytes = read_bytes(shard);
  uint32_t bad = 10 + uint32_t(rng() % 1000);
  std::memcpy(&bytes[kShardHeaderBytes + 8 * 2 + 4 * 2], &bad, 4);  // token 2
  write_bytes(shard, bytes);
  std::string message = error_of([&] { ShardReader r(shard.string()); });
  EXPECT_NE(message.find("outside the vocabulary"), std::string::npos) << message;
  EXPECT_NE(message.find("token 2"), std::string::npos) << message;
}

TEST(DataShard, OffsetsOutOfOrderAreAnError) {
  auto rng = make_rng(807);
  TempDir tmp(rng);
  write_dataset(tmp.path, {{{1, 2}, {}}, {{3, 4}, {}}}, 10, 100);
  fs::path shard = tmp.path / shard_file_name(0);
  std::string bytes = read_bytes(shard);
  uint64_t offset = 5;  // document 0 would end past document 1
  std::memcpy(&bytes[kShardHeaderBytes + 8], &offset, 8);
  write_bytes(shard, bytes);
  EXPECT_NE(error_of([&] { ShardReader r(shard.string()); }).find("out of order"), std::string::npos);
}

TEST(DataShard, AManifestThatDisagreesWithItsShardsIsAnErrorNamingBoth) {
  auto rng = make_rng(808);
  TempDir tmp(rng);
  write_dataset(tmp.path, random_docs(rng, 20, 100), 100, 1000);
  Manifest good = read_manifest(tmp.path.string());
  auto expect_error = [&](Manifest m, const std::string& what) {
    write_manifest(tmp.path.string(), m);
    std::string message = error_of([&] { TokenDataset d(tmp.path.string()); });
    EXPECT_NE(message.find(what), std::string::npos) << message;
    EXPECT_NE(message.find("manifest"), std::string::npos) << message;
  };
  Manifest m = good;
  m.shards[0].tokens += 1;
  expect_error(m, shard_file_name(0));
  m = good;
  m.shards[0].bytes -= 4;
  expect_error(m, shard_file_name(0));
  m = good;
  m.tokens += 7;
  expect_error(m, "totals");
  m = good;
  m.tokenizer.vocab_size = 50;
  expect_error(m, "vocabulary");
  m = good;
  m.shards.push_back({"shard-00099.bin", 1, 1, 100, ""});
  expect_error(m, "missing");
}

TEST(DataShard, ChangedShardBytesAreCaughtByHashVerification) {
  auto rng = make_rng(809);
  TempDir tmp(rng);
  write_dataset(tmp.path, {{{1, 2, 3, 4}, {}}}, 10, 100);
  fs::path shard = tmp.path / shard_file_name(0);
  std::string bytes = read_bytes(shard);
  bytes[kShardHeaderBytes + 8 * 2] ^= 1;  // token 0: 1 -> 0, still in the vocabulary
  write_bytes(shard, bytes);
  EXPECT_NO_THROW(TokenDataset(tmp.path.string(), false));
  EXPECT_NE(error_of([&] { TokenDataset d(tmp.path.string(), true); }).find("content hash"), std::string::npos);
}

TEST(DataShard, AMalformedOrMissingManifestIsAnErrorNamingIt) {
  auto rng = make_rng(810);
  TempDir tmp(rng);
  fs::path manifest = tmp.path / kManifestFile;
  EXPECT_NE(error_of([&] { read_manifest(tmp.path.string()); }).find(manifest.string()), std::string::npos);
  write_bytes(manifest, "{ not json");
  EXPECT_NE(error_of([&] { read_manifest(tmp.path.string()); }).find("not valid JSON"), std::string::npos);
  write_bytes(manifest, R"({"format": "adept-token-shards", "version": 1})");
  EXPECT_NE(error_of([&] { read_manifest(tmp.path.string()); }).find("malformed"), std::string::npos);
  write_bytes(manifest, R"({"format": "something-else"})");
  EXPECT_NE(error_of([&] { read_manifest(tmp.path.string()); }).find("not an adept dataset"), std::string::npos);
}

TEST(DataShard, TheManifestRoundTripsThroughJson) {
  Manifest m;
  m.tokenizer = {"bpe", "/x/tokenizer.json", "fnv1a64:0123456789abcdef", 32000, 1, 2};
  m.options = {{"format", "text"}};
  m.fingerprint = "fnv1a64:00000000000000ff";
  SourceReport s;
  s.path = "/x/a.txt";
  s.format = "text";
  s.bytes = 10;
  s.records = 3;
  s.documents = 2;
  s.tokens = 9;
  s.target_tokens = 8;
  s.issues[int(InputIssue::InvalidUtf8)] = {2, 7};
  m.sources.push_back(s);
  m.shards.push_back({"shard-00000.bin", 2, 9, 140, "fnv1a64:1111111111111111"});
  m.documents = 2;
  m.tokens = 9;
  m.target_tokens = 8;
  nlohmann::json j = manifest_to_json(m);
  EXPECT_EQ(manifest_to_json(manifest_from_json(j, "test")), j);
  EXPECT_EQ(j["sources"][0]["issues"]["invalid_utf8"]["first_line"], 7);
}

TEST(DataShard, Fnv1a64MatchesTheReferenceValues) {
  // From the FNV reference test suite.
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
}

}  // namespace
}  // namespace adept
