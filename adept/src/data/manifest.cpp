#include "data/manifest.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace adept {

using nlohmann::json;

const char* issue_name(InputIssue issue) {
  switch (issue) {
    case InputIssue::InvalidUtf8: return "invalid_utf8";
    case InputIssue::EmptyDocument: return "empty_document";
    case InputIssue::OversizedRecord: return "oversized_record";
    case InputIssue::BadJson: return "bad_json";
    case InputIssue::MissingField: return "missing_field";
    case InputIssue::FieldNotString: return "field_not_string";
    case InputIssue::Count: break;
  }
  return "?";
}

const char* issue_description(InputIssue issue) {
  switch (issue) {
    case InputIssue::InvalidUtf8: return "invalid UTF-8";
    case InputIssue::EmptyDocument: return "empty documents";
    case InputIssue::OversizedRecord: return "records over max_record_bytes";
    case InputIssue::BadJson: return "lines that are not a JSON object";
    case InputIssue::MissingField: return "JSON objects missing a field";
    case InputIssue::FieldNotString: return "JSON fields that are not strings";
    case InputIssue::Count: break;
  }
  return "?";
}

void IssueTally::add(int64_t line, int64_t n) {
  if (n <= 0) return;
  if (count == 0 || (line > 0 && line < first_line)) first_line = line;
  count += n;
}

void IssueTally::merge(const IssueTally& other) {
  if (other.count == 0) return;
  if (count == 0 || other.first_line < first_line) first_line = other.first_line;
  count += other.count;
}

int64_t SourceReport::issue_total() const {
  int64_t n = 0;
  for (const IssueTally& t : issues) n += t.count;
  return n;
}

json manifest_to_json(const Manifest& m) {
  json j;
  j["format"] = kManifestFormat;
  j["version"] = kManifestVersion;
  j["tokenizer"] = {{"kind", m.tokenizer.kind},         {"path", m.tokenizer.path},
                    {"hash", m.tokenizer.hash},         {"vocab_size", m.tokenizer.vocab_size},
                    {"bos_id", m.tokenizer.bos_id},     {"eos_id", m.tokenizer.eos_id}};
  j["options"] = m.options;
  j["fingerprint"] = m.fingerprint;
  j["documents"] = m.documents;
  j["tokens"] = m.tokens;
  j["target_tokens"] = m.target_tokens;
  json sources = json::array();
  for (const SourceReport& s : m.sources) {
    json issues = json::object();
    for (int i = 0; i < kInputIssueCount; ++i)
      if (s.issues[i].count > 0)
        issues[issue_name(InputIssue(i))] = {{"count", s.issues[i].count}, {"first_line", s.issues[i].first_line}};
    sources.push_back({{"path", s.path},
                       {"format", s.format},
                       {"bytes", s.bytes},
                       {"hash", s.hash},
                       {"records", s.records},
                       {"documents", s.documents},
                       {"tokens", s.tokens},
                       {"target_tokens", s.target_tokens},
                       {"issues", issues}});
  }
  j["sources"] = sources;
  json shards = json::array();
  for (const ShardEntry& s : m.shards)
    shards.push_back(
        {{"file", s.file}, {"documents", s.documents}, {"tokens", s.tokens}, {"bytes", s.bytes}, {"hash", s.hash}});
  j["shards"] = shards;
  return j;
}

Manifest manifest_from_json(const json& j, const std::string& where) {
  try {
    if (!j.is_object() || j.value("format", "") != kManifestFormat)
      fail("{}: not an adept dataset manifest (format is not \"{}\")", where, kManifestFormat);
    if (j.at("version").get<int>() != kManifestVersion)
      fail("{}: manifest version {}, this build reads {}", where, j.at("version").dump(), kManifestVersion);
    Manifest m;
    const json& t = j.at("tokenizer");
    m.tokenizer.kind = t.at("kind").get<std::string>();
    m.tokenizer.path = t.at("path").get<std::string>();
    m.tokenizer.hash = t.at("hash").get<std::string>();
    m.tokenizer.vocab_size = t.at("vocab_size").get<int64_t>();
    m.tokenizer.bos_id = t.at("bos_id").get<int32_t>();
    m.tokenizer.eos_id = t.at("eos_id").get<int32_t>();
    m.options = j.at("options");
    m.fingerprint = j.at("fingerprint").get<std::string>();
    m.documents = j.at("documents").get<int64_t>();
    m.tokens = j.at("tokens").get<int64_t>();
    m.target_tokens = j.at("target_tokens").get<int64_t>();
    for (const json& s : j.at("sources")) {
      SourceReport r;
      r.path = s.at("path").get<std::string>();
      r.format = s.at("format").get<std::string>();
      r.bytes = s.at("bytes").get<int64_t>();
      r.hash = s.at("hash").get<std::string>();
      r.records = s.at("records").get<int64_t>();
      r.documents = s.at("documents").get<int64_t>();
      r.tokens = s.at("tokens").get<int64_t>();
      r.target_tokens = s.at("target_tokens").get<int64_t>();
      for (int i = 0; i < kInputIssueCount; ++i) {
        const char* name = issue_name(InputIssue(i));
        if (s.at("issues").contains(name)) {
          const json& tally = s.at("issues").at(name);
          r.issues[i].count = tally.at("count").get<int64_t>();
          r.issues[i].first_line = tally.at("first_line").get<int64_t>();
        }
      }
      m.sources.push_back(std::move(r));
    }
    for (const json& s : j.at("shards")) {
      ShardEntry e;
      e.file = s.at("file").get<std::string>();
      e.documents = s.at("documents").get<int64_t>();
      e.tokens = s.at("tokens").get<int64_t>();
      e.bytes = s.at("bytes").get<int64_t>();
      e.hash = s.at("hash").get<std::string>();
      if (e.file.empty() || e.file.find('/') != std::string::npos)
        fail("{}: shard file name \"{}\" must be a plain name inside the dataset directory", where, e.file);
      m.shards.push_back(std::move(e));
    }
    return m;
  } catch (const json::exception& e) {
    fail("{}: malformed manifest ({})", where, e.what());
  }
}

Manifest read_manifest(const std::string& dir) {
  std::string path = (std::filesystem::path(dir) / kManifestFile).string();
  std::ifstream in(path);
  if (!in) fail("{}: no dataset manifest here (run `adept data prepare` first)", path);
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, false);
  if (j.is_discarded()) fail("{}: the manifest is not valid JSON", path);
  return manifest_from_json(j, path);
}

void write_manifest(const std::string& dir, const Manifest& m) {
  write_file_atomic((std::filesystem::path(dir) / kManifestFile).string(), manifest_to_json(m).dump(2) + "\n");
}

}  // namespace adept
