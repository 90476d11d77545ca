#include "io/tokenizer_json.hpp"

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace adept {

namespace {

using json = nlohmann::json;

// Token ids index dense tables; real vocabularies stay far below this (the largest
// around 256k), and a hostile id must not make us allocate gigabytes.
constexpr int64_t kMaxTokenId = (1 << 22) - 1;

// A position in the document, for messages: "model.merges[3]".
class Field {
 public:
  Field(const json& value, const std::string& file, std::string path)
      : v_(value), file_(file), path_(std::move(path)) {}

  const json& value() const { return v_; }
  const std::string& path() const { return path_; }
  [[noreturn]] void bad(std::string_view what) const { fail("{}: field '{}' {}", file_, path_, what); }

  bool is_null() const { return v_.is_null(); }
  bool has(const char* key) const { return v_.is_object() && v_.contains(key) && !v_.at(key).is_null(); }
  Field at(const char* key) const {
    if (!v_.is_object()) bad(fmt::format("must be an object, got {}", v_.type_name()));
    static const json kNull;
    auto it = v_.find(key);
    return Field(it == v_.end() ? kNull : *it, file_, path_.empty() ? key : path_ + "." + key);
  }
  Field at(size_t i) const { return Field(v_.at(i), file_, fmt::format("{}[{}]", path_, i)); }
  size_t size() const { return v_.size(); }

  std::string string() const {
    if (!v_.is_string()) bad(fmt::format("must be a string, got {}", short_dump()));
    return v_.get<std::string>();
  }
  std::string string_or(const std::string& fallback) const { return is_null() ? fallback : string(); }
  bool boolean_or(bool fallback) const {
    if (is_null()) return fallback;
    if (!v_.is_boolean()) bad(fmt::format("must be true or false, got {}", short_dump()));
    return v_.get<bool>();
  }
  int64_t integer() const {
    if (!v_.is_number_integer()) bad(fmt::format("must be an integer, got {}", short_dump()));
    return v_.get<int64_t>();
  }
  int32_t token_id() const {
    int64_t id = integer();
    if (id < 0 || id > kMaxTokenId) bad(fmt::format("is {}, not a token id in [0, {}]", id, kMaxTokenId));
    return int32_t(id);
  }
  void require_array() const {
    if (!v_.is_array()) bad(fmt::format("must be a list, got {}", v_.type_name()));
  }
  void require_object() const {
    if (!v_.is_object()) bad(fmt::format("must be an object, got {}", v_.type_name()));
  }
  std::string type() const {
    Field t = at("type");
    if (t.is_null()) bad("has no 'type'");
    return t.string();
  }

 private:
  std::string short_dump() const {
    std::string s = v_.dump();
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
  }
  const json& v_;
  const std::string& file_;
  std::string path_;
};

void unsupported(const Field& type_field, const std::string& type, std::string_view supported) {
  type_field.bad(fmt::format("'{}' is not supported (supported: {})", type, supported));
}

// Only the patterns we implement by hand (pretokenize.hpp); a Split by a plain string
// is not used by these model families.
SplitPattern split_pattern(const Field& pattern) {
  pattern.require_object();
  if (pattern.has("String")) pattern.at("String").bad("(a Split by a plain string) is not supported");
  std::string regex = pattern.at("Regex").string();
  auto p = recognize_split_pattern(regex);
  if (!p)
    pattern.at("Regex").bad(fmt::format("'{}' is not one of the supported pre-tokenizer patterns (GPT-2, Llama-3, Qwen2)",
                                        regex.size() > 80 ? regex.substr(0, 77) + "..." : regex));
  return *p;
}

void parse_normalizer(const Field& f, std::vector<NormalizerStep>& out) {
  if (f.is_null()) return;
  std::string type = f.type();
  if (type == "Sequence") {
    Field list = f.at("normalizers");
    list.require_array();
    for (size_t i = 0; i < list.size(); ++i) parse_normalizer(list.at(i), out);
  } else if (type == "NFC") {
    out.push_back({NormalizerStep::Kind::Nfc, "", ""});
  } else if (type == "Prepend") {
    out.push_back({NormalizerStep::Kind::Prepend, f.at("prepend").string(), ""});
  } else if (type == "Replace") {
    Field pattern = f.at("pattern");
    if (!pattern.has("String")) pattern.bad("must be {\"String\": ...} (regex replacement is not supported)");
    out.push_back({NormalizerStep::Kind::Replace, pattern.at("String").string(), f.at("content").string()});
  } else {
    unsupported(f.at("type"), type, "NFC, Prepend, Replace, Sequence");
  }
}

void parse_pre_tokenizer(const Field& f, std::vector<PreTokenizerStep>& out) {
  if (f.is_null()) return;
  std::string type = f.type();
  PreTokenizerStep step;
  if (type == "Sequence") {
    Field list = f.at("pretokenizers");
    list.require_array();
    for (size_t i = 0; i < list.size(); ++i) parse_pre_tokenizer(list.at(i), out);
    return;
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::ByteLevel;
    step.add_prefix_space = f.at("add_prefix_space").boolean_or(true);
    step.use_regex = f.at("use_regex").boolean_or(true);
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::Split;
    step.pattern = split_pattern(f.at("pattern"));
    std::string behavior = f.at("behavior").string();
    if (behavior != "Isolated") f.at("behavior").bad(fmt::format("'{}' is not supported (supported: Isolated)", behavior));
    if (f.at("invert").boolean_or(false)) f.at("invert").bad("true is not supported");
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::Metaspace;
    step.replacement = f.at("replacement").string();
    if (step.replacement.empty()) f.at("replacement").bad("must not be empty");
    // Older files spell prepend_scheme as add_prefix_space.
    bool legacy_prefix = f.at("add_prefix_space").boolean_or(true);
    step.prepend_scheme = f.at("prepend_scheme").string_or(legacy_prefix ? "always" : "never");
    if (step.prepend_scheme != "always" && step.prepend_scheme != "first" && step.prepend_scheme != "never")
      f.at("prepend_scheme").bad(fmt::format("'{}' is not one of always, first, never", step.prepend_scheme));
    step.split = f.at("split").boolean_or(true);
  } else {
    unsupported(f.at("type"), type, "ByteLevel, Split, Metaspace, Sequence");
  }
  out.push_back(step);
}

void parse_decoder(const Field& f, std::vector<DecoderStep>& out) {
  std::string type = f.type();
  DecoderStep step;
  if (type == "Sequence") {
    Field list = f.at("decoders");
    list.require_array();
    for (size_t i = 0; i < list.size(); ++i) parse_decoder(list.at(i), out);
    return;
  } else if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::ByteLevel;
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::ByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::Fuse;
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::Replace;
    Field pattern = f.at("pattern");
    if (!pattern.has("String")) pattern.bad("must be {\"String\": ...} (regex replacement is not supported)");
    step.pattern = pattern.at("String").string();
    step.content = f.at("content").string();
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::Strip;
    step.content = f.at("content").string();
    step.start = int(f.at("start").integer());
    step.stop = int(f.at("stop").integer());
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::Metaspace;
    step.pattern = f.at("replacement").string();
    bool legacy_prefix = f.at("add_prefix_space").boolean_or(true);
    step.prepend_scheme = f.at("prepend_scheme").string_or(legacy_prefix ? "always" : "never");
  } else {
    unsupported(f.at("type"), type, "ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence");
  }
  out.push_back(step);
}

void parse_model(const Field& f, BpeModelSpec& m) {
  if (f.is_null()) f.bad("is missing");
  f.require_object();
  std::string type = f.at("type").string_or("BPE");
  if (type != "BPE") unsupported(f.at("type"), type, "BPE");
  if (f.has("dropout") && f.at("dropout").value().is_number() && f.at("dropout").value().get<double>() > 0)
    f.at("dropout").bad("must be null: BPE dropout makes encoding random");
  if (!f.at("continuing_subword_prefix").string_or("").empty())
    f.at("continuing_subword_prefix").bad("is not supported (byte-level and SentencePiece-style BPE only)");
  if (!f.at("end_of_word_suffix").string_or("").empty())
    f.at("end_of_word_suffix").bad("is not supported (byte-level and SentencePiece-style BPE only)");
  m.byte_fallback = f.at("byte_fallback").boolean_or(false);
  m.fuse_unk = f.at("fuse_unk").boolean_or(false);
  m.ignore_merges = f.at("ignore_merges").boolean_or(false);

  Field vocab = f.at("vocab");
  vocab.require_object();
  m.vocab.reserve(vocab.size());
  for (auto it = vocab.value().begin(); it != vocab.value().end(); ++it) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > kMaxTokenId)
      vocab.bad(fmt::format("entry '{}' must map to a token id in [0, {}], got {}", it.key(), kMaxTokenId, it->dump()));
    int32_t id = int32_t(it->get<int64_t>());
    m.vocab[it.key()] = id;
    if (size_t(id) >= m.id_to_token.size()) m.id_to_token.resize(size_t(id) + 1);
    m.id_to_token[size_t(id)] = it.key();
  }

  Field merges = f.at("merges");
  if (merges.is_null()) merges.bad("is missing");
  merges.require_array();
  m.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    Field e = merges.at(i);
    std::string left, right;
    if (e.value().is_string()) {  // "a b"
      std::string s = e.value().get<std::string>();
      size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        e.bad(fmt::format("'{}' must be two tokens separated by one space", s));
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (e.value().is_array() && e.size() == 2 && e.value()[0].is_string() && e.value()[1].is_string()) {
      left = e.value()[0].get<std::string>();  // ["a", "b"], tokenizers >= 0.20
      right = e.value()[1].get<std::string>();
    } else {
      e.bad("must be \"left right\" or [\"left\", \"right\"]");
    }
    auto find = [&](const std::string& token) {
      auto it = m.vocab.find(token);
      if (it == m.vocab.end()) e.bad(fmt::format("uses '{}', which is not in model.vocab", token));
      return it->second;
    };
    int32_t a = find(left), b = find(right), merged = find(left + right);
    // As in tokenizers (a map built from the list), a repeated pair keeps its last rank.
    m.merges[merge_key(a, b)] = {int32_t(i), merged};
  }

  Field unk = f.at("unk_token");
  if (!unk.is_null()) {
    auto it = m.vocab.find(unk.string());
    if (it == m.vocab.end()) unk.bad(fmt::format("'{}' is not in model.vocab", unk.string()));
    m.unk_id = it->second;
  }
}

