#include "io/tokenizer.hpp"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "io/bpe_tokenizer.hpp"
#include "io/sentencepiece_tokenizer.hpp"

namespace adept {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::optional<json> read_json_if_present(const fs::path& path) {
  if (!fs::exists(path)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  std::stringstream s;
  s << in.rdbuf();
  try {
    json j = json::parse(s.str());
    if (!j.is_object()) fail("{}: must be a JSON object", path.string());
    return j;
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", path.string(), e.what());
  }
}

// bos_token / eos_token of tokenizer_config.json: "<s>", {"content": "<s>", ...} or null.
// Returns -1 for null, the id otherwise; a token the tokenizer does not know is an error.
std::optional<int32_t> config_token(const json& cfg, const char* key, const Tokenizer& tok, const std::string& file) {
  if (!cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_null()) return -1;
  std::string content;
  if (v.is_string())
    content = v.get<std::string>();
  else if (v.is_object() && v.contains("content") && v["content"].is_string())
    content = v["content"].get<std::string>();
  else
    fail("{}: field '{}' must be a token string, {{\"content\": ...}} or null, got {}", file, key, v.dump());
  auto id = tok.token_to_id(content);
  if (!id) fail("{}: field '{}' is '{}', which is not a token of the tokenizer", file, key, content);
  return *id;
}

std::optional<bool> config_flag(const json& cfg, const char* key, const std::string& file) {
  if (!cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
  if (!cfg[key].is_boolean()) fail("{}: field '{}' must be true or false, got {}", file, key, cfg[key].dump());
  return cfg[key].get<bool>();
}

// bos_token_id / eos_token_id of generation_config.json: an id, a list (first wins) or null.
std::optional<int32_t> generation_id(const json& cfg, const char* key, const Tokenizer& tok, const std::string& file) {
  if (!cfg.contains(key)) return std::nullopt;
  json v = cfg[key];
  if (v.is_array() && !v.empty()) v = v[0];
  if (v.is_null()) return -1;
  if (!v.is_number_integer()) fail("{}: field '{}' must be a token id or a list of them, got {}", file, key, cfg[key].dump());
  int64_t id = v.get<int64_t>();
  if (id < 0 || id >= tok.vocab_size())
    fail("{}: field '{}' = {} is outside the tokenizer's vocabulary ({} tokens)", file, key, id, tok.vocab_size());
  return int32_t(id);
}

void resolve_special_ids(Tokenizer& tok, const fs::path& dir) {
  SpecialTokenIds ids = tok.special_ids();
  fs::path gen_path = dir / "generation_config.json";
  if (auto gen = read_json_if_present(gen_path)) {
    if (auto id = generation_id(*gen, "bos_token_id", tok, gen_path.string())) ids.bos = *id;
    if (auto id = generation_id(*gen, "eos_token_id", tok, gen_path.string())) ids.eos = *id;
  }
  fs::path cfg_path = dir / "tokenizer_config.json";
  if (auto cfg = read_json_if_present(cfg_path)) {
    if (auto id = config_token(*cfg, "bos_token", tok, cfg_path.string())) ids.bos = *id;
    if (auto id = config_token(*cfg, "eos_token", tok, cfg_path.string())) ids.eos = *id;
    if (auto flag = config_flag(*cfg, "add_bos_token", cfg_path.string())) ids.add_bos = *flag;
    if (auto flag = config_flag(*cfg, "add_eos_token", cfg_path.string())) ids.add_eos = *flag;
  }
  if (ids.bos < 0) ids.add_bos = false;
  if (ids.eos < 0) ids.add_eos = false;
  tok.set_special_ids(ids);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  fs::path dir(model_dir);
  fs::path sp_path = dir / "tokenizer.model", json_path = dir / "tokenizer.json";
  std::unique_ptr<Tokenizer> tok;
  if (fs::exists(sp_path)) {
    try {
      tok = std::make_unique<SentencePieceTokenizer>(sp_path.string());
    } catch (const Error& e) {
      // Llama-3 ships a tiktoken file under that name in original/; the tokenizer.json beside it is the real one.
      if (!fs::exists(json_path)) throw;
      spdlog::warn("{}; using {}", e.what(), json_path.string());
    }
  }
  if (!tok) {
    if (!fs::exists(json_path)) fail("{}: no tokenizer.json or tokenizer.model", model_dir);
    auto bpe = BpeTokenizer::from_file(json_path.string());
    SpecialTokenIds ids;
    ids.bos = bpe->spec().template_bos;
    ids.eos = bpe->spec().template_eos;
    ids.add_bos = ids.bos >= 0;
    ids.add_eos = ids.eos >= 0;
    bpe->set_special_ids(ids);
    tok = std::move(bpe);
  }
  resolve_special_ids(*tok, dir);
  return tok;
}

}  // namespace adept
