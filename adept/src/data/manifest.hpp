// The manifest of a prepared dataset (manifest.json beside its shards): what went in
// (input files with their sizes, content hashes and per-file counts of bad input), how
// (the options and the tokenizer's identity), and what came out (the shards with their
// counts, sizes and hashes). `adept data prepare` compares it to decide whether there is
// anything to do; the loader compares it with the shards it maps.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace adept {

inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kManifestFormat = "adept-token-shards";
inline constexpr int kManifestVersion = 1;

// Kinds of bad input, counted per input file. Each is reported, none is fatal.
enum class InputIssue {
  InvalidUtf8,      // bytes that are not UTF-8 (the record is repaired or skipped: an option)
  EmptyDocument,    // nothing but white space (skipped)
  OversizedRecord,  // a line or document over max_record_bytes (skipped, never read whole)
  BadJson,          // a JSONL line that does not parse, or is not an object (skipped)
  MissingField,     // a JSON object without the text / prompt / response field (skipped)
  FieldNotString,   // the field is there but is not a string (skipped)
  Count
};
inline constexpr int kInputIssueCount = int(InputIssue::Count);
const char* issue_name(InputIssue issue);         // "invalid_utf8", ...
const char* issue_description(InputIssue issue);  // "invalid UTF-8", ...

struct IssueTally {
  int64_t count = 0;
  int64_t first_line = 0;  // 1-based line of the first occurrence (0: none)

  void add(int64_t line, int64_t n = 1);
  void merge(const IssueTally& other);
};

struct SourceReport {
  std::string path;
  std::string format;  // text | jsonl | instruct
  int64_t bytes = 0;
  std::string hash;
  int64_t records = 0;        // documents found in the file, bad ones included
  int64_t documents = 0;      // documents written
  int64_t tokens = 0;
  int64_t target_tokens = 0;  // tokens predicted in training: mask 1, not first in their document
  std::array<IssueTally, kInputIssueCount> issues{};

  int64_t issue_total() const;
};

struct ShardEntry {
  std::string file;  // relative to the dataset directory
  int64_t documents = 0, tokens = 0, bytes = 0;
  std::string hash;
};

struct TokenizerIdentity {
  std::string kind;  // e.g. "bpe", "sentencepiece", "bytes"
  std::string path;  // the file it was loaded from (empty for built-in ones)
  std::string hash;  // content hash of that file (empty for built-in ones)
  int64_t vocab_size = 0;
  int32_t bos_id = -1, eos_id = -1;
};

struct Manifest {
  TokenizerIdentity tokenizer;
  nlohmann::json options = nlohmann::json::object();  // PrepareOptions as JSON
  std::string fingerprint;  // of options + tokenizer + inputs: equal means nothing to redo
  std::vector<SourceReport> sources;
  std::vector<ShardEntry> shards;
  int64_t documents = 0, tokens = 0, target_tokens = 0;
};

nlohmann::json manifest_to_json(const Manifest& m);
// `where` names the file in error messages.
Manifest manifest_from_json(const nlohmann::json& j, const std::string& where);

// <dir>/manifest.json. read_manifest throws adept::Error naming the file when it is
// missing or malformed; write_manifest writes it atomically.
Manifest read_manifest(const std::string& dir);
void write_manifest(const std::string& dir, const Manifest& m);

}  // namespace adept