// The special tokens a TemplateProcessing puts around a single sequence.
void parse_post_processor(const Field& f, const TokenizerJson& t, int32_t* bos, int32_t* eos) {
  if (f.is_null() || !f.value().is_object()) return;
  std::string type = f.at("type").string_or("");
  if (type == "Sequence" && f.has("processors")) {
    Field list = f.at("processors");
    list.require_array();
    for (size_t i = 0; i < list.size(); ++i) parse_post_processor(list.at(i), t, bos, eos);
    return;
  }
  if (type != "TemplateProcessing" || !f.has("single")) return;
  Field single = f.at("single");
  single.require_array();
  bool before_sequence = true;
  for (size_t i = 0; i < single.size(); ++i) {
    Field piece = single.at(i);
    if (piece.has("Sequence")) {
      before_sequence = false;
      continue;
    }
    if (!piece.has("SpecialToken")) continue;
    std::string name = piece.at("SpecialToken").at("id").string();
    int32_t id = -1;
    Field specials = f.at("special_tokens");
    if (specials.has(name.c_str())) {
      Field ids = specials.at(name.c_str()).at("ids");
      ids.require_array();
      if (ids.size() == 1) id = ids.at(size_t(0)).token_id();
    }
    if (id < 0)
      for (const AddedTokenSpec& a : t.added_tokens)
        if (a.content == name) id = a.id;
    if (id < 0) piece.bad(fmt::format("names special token '{}', which has no id", name));
    (before_sequence ? *bos : *eos) = id;
  }
}

}  // namespace

