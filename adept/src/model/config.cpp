#include "model/config.hpp"

#include "core/error.hpp"

namespace adept {

void ModelConfig::finalize_and_validate() {
  if (model_type != "llama" && model_type != "mistral" && model_type != "qwen2" && model_type != "qwen3")
    fail("model_type '{}' is not supported (supported: llama, mistral, qwen2, qwen3)", model_type);
  auto positive = [](const char* field, int64_t value) {
    if (value <= 0) fail("{} must be positive, got {}", field, value);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  if (num_key_value_heads == 0) num_key_value_heads = num_attention_heads;
  positive("num_key_value_heads", num_key_value_heads);
  if (num_attention_heads % num_key_value_heads != 0)
    fail("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", num_attention_heads,
         num_key_value_heads);
  if (head_dim == 0) {
    if (hidden_size % num_attention_heads != 0)
      fail("hidden_size ({}) is not divisible by num_attention_heads ({}) and head_dim is not given", hidden_size,
           num_attention_heads);
    head_dim = hidden_size / num_attention_heads;
  }
  positive("head_dim", head_dim);
  if (head_dim % 2 != 0) fail("head_dim must be even for rotary embeddings, got {}", head_dim);
  if (!(rms_norm_eps > 0)) fail("rms_norm_eps must be positive, got {}", rms_norm_eps);
  if (!(rope_theta > 0)) fail("rope_theta must be positive, got {}", rope_theta);
  if (!rope_scaling.type.empty() && rope_scaling.type != "llama3" && rope_scaling.type != "linear" &&
      rope_scaling.type != "default")
    fail("rope_scaling.rope_type '{}' is not supported (supported: llama3, linear, default)", rope_scaling.type);
  if (rope_scaling.type == "default") rope_scaling.type.clear();
  if (!rope_scaling.type.empty() && !(rope_scaling.factor > 0))
    fail("rope_scaling.factor must be positive, got {}", rope_scaling.factor);
  if (rope_scaling.type == "llama3" && !(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor))
    fail("rope_scaling.high_freq_factor ({}) must exceed low_freq_factor ({})", rope_scaling.high_freq_factor,
         rope_scaling.low_freq_factor);
}

}  // namespace adept
