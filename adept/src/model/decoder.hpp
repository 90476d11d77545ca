// The CPU reference decoder of the Llama / Mistral / Qwen2 / Qwen3 family, forward and
// backward, in float (training) or double (gradient checks). Attention runs through
// flash4's public API (its CPU reference) over packed documents, so no token attends
// across a document boundary.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.hpp"
#include "model/parameters.hpp"
#include "ops/cpu/ops.hpp"

namespace adept {

// Indices into the ParameterStore of one decoder layer's tensors (-1 when absent).
struct LayerParams {
  int input_norm = -1, q = -1, k = -1, v = -1, o = -1;
  int q_bias = -1, k_bias = -1, v_bias = -1, o_bias = -1;
  int q_norm = -1, k_norm = -1;
  int post_norm = -1, gate = -1, up = -1, down = -1;
};

// The index of every tensor of a layer, in a fixed order (same order for every layer of
// one config, so tensors of two layers pair up by position).
std::vector<int> layer_tensor_indices(const LayerParams& layer);

// One batch of B rows of S tokens. targets[b][s] is the next token (or ignore_index).
// documents, if given, splits the B·S packed tokens into documents by offsets
// (cu_seqlens: 0 = d0 < d1 < ... = B·S); by default each row is one document.
// Positions restart at 0 in every document.
struct Batch {
  int64_t B = 0, S = 0;
  const int32_t* tokens = nullptr;
  const int32_t* targets = nullptr;
  const std::vector<int32_t>* documents = nullptr;
};

struct ForwardOptions {
  bool keep_activations = false;  // required for backward()
  // d(loss)/dlogits is scaled by this; 0 means 1/count (the mean loss of this batch).
  // Gradient accumulation passes 1/(total count over micro-batches).
  double grad_scale = 0.0;
  // Layers to skip (the residual stream passes through unchanged): probing by masking
  // out a layer without touching its weights. Empty means none.
  std::vector<bool> skip_layers;
};

inline constexpr int32_t kIgnoreIndex = -100;

template <typename T>
class Decoder {
 public:
  explicit Decoder(ModelConfig config);

  const ModelConfig& config() const { return config_; }
  ParameterStore<T>& params() { return params_; }
  const ParameterStore<T>& params() const { return params_; }
  const LayerParams& layer(int64_t l) const { return layers_.at(l); }
  int embed_index() const { return embed_; }
  int final_norm_index() const { return final_norm_; }
  int lm_head_index() const { return lm_head_; }  // == embed_index() when tied

  // Normal(0, std) matrices and embeddings, ones for norms, zeros for biases.
  void init_random(uint64_t seed, double std);

  // Runs the model; returns the cross-entropy over counted targets. With
  // keep_activations, d(loss)/dlogits is kept for backward().
  cpu::CrossEntropyResult forward(const Batch& batch, const ForwardOptions& options = {});
  // Accumulates parameter gradients (trainable tensors only) of the last forward.
  void backward();

  // logits[B·S][V] of the last forward.
  const std::vector<T>& logits() const { return logits_; }

  // Incremental decoding: keys and values of every layer for the positions seen so far.
  struct KVCache {
    int64_t length = 0, capacity = 0;
    std::vector<std::vector<T>> k, v;  // per layer [capacity][Hkv·D], after RoPE
  };
  KVCache make_cache(int64_t capacity) const;
  // Runs n new tokens at positions cache.length.. (one document), appends their keys
  // and values, and returns the logits [V] of the last of them.
  std::vector<T> forward_cached(const int32_t* tokens, int64_t n, KVCache& cache);

 private:
  struct LayerActivations {
    std::vector<T> x;                 // layer input (residual stream) [N][C]
    std::vector<T> h1, rstd1;         // input_layernorm output, its rstd
    std::vector<T> q_raw, k_raw;      // projections before q/k norm (qwen3)
    std::vector<T> rstd_q, rstd_k;    // q/k norm rstd per (token, head)
    std::vector<T> q, k, v;           // attention inputs (after norm and rope)
    std::vector<T> attn;              // attention output [N][Hq·D]
    std::vector<float> lse;           // [Hq][N], fp32 as flash4 returns it
    std::vector<T> x2;                // residual after attention
    std::vector<T> h2, rstd2;         // post_attention_layernorm output, rstd
    std::vector<T> gate, up, act;     // MLP
  };

  // h1 = norm(x); q, k, v projected, q/k-normed (qwen3) and rotated.
  void attention_inputs(LayerActivations& a, const LayerParams& P, const T* x, int64_t N, const int32_t* positions);
  // Given a.attn: x += o(attn); x += down(swiglu(gate, up)(norm(x))).
  void layer_output(LayerActivations& a, const LayerParams& P, std::vector<T>& x, int64_t N);
  void attention_forward(LayerActivations& a, int64_t N);
  void attention_backward(LayerActivations& a, int64_t N, const T* dattn, T* dq, T* dk, T* dv);

  ModelConfig config_;
  ParameterStore<T> params_;
  std::vector<LayerParams> layers_;
  int embed_ = -1, final_norm_ = -1, lm_head_ = -1;
  cpu::RopeTable rope_;

  // State of the last forward.
  int64_t N_ = 0;
  std::vector<int32_t> tokens_, positions_, cu_seqlens_;
  int32_t max_doc_len_ = 0;
  std::vector<bool> skip_;
  std::vector<LayerActivations> acts_;
  std::vector<T> x_final_, h_final_, rstd_final_, logits_, dlogits_;
  bool have_activations_ = false;
};

extern template class Decoder<float>;
extern template class Decoder<double>;

}  // namespace adept