TokenizerJson parse_tokenizer_json(std::string_view text, const std::string& file) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", file, e.what());
  }
  if (!doc.is_object()) fail("{}: must be a JSON object, got {}", file, doc.type_name());
  Field root(doc, file, "");
  TokenizerJson t;

  Field added = root.at("added_tokens");
  if (!added.is_null()) {
    added.require_array();
    for (size_t i = 0; i < added.size(); ++i) {
      Field a = added.at(i);
      a.require_object();
      AddedTokenSpec s;
      s.id = a.at("id").token_id();
      s.content = a.at("content").string();
      if (s.content.empty()) a.at("content").bad("must not be empty");
      s.special = a.at("special").boolean_or(false);
      s.single_word = a.at("single_word").boolean_or(false);
      s.lstrip = a.at("lstrip").boolean_or(false);
      s.rstrip = a.at("rstrip").boolean_or(false);
      s.normalized = a.at("normalized").boolean_or(!s.special);
      t.added_tokens.push_back(std::move(s));
    }
  }
  parse_normalizer(root.at("normalizer"), t.normalizer);
  parse_pre_tokenizer(root.at("pre_tokenizer"), t.pre_tokenizer);
  parse_model(root.at("model"), t.model);
  if (!root.at("decoder").is_null()) {
    t.decoder.emplace();
    parse_decoder(root.at("decoder"), *t.decoder);
  }
  parse_post_processor(root.at("post_processor"), t, &t.template_bos, &t.template_eos);
  return t;
}

}  // namespace adept
