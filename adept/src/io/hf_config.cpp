#include "io/hf_config.hpp"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace adept {

namespace {

using json = nlohmann::json;

// Typed access to the fields of one JSON object, with messages naming file and field.
class Fields {
 public:
  Fields(const json& object, const std::string& file, std::string prefix = "")
      : j_(object), file_(file), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return j_.contains(key); }
  bool is_null(const char* key) const { return !has(key) || j_.at(key).is_null(); }

  [[noreturn]] void bad(const char* key, std::string_view what) const {
    fail("{}: field '{}{}' {}", file_, prefix_, key, what);
  }

  std::optional<int64_t> optional_integer(const char* key) const {
    if (is_null(key)) return std::nullopt;
    const json& v = j_.at(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::trunc(v.get<double>()) == v.get<double>() && std::abs(v.get<double>()) < 9e15)
      return int64_t(v.get<double>());
    bad(key, fmt::format("must be an integer, got {}", v.dump()));
  }
  int64_t integer(const char* key, int64_t fallback) const { return optional_integer(key).value_or(fallback); }
  int64_t required_integer(const char* key) const {
    if (!has(key)) bad(key, "is missing");
    auto v = optional_integer(key);
    if (!v) bad(key, "must be an integer, got null");
    return *v;
  }

  std::optional<double> optional_number(const char* key) const {
    if (is_null(key)) return std::nullopt;
    const json& v = j_.at(key);
    if (!v.is_number()) bad(key, fmt::format("must be a number, got {}", v.dump()));
    return v.get<double>();
  }
  double number(const char* key, double fallback) const { return optional_number(key).value_or(fallback); }
  double required_number(const char* key) const {
    auto v = optional_number(key);
    if (!v) bad(key, "is missing (required for this rope_type)");
    return *v;
  }

