// Model hyper-parameters of the Llama / Mistral / Qwen2 / Qwen3 decoder family, named
// and valued as in Hugging Face config.json so that reading and writing it is a 1:1 map.
#pragma once

#include <cstdint>
#include <string>

namespace adept {

// rope_scaling of config.json. type "" means none; "llama3" is Llama-3.1's
// frequency-dependent scaling; "linear" divides positions by factor.
struct RopeScaling {
  std::string type;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type = "llama";  // llama | mistral | qwen2 | qwen3
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // 0 in config.json means hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // llama/qwen3: bias on q,k,v,o
  int64_t sliding_window = 0;   // 0 = none (mistral / qwen2 may set it)
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;

  // Derived from model_type and attention_bias, as transformers builds the modules.
  bool has_qkv_bias() const { return model_type == "qwen2" || attention_bias; }
  bool has_o_bias() const { return model_type != "qwen2" && attention_bias; }
  bool has_qk_norm() const { return model_type == "qwen3"; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }

  // Fills head_dim if 0; throws adept::Error naming the first invalid field.
  void finalize_and_validate();
};

}  // namespace adept
