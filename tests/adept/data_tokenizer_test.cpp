// `adept data prepare` with real tokenizers: the ids it writes are the ids Hugging Face
// tokenizers gives (tests/fixtures/data/, made by make_tiny_bpe.py), an instruction's
// loss mask falls exactly on its response tokens, and a changed tokenizer file makes
// preparation redo its work.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "data/token_dataset.hpp"
#include "data/tokenizer_source.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::make_rng;

const std::string kFixtures = std::string(ADEPT_SOURCE_DIR) + "/tests/fixtures/data/";

using testing_support::TempDir;

nlohmann::json expected() {
  std::ifstream in(kFixtures + "tiny_bpe_expected.json");
  return nlohmann::json::parse(in);
}

std::vector<int32_t> ids_of(const DocumentView& v) { return std::vector<int32_t>(v.tokens, v.tokens + v.length); }

PrepareOptions options_for(const TempDir& tmp, const std::string& input, InputFormat format) {
  PrepareOptions o;
  o.inputs = {input};
  o.out_dir = (tmp.path / "out").string();
  o.format = format;
  o.show_progress = false;
  o.add_bos = o.add_eos = false;
  return o;
}

TEST(DataTokenizer, BytesNamesTheBuiltInByteTokenizer) {
  NamedTokenizer t = load_named_tokenizer("bytes");
  EXPECT_EQ(t.identity.kind, "bytes");
  EXPECT_EQ(t.identity.vocab_size, 256);
  EXPECT_EQ(t.identity.hash, "");
  EXPECT_EQ(prepare_tokenizer(t).encode("ab"), (std::vector<int32_t>{'a', 'b'}));
}

TEST(DataTokenizer, PreparedDocumentsHaveTheIdsHuggingFaceTokenizersGives) {
  auto rng = make_rng(1001);
  TempDir tmp(rng);
  nlohmann::json ref = expected();
  std::string input = (tmp.path / "texts.jsonl").string();
  {
    std::ofstream out(input);
    for (const auto& t : ref["texts"]) out << nlohmann::json{{"text", t["text"]}}.dump() << "\n";
  }
  NamedTokenizer tok = load_named_tokenizer(kFixtures + "tiny_bpe");  // a model directory
  EXPECT_EQ(tok.identity.kind, "bpe");
  EXPECT_EQ(tok.identity.vocab_size, ref["vocab_size"].get<int64_t>());
  EXPECT_EQ(tok.identity.bos_id, ref["bos_id"].get<int32_t>());
  EXPECT_EQ(tok.identity.eos_id, ref["eos_id"].get<int32_t>());
  PrepareOptions o = options_for(tmp, input, InputFormat::Jsonl);
  o.threads = 2;
  o.chunk_bytes = 64;  // several chunks, so both threads tokenize
  prepare_dataset(o, prepare_tokenizer(tok));
  TokenDataset data(o.out_dir);
  ASSERT_EQ(data.documents(), int64_t(ref["texts"].size()));
  for (int64_t i = 0; i < data.documents(); ++i)
    EXPECT_EQ(ids_of(data.document(i)), ref["texts"][i]["ids"].get<std::vector<int32_t>>()) << "text " << i;

  o.add_bos = o.add_eos = true;
  prepare_dataset(o, prepare_tokenizer(tok));
  TokenDataset with_specials(o.out_dir);
  std::vector<int32_t> first = ids_of(with_specials.document(0));
  EXPECT_EQ(first.front(), ref["bos_id"].get<int32_t>());
  EXPECT_EQ(first.back(), ref["eos_id"].get<int32_t>());
  EXPECT_EQ(int64_t(first.size()), int64_t(ref["texts"][0]["ids"].size()) + 2);
}

TEST(DataTokenizer, TheInstructionMaskFallsExactlyOnTheResponseTokens) {
  auto rng = make_rng(1002);
  TempDir tmp(rng);
  nlohmann::json ref = expected();
  std::string input = (tmp.path / "sft.jsonl").string();
  {
    std::ofstream out(input);
    for (const auto& p : ref["instructions"])
      out << nlohmann::json{{"prompt", p["prompt"]}, {"response", p["response"]}}.dump() << "\n";
  }
  PrepareOptions o = options_for(tmp, input, InputFormat::Instruct);
  o.add_eos = true;
  NamedTokenizer tok = load_named_tokenizer(kFixtures + "tiny_bpe");
  prepare_dataset(o, prepare_tokenizer(tok));
  TokenDataset data(o.out_dir);
  ASSERT_EQ(data.documents(), int64_t(ref["instructions"].size()));
  for (int64_t i = 0; i < data.documents(); ++i) {
    auto prompt = ref["instructions"][i]["prompt_ids"].get<std::vector<int32_t>>();
    auto response = ref["instructions"][i]["response_ids"].get<std::vector<int32_t>>();
    std::vector<int32_t> want = prompt;
    want.insert(want.end(), response.begin(), response.end());
    want.push_back(ref["eos_id"].get<int32_t>());
    DocumentView v = data.document(i);
    ASSERT_EQ(ids_of(v), want) << "instruction " << i;
    ASSERT_NE(v.mask, nullptr);
    for (int64_t j = 0; j < v.length; ++j)
      EXPECT_EQ(v.mask[j], j >= int64_t(prompt.size()) ? 1 : 0) << "instruction " << i << " token " << j;
  }
}

TEST(DataTokenizer, AChangedTokenizerFileMakesPrepareRedoItsWork) {
  auto rng = make_rng(1003);
  TempDir tmp(rng);
  std::string tok_path = (tmp.path / "tokenizer.json").string();
  fs::copy_file(kFixtures + "tiny_bpe/tokenizer.json", tok_path);  // the file alone
  std::string input = (tmp.path / "a.txt").string();
  std::ofstream(input) << "some text";
  PrepareOptions o = options_for(tmp, input, InputFormat::Text);
  EXPECT_FALSE(prepare_dataset(o, prepare_tokenizer(load_named_tokenizer(tok_path))).up_to_date);
  EXPECT_TRUE(prepare_dataset(o, prepare_tokenizer(load_named_tokenizer(tok_path))).up_to_date);
  std::ofstream(tok_path, std::ios::app) << "\n";  // same tokenizer, other bytes: redone to be safe
  EXPECT_FALSE(prepare_dataset(o, prepare_tokenizer(load_named_tokenizer(tok_path))).up_to_date);
  EXPECT_FALSE(prepare_dataset(o, prepare_tokenizer(load_named_tokenizer("bytes"))).up_to_date);
}

TEST(DataTokenizer, AMissingTokenizerIsAnErrorNamingIt) {
  try {
    load_named_tokenizer("/nonexistent/tokenizer.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace adept
