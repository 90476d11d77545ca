// The Unicode pieces under the tokenizers: NFC, lossy UTF-8, and the hand-written
// pre-tokenizer patterns on the cases that distinguish them. (The tokenizer fixtures
// compare whole pipelines with Hugging Face; these pin the building blocks.)
#include <gtest/gtest.h>

#include "io/pretokenize.hpp"
#include "io/unicode.hpp"

namespace adept {
namespace {

std::vector<std::string> split(std::string_view text, SplitPattern p) {
  std::vector<std::string> out;
  for (std::string_view s : split_pretokens(text, p)) out.emplace_back(s);
  return out;
}

TEST(Nfc, ComposesABaseAndItsCombiningMark) { EXPECT_EQ(nfc("Cafe\u0301"), "Caf\u00e9"); }

TEST(Nfc, ComposesHangulJamoAlgorithmically) { EXPECT_EQ(nfc("\u1100\u1161\u11a8"), "\uac01"); }

TEST(Nfc, ReordersMarksByCombiningClassBeforeComposing) {
  // Dot below (class 220) sorts before ring above (230) whatever the input order, then
  // composes with the a (U+1EA1); the ring has no composite with that and stays.
  EXPECT_EQ(nfc("a\u030a\u0323"), nfc("a\u0323\u030a"));
  EXPECT_EQ(nfc("a\u0323\u030a"), "\u1ea1\u030a");
}

TEST(Nfc, KeepsCompositionExclusionsDecomposed) { EXPECT_EQ(nfc("\u0958"), "\u0915\u093c"); }

TEST(Nfc, LeavesInvalidBytesInPlace) { EXPECT_EQ(nfc("e\xff\u0301"), "e\xff\u0301"); }

TEST(Utf8Lossy, ReplacesEachMaximalInvalidSubsequenceOnce) {
  EXPECT_EQ(utf8_lossy("a\xe2\x82z"), "a\uFFFDz");              // truncated 3-byte sequence: one
  EXPECT_EQ(utf8_lossy("\xf0\x80\x80"), "\uFFFD\uFFFD\uFFFD");  // overlong lead: each byte
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(utf8_lossy("ok \u00e9"), "ok \u00e9");
}

TEST(Pretokenize, Llama3GroupsDigitsByThrees) {
  EXPECT_EQ(split("1234567", SplitPattern::Llama3), (std::vector<std::string>{"123", "456", "7"}));
  EXPECT_EQ(split("1234567", SplitPattern::Qwen2).size(), 7u);
  EXPECT_EQ(split("1234567", SplitPattern::Gpt2), std::vector<std::string>{"1234567"});
}

TEST(Pretokenize, Llama3LetterRunTakesOneLeadingNonLetter) {
  EXPECT_EQ(split("x (hello", SplitPattern::Llama3), (std::vector<std::string>{"x", " (", "hello"}));
  EXPECT_EQ(split("$hello world", SplitPattern::Llama3), (std::vector<std::string>{"$hello", " world"}));
}

TEST(Pretokenize, SpaceRunLeavesItsLastSpaceToTheNextWord) {
  EXPECT_EQ(split("a   b", SplitPattern::Gpt2), (std::vector<std::string>{"a", "  ", " b"}));
  EXPECT_EQ(split("a   ", SplitPattern::Llama3), (std::vector<std::string>{"a", "   "}));
}

TEST(Pretokenize, Llama3NewlinesEndTheWhitespaceRun) {
  EXPECT_EQ(split("a \n\n  b", SplitPattern::Llama3), (std::vector<std::string>{"a", " \n\n", " ", " b"}));
}

TEST(Pretokenize, ContractionsAreCaseInsensitiveOnlyInLlama3) {
  EXPECT_EQ(split("I'M", SplitPattern::Llama3), (std::vector<std::string>{"I", "'M"}));
  EXPECT_EQ(split("I'M", SplitPattern::Gpt2), (std::vector<std::string>{"I", "'", "M"}));
}

TEST(Pretokenize, PatternsAreRecognisedByTheirExactText) {
  EXPECT_EQ(recognize_split_pattern(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"),
            SplitPattern::Gpt2);
  EXPECT_FALSE(recognize_split_pattern(R"(\w+|[^\w\s]+)").has_value());
}

}  // namespace
}  // namespace adept
