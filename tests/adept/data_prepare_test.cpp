// `adept data prepare` as a library call: every input format becomes the documents it
// should, instruction prompts are masked out of the loss, each kind of bad input is
// counted and reported against its file and line, the output does not depend on the
// thread count, and a second run on unchanged inputs does nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "data/packed_loader.hpp"
#include "data/prepare.hpp"
#include "data/utf8.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::make_rng;

using testing_support::TempDir;

// One token per byte, BOS 256, EOS 257: token counts and mask positions follow from
// byte lengths, which keeps the expectations independent of any real tokenizer.
PrepareTokenizer byte_tokenizer() {
  PrepareTokenizer t;
  t.encode = [](std::string_view text) {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  };
  t.identity = {"test-bytes", "", "", 258, 256, 257};
  return t;
}

std::string write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
  return p.string();
}

PrepareOptions options_for(const TempDir& tmp, std::vector<std::string> inputs, InputFormat format) {
  PrepareOptions o;
  o.inputs = std::move(inputs);
  o.out_dir = (tmp.path / "out").string();
  o.format = format;
  o.show_progress = false;
  o.add_eos = false;
  return o;
}

std::string document_text(const TokenDataset& d, int64_t i) {
  DocumentView v = d.document(i);
  std::string s;
  for (int64_t j = 0; j < v.length; ++j) s += v.tokens[j] < 256 ? char(v.tokens[j]) : '#';
  return s;
}

std::vector<std::string> all_documents(const std::string& dir) {
  TokenDataset d(dir, true);
  std::vector<std::string> out;
  for (int64_t i = 0; i < d.documents(); ++i) out.push_back(document_text(d, i));
  return out;
}

const IssueTally& issue(const PrepareResult& r, size_t source, InputIssue i) {
  return r.manifest.sources.at(source).issues[int(i)];
}

TEST(DataPrepare, PlainTextIsOneDocumentPerFile) {
  auto rng = make_rng(901);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "a.txt", "first file\n\nstill first\n");
  std::string b = write_file(tmp.path / "b.txt", "second");
  PrepareOptions o = options_for(tmp, {a, b}, InputFormat::Text);
  o.add_eos = true;
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  EXPECT_FALSE(r.up_to_date);
  EXPECT_EQ(all_documents(o.out_dir), (std::vector<std::string>{"first file\n\nstill first\n#", "second#"}));
  EXPECT_EQ(r.manifest.sources[1].tokens, 7);
  EXPECT_EQ(r.manifest.sources[1].target_tokens, 6);  // every token but the first is predicted
}

TEST(DataPrepare, PlainTextWithBosStoresNoLossMask) {
  auto rng = make_rng(915);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "a.txt", "text");
  PrepareOptions o = options_for(tmp, {a}, InputFormat::Text);
  o.add_bos = o.add_eos = true;
  prepare_dataset(o, byte_tokenizer());
  TokenDataset d(o.out_dir);
  EXPECT_EQ(document_text(d, 0), "#text#");
  EXPECT_EQ(d.document(0).mask, nullptr);
}

TEST(DataPrepare, PlainTextBlocksAreSeparatedByBlankLines) {
  auto rng = make_rng(902);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "a.txt", "\n\none\ntwo\n\n \t\nthree\r\n\r\n  four\n\n");
  PrepareOptions o = options_for(tmp, {a}, InputFormat::Text);
  o.split = TextSplit::Blocks;
  prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(all_documents(o.out_dir), (std::vector<std::string>{"one\ntwo", "three\r", "  four"}));
}

TEST(DataPrepare, JsonlTakesTheTextField) {
  auto rng = make_rng(903);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "a.jsonl", "{\"text\": \"alpha\", \"id\": 1}\n\n{\"body\": \"x\", \"text\": \"b\\u00e9ta\"}\n");
  PrepareOptions o = options_for(tmp, {a}, InputFormat::Jsonl);
  prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(all_documents(o.out_dir), (std::vector<std::string>{"alpha", "b\xC3\xA9ta"}));
  o.text_field = "body";
  o.force = true;
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(all_documents(o.out_dir), (std::vector<std::string>{"x"}));
  EXPECT_EQ(issue(r, 0, InputIssue::MissingField).count, 1);
}

