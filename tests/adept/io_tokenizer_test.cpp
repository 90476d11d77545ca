// Tokenizers: ids and decodes equal to the reference implementations' (Hugging Face
// `tokenizers`, `sentencepiece`) on varied text, recorded by
// tools/fixtures/make_tokenizer_fixtures.py; loading picks the right kind and BOS/EOS;
// malformed tokenizer.json names the file and the field.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "io/bpe_tokenizer.hpp"
#include "io/sentencepiece_tokenizer.hpp"
#include "io/tokenizer.hpp"
#include "io/tokenizer_json.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
const std::string kFixtures = std::string(ADEPT_SOURCE_DIR) + "/tests/fixtures/tokenizer";
#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

json expected(const std::string& variant) { return json::parse(read_text(kFixtures + "/" + variant + "/expected.json")); }

// Printable form of a text for failure messages.
std::string show(const std::string& s) { return json(s).dump(); }

class HfTokenizerFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(HfTokenizerFixture, EncodesAsHuggingFaceTokenizers) {
  auto tok = BpeTokenizer::from_file(kFixtures + "/" + GetParam() + "/tokenizer.json");
  json e = expected(GetParam());
  EXPECT_EQ(tok->vocab_size(), e["vocab_size"].get<int64_t>());
  for (const json& c : e["cases"]) {
    std::string text = c["text"];
    EXPECT_EQ(tok->encode(text), c["ids"].get<std::vector<int32_t>>()) << show(text);
  }
}

TEST_P(HfTokenizerFixture, DecodesAsHuggingFaceTokenizers) {
  auto tok = BpeTokenizer::from_file(kFixtures + "/" + GetParam() + "/tokenizer.json");
  for (const json& c : expected(GetParam())["cases"]) {
    auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>()) << show(c["text"]);
    EXPECT_EQ(tok->decode(ids, true), c["decoded_skip_special"].get<std::string>()) << show(c["text"]);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, HfTokenizerFixture, ::testing::Values("llama3", "qwen2", "gpt2", "llama2", "mistral"));

TEST(ByteLevelBpe, DecodeInvertsEncodeOnAnyText) {
  auto tok = BpeTokenizer::from_file(kFixtures + "/llama3/tokenizer.json");
  for (const json& c : expected("llama3")["cases"]) {
    std::string text = c["text"];
    EXPECT_EQ(tok->decode(tok->encode(text)), text) << show(text);
  }
}

TEST(ByteLevelBpe, InvalidUtf8SurvivesEncodeAndDecodesAsReplacementCharacters) {
  auto tok = BpeTokenizer::from_file(kFixtures + "/gpt2/tokenizer.json");
  std::string text = "ok \xff\xfe bytes \xe2\x82";
  std::vector<int32_t> ids = tok->encode(text);
  EXPECT_FALSE(ids.empty());
  // Hugging Face's ByteLevel decoder is lossy on invalid UTF-8 (from_utf8_lossy).
  EXPECT_EQ(tok->decode(ids), "ok \xEF\xBF\xBD\xEF\xBF\xBD bytes \xEF\xBF\xBD");
}

TEST(ByteLevelBpe, DecodingAnIdOutsideTheVocabularyIsAnError) {
  auto tok = BpeTokenizer::from_file(kFixtures + "/gpt2/tokenizer.json");
  std::vector<int32_t> ids = {5, 100000};
  try {
    tok->decode(ids);
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "token id 100000: out of range (vocab size 600)");
  }
}

TEST(SentencePieceModel, EncodesAndDecodesAsSentencePiece) {
  SentencePieceTokenizer tok(kFixtures + "/sentencepiece/tokenizer.model");
  json e = expected("sentencepiece");
  EXPECT_EQ(tok.vocab_size(), e["vocab_size"].get<int64_t>());
  EXPECT_EQ(tok.bos_id(), e["bos_id"].get<int32_t>());
  EXPECT_EQ(tok.eos_id(), e["eos_id"].get<int32_t>());
  for (const json& c : e["cases"]) {
    std::string text = c["text"];
    auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text), ids) << show(text);
    EXPECT_EQ(tok.decode(ids), c["decoded"].get<std::string>()) << show(text);
  }
}

TEST(SentencePieceModel, ControlTokensDecodeAsTheirTextUnlessSkipped) {
  SentencePieceTokenizer tok(kFixtures + "/sentencepiece/tokenizer.model");
  std::vector<int32_t> ids = tok.encode("Hello");
  ids.insert(ids.begin(), tok.bos_id());
  EXPECT_EQ(tok.decode(ids), "<s>Hello");
  EXPECT_EQ(tok.decode(ids, true), "Hello");
}

TEST(ByteTokenizer, OneTokenPerByteAndLossless) {
  auto tok = make_byte_tokenizer();
  std::string text = "h\xc3\xa9\xff\n";
  std::vector<int32_t> ids = tok->encode(text);
  EXPECT_EQ(ids, (std::vector<int32_t>{'h', 0xc3, 0xa9, 0xff, '\n'}));
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_EQ(tok->bos_id(), -1);
}

// --- load_tokenizer ------------------------------------------------------------------

