// The tensors of a Hugging Face Llama / Mistral / Qwen2 / Qwen3 checkpoint, by name and
// shape, derived from a ModelConfig exactly as transformers builds the modules. This is
// the one table the checkpoint reader/writer and the parameter store share.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace adept {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// In checkpoint order: model.embed_tokens.weight [V, H]; per layer i (model.layers.i.):
// input_layernorm.weight [H], self_attn.{q_proj [Hq*D, H], k_proj [Hkv*D, H],
// v_proj [Hkv*D, H], o_proj [H, Hq*D]}.weight (+ .bias on q/k/v when has_qkv_bias(), on o
// when has_o_bias()), self_attn.{q_norm, k_norm}.weight [D] when has_qk_norm(),
// post_attention_layernorm.weight [H], mlp.{gate_proj, up_proj [I, H], down_proj [H, I]}.weight;
// model.norm.weight [H]; lm_head.weight [V, H] unless tie_word_embeddings.
// cfg must have been finalized (head_dim and num_key_value_heads filled in).
std::vector<TensorSpec> expected_tensors(const ModelConfig& cfg);

// "model.layers.<i>." — the prefix of every tensor of decoder layer i.
std::string layer_prefix(int64_t layer);

}  // namespace adept