TEST(DataPrepare, InstructionPromptTokensAreMaskedOutOfTheLoss) {
  auto rng = make_rng(904);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "sft.jsonl", "{\"prompt\": \"2+2?\", \"response\": \"4\"}\n"
                                                     "{\"prompt\": \"\", \"response\": \"hello\"}\n");
  PrepareOptions o = options_for(tmp, {a}, InputFormat::Instruct);
  o.add_bos = o.add_eos = true;
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  TokenDataset d(o.out_dir);
  ASSERT_EQ(d.documents(), 2);
  // BOS + "User: 2+2?\nAssistant: " is context; "4" + EOS are the targets.
  const std::string prompt = "User: 2+2?\nAssistant: ";
  EXPECT_EQ(document_text(d, 0), "#" + prompt + "4#");
  DocumentView v = d.document(0);
  ASSERT_NE(v.mask, nullptr);
  // (BOS, token 0, is never predicted: its mask entry does not matter.)
  for (int64_t j = 1; j < v.length; ++j) EXPECT_EQ(v.mask[j], j >= 1 + int64_t(prompt.size())) << "token " << j;
  EXPECT_EQ(r.manifest.sources[0].target_tokens, 2 + 6);

  // Through the loader: the only targets are the response and EOS.
  PackedLoader loader({{std::make_shared<const TokenDataset>(o.out_dir), 1.0}}, {1, v.length, 1, 0.0, 0});
  bool found = false;
  for (int k = 0; k < 2 && !found; ++k) {
    TokenBatch b = loader.next_batch();
    if (b.tokens[1] != 'U' || b.tokens[7] != '2') continue;
    found = true;
    std::vector<int32_t> counted;
    for (int32_t t : b.targets)
      if (t != kIgnoreIndex) counted.push_back(t);
    EXPECT_EQ(counted, (std::vector<int32_t>{'4', 257}));
  }
  EXPECT_TRUE(found);
}

TEST(DataPrepare, TheInstructionTemplateIsConfigurable) {
  auto rng = make_rng(905);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "sft.jsonl", "{\"q\": \"hi\", \"a\": \"yo\"}\n");
  PrepareOptions o = options_for(tmp, {a}, InputFormat::Instruct);
  o.prompt_field = "q";
  o.response_field = "a";
  o.instruct_template = "<q>{prompt}</q>{response}</a>";
  prepare_dataset(o, byte_tokenizer());
  TokenDataset d(o.out_dir);
  EXPECT_EQ(document_text(d, 0), "<q>hi</q>yo</a>");
  DocumentView v = d.document(0);
  for (int64_t j = 0; j < v.length; ++j) EXPECT_EQ(v.mask[j], j >= 9) << "token " << j;
  o.instruct_template = "{response} before {prompt}";
  EXPECT_THROW(prepare_dataset(o, byte_tokenizer()), Error);
}

TEST(DataPrepare, InvalidUtf8IsRepairedAndReportedWithItsLine) {
  auto rng = make_rng(906);
  TempDir tmp(rng);
  std::string clean = write_file(tmp.path / "clean.txt", "fine\n");
  std::string bad = write_file(tmp.path / "bad.txt", "ok\n\nbad \xFF byte\n\nok again\n\nalso \xC3\x28 bad\n");
  PrepareOptions o = options_for(tmp, {clean, bad}, InputFormat::Text);
  o.split = TextSplit::Blocks;
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(issue(r, 0, InputIssue::InvalidUtf8).count, 0);
  EXPECT_EQ(issue(r, 1, InputIssue::InvalidUtf8).count, 2);
  EXPECT_EQ(issue(r, 1, InputIssue::InvalidUtf8).first_line, 3);
  std::vector<std::string> docs = all_documents(o.out_dir);
  ASSERT_EQ(docs.size(), 5u);
  EXPECT_EQ(docs[2], "bad \xEF\xBF\xBD byte");
  EXPECT_NE(prepare_report(r.manifest).find("invalid_utf8: 2"), std::string::npos) << prepare_report(r.manifest);
}

TEST(DataPrepare, InvalidUtf8IsSkippedWhenAskedAndStillReported) {
  auto rng = make_rng(907);
  TempDir tmp(rng);
  std::string bad = write_file(tmp.path / "bad.jsonl", "{\"text\": \"a\"}\n{\"text\": \"\xFF\"}\n");
  PrepareOptions o = options_for(tmp, {bad}, InputFormat::Jsonl);
  o.skip_invalid_utf8 = true;
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(all_documents(o.out_dir), (std::vector<std::string>{"a"}));
  EXPECT_EQ(issue(r, 0, InputIssue::InvalidUtf8).count, 1);
  EXPECT_EQ(issue(r, 0, InputIssue::InvalidUtf8).first_line, 2);
  EXPECT_EQ(r.manifest.sources[0].records, 2);
}