TEST(LoadTokenizer, Llama3StyleDirectoryGivesBpeWithBosFromItsConfig) {
  auto tok = load_tokenizer(kFixtures + "/llama3");
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->bos_id(), *tok->token_to_id("<|begin_of_text|>"));
  EXPECT_EQ(tok->eos_id(), *tok->token_to_id("<|end_of_text|>"));
  EXPECT_TRUE(tok->special_ids().add_bos);  // from the post_processor template
  EXPECT_EQ(tok->special_tokens().size(), 3u);
}

TEST(LoadTokenizer, Qwen2StyleDirectoryHasNoBos) {
  auto tok = load_tokenizer(kFixtures + "/qwen2");
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_FALSE(tok->special_ids().add_bos);
  EXPECT_EQ(tok->eos_id(), *tok->token_to_id("<|endoftext|>"));
}

TEST(LoadTokenizer, TokenizerModelGivesSentencePiece) {
  auto tok = load_tokenizer(kFixtures + "/sentencepiece");
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_TRUE(tok->special_ids().add_bos);
}

TEST(LoadTokenizer, GenerationConfigSuppliesEosWhenTheTokenizerConfigDoesNot) {
  fs::path dir = fs::temp_directory_path() / ("adept_io_tok_gen_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(kFixtures + "/gpt2/tokenizer.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  { std::ofstream(dir / "generation_config.json") << R"({"bos_token_id": 0, "eos_token_id": [0, 5]})"; }
  auto tok = load_tokenizer(dir.string());
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_id(), 0);
  fs::remove_all(dir);
}

TEST(LoadTokenizer, UnknownEosTokenInTheConfigIsNamed) {
  fs::path dir = fs::temp_directory_path() / ("adept_io_tok_eos_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(kFixtures + "/gpt2/tokenizer.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  { std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": {"content": "<|nope|>"}})"; }
  try {
    load_tokenizer(dir.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tokenizer_config.json: field 'eos_token' is '<|nope|>', which is not a token");
  }
  fs::remove_all(dir);
}

TEST(LoadTokenizer, DirectoryWithoutATokenizerIsAnError) {
  try {
    load_tokenizer("/nonexistent/model");
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "/nonexistent/model: no tokenizer.json or tokenizer.model");
  }
}

// --- malformed tokenizer.json --------------------------------------------------------

// The llama3 fixture with one edit applied, parsed; returns the error message.
template <typename Edit>
std::string error_after(Edit edit) {
  json doc = json::parse(read_text(kFixtures + "/llama3/tokenizer.json"));
  edit(doc);
  try {
    parse_tokenizer_json(doc.dump(), "tokenizer.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerJsonMalformed, NotJson) {
  try {
    parse_tokenizer_json("{\"model\": ", "tokenizer.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tokenizer.json: not valid JSON");
  }
}

TEST(TokenizerJsonMalformed, MergeOfTokensOutsideTheVocabulary) {
  EXPECT_CONTAINS(error_after([](json& d) { d["model"]["merges"][3] = {"zz", "qq"}; }),
                  "tokenizer.json: field 'model.merges[3]' uses 'zz', which is not in model.vocab");
}

TEST(TokenizerJsonMalformed, MergeStringWithoutASpace) {
  EXPECT_CONTAINS(error_after([](json& d) { d["model"]["merges"][0] = "ab"; }),
                  "field 'model.merges[0]' 'ab' must be two tokens separated by one space");
}

TEST(TokenizerJsonMalformed, MissingVocabulary) {
  EXPECT_CONTAINS(error_after([](json& d) { d["model"].erase("vocab"); }), "field 'model.vocab' must be an object");
}

TEST(TokenizerJsonMalformed, UnsupportedPreTokenizerNamesItsPath) {
  EXPECT_CONTAINS(error_after([](json& d) { d["pre_tokenizer"]["pretokenizers"][1]["type"] = "Whitespace"; }),
                  "field 'pre_tokenizer.pretokenizers[1].type' 'Whitespace' is not supported");
}

TEST(TokenizerJsonMalformed, UnknownSplitRegexIsRefused) {
  EXPECT_CONTAINS(error_after([](json& d) { d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+"; }),
                  "field 'pre_tokenizer.pretokenizers[0].pattern.Regex' '\\w+' is not one of the supported");
}

TEST(TokenizerJsonMalformed, AddedTokenWithoutAnIntegerId) {
  EXPECT_CONTAINS(error_after([](json& d) { d["added_tokens"][1]["id"] = "7"; }),
                  "field 'added_tokens[1].id' must be an integer, got \"7\"");
}

TEST(TokenizerJsonMalformed, NonBpeModelIsRefused) {
  EXPECT_CONTAINS(error_after([](json& d) { d["model"]["type"] = "Unigram"; }),
                  "field 'model.type' 'Unigram' is not supported (supported: BPE)");
}

TEST(TokenizerJsonMalformed, FileErrorsNameThePath) {
  fs::path p = fs::temp_directory_path() / ("adept_io_tok_bad_" + std::to_string(::getpid()) + ".json");
  { std::ofstream(p) << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}})"; }
  try {
    BpeTokenizer::from_file(p.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), p.string() + ": field 'model.merges[0]' uses 'aa'");
  }
  fs::remove(p);
}

}  // namespace
}  // namespace adept