  bool boolean(const char* key, bool fallback) const {
    if (is_null(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) bad(key, fmt::format("must be true or false, got {}", v.dump()));
    return v.get<bool>();
  }

  std::string string(const char* key, const std::string& fallback) const {
    if (is_null(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) bad(key, fmt::format("must be a string, got {}", v.dump()));
    return v.get<std::string>();
  }

  // int, list of ints, or null (-> empty).
  std::vector<int64_t> integer_list(const char* key, std::vector<int64_t> fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (v.is_null()) return {};
    if (v.is_number_integer()) return {v.get<int64_t>()};
    if (!v.is_array()) bad(key, fmt::format("must be an integer or a list of integers, got {}", v.dump()));
    std::vector<int64_t> out;
    for (const json& e : v) {
      if (!e.is_number_integer()) bad(key, fmt::format("must be an integer or a list of integers, got {}", v.dump()));
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

 private:
  const json& j_;
  const std::string& file_;
  std::string prefix_;
};

// transformers' config-class defaults that differ between the four model types.
struct TypeDefaults {
  int64_t max_position_embeddings;
  std::optional<int64_t> num_key_value_heads;  // nullopt: same as num_attention_heads
  int64_t head_dim;                            // 0: hidden_size / num_attention_heads
  int64_t bos, eos;                            // -1: none
};

TypeDefaults defaults_for(const std::string& model_type) {
  if (model_type == "llama") return {2048, std::nullopt, 0, 1, 2};
  if (model_type == "mistral") return {4096 * 32, 8, 0, 1, 2};
  if (model_type == "qwen2") return {32768, 32, 0, -1, -1};
  return {32768, 32, 128, -1, -1};  // qwen3
}

void read_rope_scaling(const json& rs, const std::string& file, const char* field, RopeScaling& out) {
  if (rs.is_null()) return;
  if (!rs.is_object()) fail("{}: field '{}' must be an object or null, got {}", file, field, rs.dump());
  Fields f(rs, file, std::string(field) + ".");
  std::string type = f.string("rope_type", f.string("type", ""));
  if (type.empty()) fail("{}: field '{}' has neither 'rope_type' nor 'type'", file, field);
  if (type == "default") return;
  if (type != "linear" && type != "llama3")
    fail("{}: field '{}.rope_type' is '{}', which is not supported (supported: default, linear, llama3)", file, field,
         type);
  out.type = type;
  out.factor = f.required_number("factor");
  if (type == "llama3") {
    out.low_freq_factor = f.required_number("low_freq_factor");
    out.high_freq_factor = f.required_number("high_freq_factor");
    if (!f.has("original_max_position_embeddings"))
      fail("{}: field '{}.original_max_position_embeddings' is missing (required for llama3)", file, field);
    out.original_max_position_embeddings = f.required_integer("original_max_position_embeddings");
  }
}

// Which layers slide, for qwen2 / qwen3: transformers makes layer i a sliding-window
// layer when use_sliding_window and i >= max_window_layers (or as layer_types lists).
// adept has one window for all layers, so a mix of the two kinds is refused.
int64_t qwen_sliding_window(const json& j, const Fields& f, const std::string& file, int64_t layers) {
  int64_t window = f.integer("sliding_window", 4096);
  if (j.contains("layer_types") && j["layer_types"].is_array() && !j["layer_types"].empty()) {
    int sliding = 0, full = 0;
    for (const json& t : j["layer_types"]) {
      std::string s = t.is_string() ? t.get<std::string>() : "";
      if (s == "sliding_attention") ++sliding;
      else if (s == "full_attention") ++full;
      else fail("{}: field 'layer_types' holds {}, expected \"full_attention\" or \"sliding_attention\"", file, t.dump());
    }
    if (sliding && full)
      fail("{}: field 'layer_types' mixes sliding-window and full-attention layers, which is not supported", file);
    if (sliding && window <= 0) fail("{}: field 'sliding_window' must be positive for sliding_attention layers", file);
    return sliding ? window : 0;
  }
  if (!f.boolean("use_sliding_window", false) || f.is_null("sliding_window")) return 0;
  int64_t first_sliding = f.integer("max_window_layers", 28);
  if (first_sliding >= layers) return 0;
  if (first_sliding > 0)
    fail("{}: field 'max_window_layers' = {} makes layers {}..{} sliding-window and the rest full attention, "
         "which is not supported (one window for all layers only)",
         file, first_sliding, first_sliding, layers - 1);
  if (window <= 0) fail("{}: field 'sliding_window' must be positive when use_sliding_window is true", file);
  return window;
}

}  // namespace

std::string causal_lm_architecture(const std::string& model_type) {
  if (model_type == "llama") return "LlamaForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "qwen3") return "Qwen3ForCausalLM";
  fail("model_type '{}' is not supported (supported: llama, mistral, qwen2, qwen3)", model_type);
}

HfModelConfig parse_hf_config(std::string_view text, const std::string& file) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", file, e.what());
  }
  if (!j.is_object()) fail("{}: must be a JSON object", file);
  Fields f(j, file);

  HfModelConfig out;
  ModelConfig& c = out.model;
  if (!f.has("model_type")) fail("{}: field 'model_type' is missing", file);
  c.model_type = f.string("model_type", "");
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" && c.model_type != "qwen3")
    fail("{}: field 'model_type' is '{}', which is not supported (supported: llama, mistral, qwen2, qwen3)", file,
         c.model_type);
  const TypeDefaults d = defaults_for(c.model_type);

  if (f.has("quantization_config")) fail("{}: field 'quantization_config': quantized checkpoints are not supported", file);
  std::string act = f.string("hidden_act", "silu");
  if (act != "silu") f.bad("hidden_act", fmt::format("is '{}', which is not supported (supported: silu)", act));
  if (f.boolean("mlp_bias", false)) f.bad("mlp_bias", "is true, which is not supported (MLP without bias only)");

  c.vocab_size = f.required_integer("vocab_size");
  c.hidden_size = f.required_integer("hidden_size");
  c.intermediate_size = f.required_integer("intermediate_size");
  c.num_hidden_layers = f.required_integer("num_hidden_layers");
  c.num_attention_heads = f.required_integer("num_attention_heads");
  if (!f.has("num_key_value_heads"))
    c.num_key_value_heads = d.num_key_value_heads.value_or(c.num_attention_heads);
  else
    c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  c.head_dim = f.has("head_dim") ? f.integer("head_dim", 0) : d.head_dim;
  c.max_position_embeddings = f.integer("max_position_embeddings", d.max_position_embeddings);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
  c.rope_theta = f.number("rope_theta", 10000.0);
  if (f.has("rope_scaling")) read_rope_scaling(j["rope_scaling"], file, "rope_scaling", c.rope_scaling);
  // transformers >= 4.56 / 5 spell both as one rope_parameters object.
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    Fields rp(j["rope_parameters"], file, "rope_parameters.");
    c.rope_theta = rp.number("rope_theta", c.rope_theta);
    c.rope_scaling = RopeScaling{};
    read_rope_scaling(j["rope_parameters"], file, "rope_parameters", c.rope_scaling);
  }
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  // Mistral and Qwen2 modules have no attention_bias switch (Qwen2: q/k/v always biased).
  c.attention_bias = (c.model_type == "llama" || c.model_type == "qwen3") && f.boolean("attention_bias", false);
  if (c.model_type == "mistral")
    c.sliding_window = f.has("sliding_window") ? f.integer("sliding_window", 0) : 4096;
  else if (c.model_type == "qwen2" || c.model_type == "qwen3")
    c.sliding_window = qwen_sliding_window(j, f, file, c.num_hidden_layers);
  if (c.sliding_window < 0) f.bad("sliding_window", fmt::format("must be positive or null, got {}", c.sliding_window));