TEST(DataPrepare, EmptyDocumentsAreSkippedAndCounted) {
  auto rng = make_rng(908);
  TempDir tmp(rng);
  std::string empty = write_file(tmp.path / "empty.txt", " \n\t\n");
  std::string jsonl = write_file(tmp.path / "e.jsonl", "{\"text\": \"\"}\n{\"text\": \"x\"}\n{\"text\": \"  \\n\"}\n");
  PrepareOptions o = options_for(tmp, {empty}, InputFormat::Text);
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(issue(r, 0, InputIssue::EmptyDocument).count, 1);
  EXPECT_EQ(r.manifest.documents, 0);
  o = options_for(tmp, {jsonl}, InputFormat::Jsonl);
  r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(issue(r, 0, InputIssue::EmptyDocument).count, 2);
  EXPECT_EQ(issue(r, 0, InputIssue::EmptyDocument).first_line, 1);
  EXPECT_EQ(r.manifest.documents, 1);
}

TEST(DataPrepare, EnormousLinesAreSkippedWithoutBeingReadWhole) {
  auto rng = make_rng(909);
  TempDir tmp(rng);
  const int64_t limit = 1000;
  std::string huge(5 * limit + int64_t(rng() % 1000), 'z');
  std::string jsonl =
      write_file(tmp.path / "a.jsonl", "{\"text\": \"a\"}\n{\"text\": \"" + huge + "\"}\n{\"text\": \"b\"}\n" + huge);
  std::string text = write_file(tmp.path / "b.txt", "small\n\n" + huge + "\nstill the same block\n\nlast\n");
  PrepareOptions o = options_for(tmp, {jsonl}, InputFormat::Jsonl);
  o.max_record_bytes = limit;
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(all_documents(o.out_dir), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(issue(r, 0, InputIssue::OversizedRecord).count, 2);
  EXPECT_EQ(issue(r, 0, InputIssue::OversizedRecord).first_line, 2);

  o = options_for(tmp, {text}, InputFormat::Text);
  o.split = TextSplit::Blocks;
  o.max_record_bytes = limit;
  r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(all_documents(o.out_dir), (std::vector<std::string>{"small", "last"}));
  EXPECT_EQ(issue(r, 0, InputIssue::OversizedRecord).count, 1);
  EXPECT_EQ(issue(r, 0, InputIssue::OversizedRecord).first_line, 3);

  o.split = TextSplit::File;  // the whole file is one document, over the limit
  r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(issue(r, 0, InputIssue::OversizedRecord).count, 1);
  EXPECT_EQ(r.manifest.documents, 0);
}

TEST(DataPrepare, BadJsonMissingFieldsAndNonStringFieldsAreReportedPerFile) {
  auto rng = make_rng(910);
  TempDir tmp(rng);
  std::string good = write_file(tmp.path / "good.jsonl", "{\"prompt\": \"p\", \"response\": \"r\"}\n");
  std::string bad = write_file(tmp.path / "bad.jsonl",
                               "{\"prompt\": \"p\", \"response\": \"r\"}\n"  // 1: fine
                               "{\"prompt\": \"p\"}\n"                       // 2: missing response
                               "not json at all\n"                           // 3
                               "[1, 2]\n"                                    // 4: not an object
                               "{\"prompt\": 5, \"response\": \"r\"}\n"      // 5: not a string
                               "{\"prompt\": \"p\", \"respo\n");             // 6: truncated line
  PrepareOptions o = options_for(tmp, {good, bad}, InputFormat::Instruct);
  PrepareResult r = prepare_dataset(o, byte_tokenizer());
  EXPECT_EQ(r.manifest.sources[0].issue_total(), 0);
  EXPECT_EQ(issue(r, 1, InputIssue::MissingField).count, 1);
  EXPECT_EQ(issue(r, 1, InputIssue::MissingField).first_line, 2);
  EXPECT_EQ(issue(r, 1, InputIssue::BadJson).count, 3);
  EXPECT_EQ(issue(r, 1, InputIssue::BadJson).first_line, 3);
  EXPECT_EQ(issue(r, 1, InputIssue::FieldNotString).count, 1);
  EXPECT_EQ(issue(r, 1, InputIssue::FieldNotString).first_line, 5);
  EXPECT_EQ(r.manifest.sources[1].records, 6);
  EXPECT_EQ(r.manifest.sources[1].documents, 1);
  // The report and the manifest on disk say the same.
  std::string report = prepare_report(r.manifest);
  EXPECT_NE(report.find("bad_json: 3"), std::string::npos) << report;
  EXPECT_EQ(read_manifest(o.out_dir).sources[1].issues[int(InputIssue::BadJson)].count, 3);
}

TEST(DataPrepare, RerunningOnUnchangedInputsDoesNothing) {
  auto rng = make_rng(911);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "a.txt", "one\n\ntwo\n");
  PrepareOptions o = options_for(tmp, {a}, InputFormat::Text);
  o.split = TextSplit::Blocks;
  PrepareResult first = prepare_dataset(o, byte_tokenizer());
  fs::path shard = fs::path(o.out_dir) / first.manifest.shards[0].file;
  auto written = fs::last_write_time(shard);
  fs::last_write_time(shard, written - std::chrono::hours(1));  // so any rewrite shows

  PrepareResult second = prepare_dataset(o, byte_tokenizer());
  EXPECT_TRUE(second.up_to_date);
  EXPECT_EQ(fs::last_write_time(shard), written - std::chrono::hours(1));
  EXPECT_EQ(manifest_to_json(second.manifest), manifest_to_json(first.manifest));

  write_file(a, "one\n\ntwo\n\nthree\n");  // changed content: redone
  PrepareResult third = prepare_dataset(o, byte_tokenizer());
  EXPECT_FALSE(third.up_to_date);
  EXPECT_EQ(third.manifest.documents, 3);
  o.add_eos = true;  // changed options: redone
  EXPECT_FALSE(prepare_dataset(o, byte_tokenizer()).up_to_date);
  PrepareTokenizer other = byte_tokenizer();
  other.identity.hash = "fnv1a64:0000000000000001";  // another tokenizer: redone
  EXPECT_FALSE(prepare_dataset(o, other).up_to_date);
  fs::remove(shard);  // a missing shard: redone
  EXPECT_FALSE(prepare_dataset(o, other).up_to_date);
  EXPECT_TRUE(prepare_dataset(o, other).up_to_date);
}

