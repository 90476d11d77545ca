// config.json of a Hugging Face checkpoint <-> adept::ModelConfig, for model_type llama,
// mistral, qwen2 and qwen3. Missing optional fields take the defaults of transformers'
// config class for that model_type (so a config means here what it means there); a
// value we cannot honour (another rope scaling, activation, partial sliding window,
// quantization) is an error naming the field and the file, never silently dropped.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.hpp"

namespace adept {

// ModelConfig plus the config.json fields that matter for a faithful round trip but
// not to the model itself.
struct HfModelConfig {
  HfModelConfig() = default;
  // A plain ModelConfig is a config.json without the extras.
  HfModelConfig(ModelConfig m) : model(std::move(m)) {}  // NOLINT(google-explicit-constructor)

  ModelConfig model;                   // finalized and validated
  std::vector<int64_t> eos_token_ids;  // eos_token_id may be a list; model.eos_token_id is the first
  std::string torch_dtype;             // "bfloat16", "float16", "float32", or "" when absent
};

HfModelConfig parse_hf_config(std::string_view json_text, const std::string& file_name);
HfModelConfig read_hf_config(const std::string& path);
ModelConfig read_model_config(const std::string& path);

// The config.json text transformers loads unchanged (architectures, hidden_act, ...).
// eos_token_ids, when non-empty, is written instead of model.eos_token_id.
std::string hf_config_json(const HfModelConfig& cfg);
void write_hf_config(const std::string& path, const HfModelConfig& cfg);
void write_model_config(const std::string& path, const ModelConfig& cfg, std::string_view torch_dtype = "float32");

// "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM".
std::string causal_lm_architecture(const std::string& model_type);

}  // namespace adept