  c.bos_token_id = f.has("bos_token_id") ? f.integer("bos_token_id", -1) : d.bos;
  out.eos_token_ids = f.integer_list("eos_token_id", d.eos >= 0 ? std::vector<int64_t>{d.eos} : std::vector<int64_t>{});
  c.eos_token_id = out.eos_token_ids.empty() ? -1 : out.eos_token_ids.front();
  out.torch_dtype = f.string("torch_dtype", f.string("dtype", ""));

  try {
    c.finalize_and_validate();
  } catch (const Error& e) {
    fail("{}: {}", file, e.what());
  }
  return out;
}

HfModelConfig read_hf_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream s;
  s << in.rdbuf();
  return parse_hf_config(s.str(), path);
}

ModelConfig read_model_config(const std::string& path) { return read_hf_config(path).model; }

std::string hf_config_json(const HfModelConfig& in) {
  ModelConfig c = in.model;
  c.finalize_and_validate();
  const std::string& t = c.model_type;
  const bool qwen = t == "qwen2" || t == "qwen3";
  if (t == "llama" && c.sliding_window > 0)
    fail("config: sliding_window {} cannot be expressed for model_type llama", c.sliding_window);
  if ((t == "mistral" || t == "qwen2") && c.attention_bias)
    fail("config: attention_bias cannot be expressed for model_type {}", t);

  auto id_or_null = [](int64_t id) { return id >= 0 ? json(id) : json(nullptr); };
  json eos = id_or_null(c.eos_token_id);
  if (in.eos_token_ids.size() > 1) eos = in.eos_token_ids;
  if (in.eos_token_ids.size() == 1) eos = in.eos_token_ids.front();

  json rope_scaling = nullptr;
  if (c.rope_scaling.type == "linear") rope_scaling = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
  if (c.rope_scaling.type == "llama3")
    rope_scaling = {{"rope_type", "llama3"},
                    {"factor", c.rope_scaling.factor},
                    {"low_freq_factor", c.rope_scaling.low_freq_factor},
                    {"high_freq_factor", c.rope_scaling.high_freq_factor},
                    {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};

  // json objects are sorted by key, as transformers writes config.json.
  json j;
  j["architectures"] = {causal_lm_architecture(t)};
  j["model_type"] = t;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = rope_scaling;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = id_or_null(c.bos_token_id);
  j["eos_token_id"] = eos;
  j["torch_dtype"] = in.torch_dtype.empty() ? "float32" : in.torch_dtype;
  j["initializer_range"] = 0.02;
  j["attention_dropout"] = 0.0;
  j["use_cache"] = true;
  if (t == "llama" || t == "qwen3") j["attention_bias"] = c.attention_bias;
  if (t == "llama") {
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  }
  if (t == "mistral") j["sliding_window"] = id_or_null(c.sliding_window > 0 ? c.sliding_window : -1);
  if (qwen) {
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = id_or_null(c.sliding_window > 0 ? c.sliding_window : -1);
    j["max_window_layers"] = c.sliding_window > 0 ? 0 : c.num_hidden_layers;
  }
  return j.dump(2) + "\n";
}

void write_hf_config(const std::string& path, const HfModelConfig& cfg) {
  std::string text;
  try {
    text = hf_config_json(cfg);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  write_file_atomic(path, text);
}

void write_model_config(const std::string& path, const ModelConfig& cfg, std::string_view torch_dtype) {
  HfModelConfig h;
  h.model = cfg;
  h.torch_dtype = std::string(torch_dtype);
  write_hf_config(path, h);
}

}  // namespace adept