TEST(DataPrepare, TheOutputIsTheSameForAnyThreadCountAndChunkSize) {
  auto rng = make_rng(912);
  TempDir tmp(rng);
  std::vector<std::string> inputs;
  for (int f = 0; f < 3; ++f) {
    std::string text;
    for (int d = 0; d < 200; ++d) {
      for (int64_t n = 1 + int64_t(rng() % 80); n > 0; --n) text += char('a' + rng() % 26);
      text += "\n\n";
    }
    inputs.push_back(write_file(tmp.path / ("in" + std::to_string(f) + ".txt"), text));
  }
  std::vector<std::string> hashes[2];
  for (int run = 0; run < 2; ++run) {
    PrepareOptions o = options_for(tmp, inputs, InputFormat::Text);
    o.split = TextSplit::Blocks;
    o.out_dir = (tmp.path / ("out" + std::to_string(run))).string();
    o.threads = run == 0 ? 1 : 3;
    o.chunk_bytes = run == 0 ? 1 << 20 : 1 + int64_t(rng() % 500);
    o.shard_tokens = 2000;
    PrepareResult r = prepare_dataset(o, byte_tokenizer());
    EXPECT_GT(r.manifest.shards.size(), 2u);
    EXPECT_EQ(r.manifest.documents, 600);
    for (const ShardEntry& e : r.manifest.shards) hashes[run].push_back(e.hash);
  }
  EXPECT_EQ(hashes[0], hashes[1]);
}

TEST(DataPrepare, ATokenizerIdOutsideItsVocabularyIsAnErrorNotACrash) {
  auto rng = make_rng(913);
  TempDir tmp(rng);
  std::string a = write_file(tmp.path / "a.txt", "text");
  PrepareTokenizer broken = byte_tokenizer();
  broken.encode = [](std::string_view) { return std::vector<int32_t>{1, 9999}; };
  PrepareOptions o = options_for(tmp, {a}, InputFormat::Text);
  o.threads = 2;
  try {
    prepare_dataset(o, broken);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("9999"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(a), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(fs::path(o.out_dir) / kManifestFile));
}

TEST(DataPrepare, AMissingInputFileIsAnErrorNamingIt) {
  auto rng = make_rng(914);
  TempDir tmp(rng);
  PrepareOptions o = options_for(tmp, {(tmp.path / "nope.txt").string()}, InputFormat::Text);
  try {
    prepare_dataset(o, byte_tokenizer());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.txt"), std::string::npos) << e.what();
  }
}

TEST(DataPrepare, Utf8RepairFollowsTheUnicodeBestPractice) {
  // Unicode 15, section 3.9, table 3-8: each maximal ill-formed subpart is one U+FFFD.
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(repair_utf8("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + R + R + R + "b" + R + "c" + R + R + "d");
  EXPECT_EQ(repair_utf8("\xED\xA0\x80"), R + R + R);  // a surrogate
  EXPECT_EQ(repair_utf8("\xC0\xAF"), R + R);          // overlong
  EXPECT_EQ(repair_utf8("\xF4\x90\x80\x80"), R + R + R + R);  // above U+10FFFF
  EXPECT_TRUE(is_valid_utf8("plain ascii, then \xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"));
  EXPECT_EQ(find_invalid_utf8("0123456789abcdef\xFF"), 16u);
  EXPECT_EQ(find_invalid_utf8("\xE2\x82"), 0u);  // truncated at the end
}

}  // namespace
}  // namespace adept
