#include "io/hf_tensor_names.hpp"

#include "core/error.hpp"

namespace adept {

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

std::vector<TensorSpec> expected_tensors(const ModelConfig& cfg) {
  if (cfg.head_dim <= 0 || cfg.num_key_value_heads <= 0)
    fail("expected_tensors: the model config is not finalized (head_dim {}, num_key_value_heads {})", cfg.head_dim,
         cfg.num_key_value_heads);
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size, I = cfg.intermediate_size, D = cfg.head_dim;
  const int64_t Q = cfg.q_dim(), KV = cfg.kv_dim();
  std::vector<TensorSpec> out;
  out.push_back({"model.embed_tokens.weight", {V, H}});
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    out.push_back({p + "input_layernorm.weight", {H}});
    out.push_back({p + "self_attn.q_proj.weight", {Q, H}});
    if (cfg.has_qkv_bias()) out.push_back({p + "self_attn.q_proj.bias", {Q}});
    out.push_back({p + "self_attn.k_proj.weight", {KV, H}});
    if (cfg.has_qkv_bias()) out.push_back({p + "self_attn.k_proj.bias", {KV}});
    out.push_back({p + "self_attn.v_proj.weight", {KV, H}});
    if (cfg.has_qkv_bias()) out.push_back({p + "self_attn.v_proj.bias", {KV}});
    out.push_back({p + "self_attn.o_proj.weight", {H, Q}});
    if (cfg.has_o_bias()) out.push_back({p + "self_attn.o_proj.bias", {H}});
    if (cfg.has_qk_norm()) {
      out.push_back({p + "self_attn.q_norm.weight", {D}});
      out.push_back({p + "self_attn.k_norm.weight", {D}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {H}});
    out.push_back({p + "mlp.gate_proj.weight", {I, H}});
    out.push_back({p + "mlp.up_proj.weight", {I, H}});
    out.push_back({p + "mlp.down_proj.weight", {H, I}});
  }
  out.push_back({"model.norm.weight", {H}});
  if (!cfg.tie_word_embeddings) out.push_back({"lm_head.weight", {V, H}});
  return out;
}

}  // namespace adept
