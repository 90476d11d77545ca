#include "model/decoder.hpp"

#include <flash4/flash4.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>

namespace adept {

namespace {

template <typename T>
constexpr flash4_dtype flash4_type() {
  return std::is_same_v<T, double> ? FLASH4_F64 : FLASH4_F32;
}

}  // namespace

std::vector<int> layer_tensor_indices(const LayerParams& p) {
  std::vector<int> out;
  for (int i : {p.input_norm, p.q, p.k, p.v, p.o, p.q_bias, p.k_bias, p.v_bias, p.o_bias, p.q_norm, p.k_norm,
                p.post_norm, p.gate, p.up, p.down})
    if (i >= 0) out.push_back(i);
  return out;
}

template <typename T>
Decoder<T>::Decoder(ModelConfig config) : config_(std::move(config)) {
  config_.finalize_and_validate();
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  embed_ = params_.add("model.embed_tokens.weight", {c.vocab_size, H}, true);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    LayerParams L;
    L.input_norm = params_.add(p + "input_layernorm.weight", {H}, false);
    L.q = params_.add(p + "self_attn.q_proj.weight", {c.q_dim(), H}, true);
    L.k = params_.add(p + "self_attn.k_proj.weight", {c.kv_dim(), H}, true);
    L.v = params_.add(p + "self_attn.v_proj.weight", {c.kv_dim(), H}, true);
    L.o = params_.add(p + "self_attn.o_proj.weight", {H, c.q_dim()}, true);
    if (c.has_qkv_bias()) {
      L.q_bias = params_.add(p + "self_attn.q_proj.bias", {c.q_dim()}, false);
      L.k_bias = params_.add(p + "self_attn.k_proj.bias", {c.kv_dim()}, false);
      L.v_bias = params_.add(p + "self_attn.v_proj.bias", {c.kv_dim()}, false);
    }
    if (c.has_o_bias()) L.o_bias = params_.add(p + "self_attn.o_proj.bias", {H}, false);
    if (c.has_qk_norm()) {
      L.q_norm = params_.add(p + "self_attn.q_norm.weight", {D}, false);
      L.k_norm = params_.add(p + "self_attn.k_norm.weight", {D}, false);
    }
    L.post_norm = params_.add(p + "post_attention_layernorm.weight", {H}, false);
    L.gate = params_.add(p + "mlp.gate_proj.weight", {I, H}, true);
    L.up = params_.add(p + "mlp.up_proj.weight", {I, H}, true);
    L.down = params_.add(p + "mlp.down_proj.weight", {H, I}, true);
    layers_.push_back(L);
  }
  final_norm_ = params_.add("model.norm.weight", {H}, false);
  lm_head_ = c.tie_word_embeddings ? embed_ : params_.add("lm_head.weight", {c.vocab_size, H}, true);
  params_.allocate();

  cpu::RopeSpec spec;
  spec.head_dim = D;
  spec.theta = c.rope_theta;
  spec.scaling_type = c.rope_scaling.type;
  spec.factor = c.rope_scaling.factor;
  spec.low_freq_factor = c.rope_scaling.low_freq_factor;
  spec.high_freq_factor = c.rope_scaling.high_freq_factor;
  spec.original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings;
  rope_ = cpu::rope_table(spec, std::max<int64_t>(c.max_position_embeddings, 1));
}

template <typename T>
void Decoder<T>::init_random(uint64_t seed, double std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, std);
  for (int i = 0; i < params_.size(); ++i) {
    const ParameterInfo& p = params_.info(i);
    T* w = params_.value(i);
    bool is_norm = p.name.find("norm") != std::string::npos;
    bool is_bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    for (int64_t j = 0; j < p.numel; ++j) w[j] = is_norm ? T(1) : is_bias ? T(0) : T(normal(rng));
  }
}

template <typename T>
void Decoder<T>::attention_forward(LayerActivations& a, int64_t N) {
  const ModelConfig& c = config_;
  flash4::ForwardArgs f = flash4::forward_args();
  f.device = FLASH4_CPU;
  f.q = flash4::contiguous(a.q.data(), flash4_type<T>(), {N, c.num_attention_heads, c.head_dim});
  f.k = flash4::contiguous(a.k.data(), flash4_type<T>(), {N, c.num_key_value_heads, c.head_dim});
  f.v = flash4::contiguous(a.v.data(), flash4_type<T>(), {N, c.num_key_value_heads, c.head_dim});
  f.out = flash4::contiguous(a.attn.data(), flash4_type<T>(), {N, c.num_attention_heads, c.head_dim});
  f.lse = flash4::contiguous(a.lse.data(), FLASH4_F32, {c.num_attention_heads, N});
  f.options.causal = 1;
  f.options.softmax_scale = float(1.0 / std::sqrt(double(c.head_dim)));
  // transformers' sliding window W lets a query see itself and the W - 1 keys before it.
  if (c.sliding_window > 0) f.options.window_left = int(c.sliding_window - 1);
  f.varlen.cu_seqlens_q = cu_seqlens_.data();
  f.varlen.cu_seqlens_k = cu_seqlens_.data();
  f.varlen.batch = int(cu_seqlens_.size() - 1);
  f.varlen.max_seqlen_q = max_doc_len_;
  f.varlen.max_seqlen_k = max_doc_len_;
  flash4::forward(f);
}

template <typename T>
void Decoder<T>::attention_backward(LayerActivations& a, int64_t N, const T* dattn, T* dq, T* dk, T* dv) {
  const ModelConfig& c = config_;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  flash4::BackwardArgs b = flash4::backward_args();
  b.device = FLASH4_CPU;
  b.q = flash4::contiguous(a.q.data(), flash4_type<T>(), {N, Hq, D});
  b.k = flash4::contiguous(a.k.data(), flash4_type<T>(), {N, Hkv, D});
  b.v = flash4::contiguous(a.v.data(), flash4_type<T>(), {N, Hkv, D});
  b.out = flash4::contiguous(a.attn.data(), flash4_type<T>(), {N, Hq, D});
  b.dout = flash4::contiguous(const_cast<T*>(dattn), flash4_type<T>(), {N, Hq, D});
  b.lse = flash4::contiguous(a.lse.data(), FLASH4_F32, {Hq, N});
  b.dq = flash4::contiguous(dq, flash4_type<T>(), {N, Hq, D});
  b.dk = flash4::contiguous(dk, flash4_type<T>(), {N, Hkv, D});
  b.dv = flash4::contiguous(dv, flash4_type<T>(), {N, Hkv, D});
  b.options.causal = 1;
  b.options.softmax_scale = float(1.0 / std::sqrt(double(D)));
  if (c.sliding_window > 0) b.options.window_left = int(c.sliding_window - 1);
  b.varlen.cu_seqlens_q = cu_seqlens_.data();
  b.varlen.cu_seqlens_k = cu_seqlens_.data();
  b.varlen.batch = int(cu_seqlens_.size() - 1);
  b.varlen.max_seqlen_q = max_doc_len_;
  b.varlen.max_seqlen_k = max_doc_len_;
  b.deterministic = 1;
  flash4::backward(b);
}

template <typename T>
void Decoder<T>::attention_inputs(LayerActivations& a, const LayerParams& P, const T* x, int64_t N,
                                  const int32_t* positions) {
  const ModelConfig& c = config_;
  const int64_t C = c.hidden_size, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  auto bias = [&](int i) -> const T* { return i < 0 ? nullptr : params_.value(i); };
  a.h1.resize(N * C);
  a.rstd1.resize(N);
  cpu::rmsnorm_forward(a.h1.data(), a.rstd1.data(), x, params_.value(P.input_norm), N, C, c.rms_norm_eps);
  a.q.resize(N * Hq * D);
  a.k.resize(N * Hkv * D);
  a.v.resize(N * Hkv * D);
  cpu::linear_forward(a.q.data(), a.h1.data(), params_.value(P.q), bias(P.q_bias), N, C, Hq * D);
  cpu::linear_forward(a.k.data(), a.h1.data(), params_.value(P.k), bias(P.k_bias), N, C, Hkv * D);
  cpu::linear_forward(a.v.data(), a.h1.data(), params_.value(P.v), bias(P.v_bias), N, C, Hkv * D);
  if (c.has_qk_norm()) {  // Qwen3: RMSNorm over each head's vector, before RoPE
    a.q_raw = a.q;
    a.k_raw = a.k;
    a.rstd_q.resize(N * Hq);
    a.rstd_k.resize(N * Hkv);
    cpu::rmsnorm_forward(a.q.data(), a.rstd_q.data(), a.q_raw.data(), params_.value(P.q_norm), N * Hq, D,
                         c.rms_norm_eps);
    cpu::rmsnorm_forward(a.k.data(), a.rstd_k.data(), a.k_raw.data(), params_.value(P.k_norm), N * Hkv, D,
                         c.rms_norm_eps);
  }
  cpu::rope_forward(a.q.data(), positions, rope_, N, Hq, D);
  cpu::rope_forward(a.k.data(), positions, rope_, N, Hkv, D);
}

template <typename T>
void Decoder<T>::layer_output(LayerActivations& a, const LayerParams& P, std::vector<T>& x, int64_t N) {
  const ModelConfig& c = config_;
  const int64_t C = c.hidden_size, I = c.intermediate_size, HqD = c.q_dim();
  std::vector<T> tmp(N * C);
  cpu::linear_forward(tmp.data(), a.attn.data(), params_.value(P.o), P.o_bias < 0 ? nullptr : params_.value(P.o_bias),
                      N, HqD, C);
  cpu::add_inplace(x.data(), tmp.data(), N * C);
  a.x2 = x;
  a.h2.resize(N * C);
  a.rstd2.resize(N);
  cpu::rmsnorm_forward(a.h2.data(), a.rstd2.data(), x.data(), params_.value(P.post_norm), N, C, c.rms_norm_eps);
  a.gate.resize(N * I);
  a.up.resize(N * I);
  a.act.resize(N * I);
  cpu::linear_forward(a.gate.data(), a.h2.data(), params_.value(P.gate), (const T*)nullptr, N, C, I);
  cpu::linear_forward(a.up.data(), a.h2.data(), params_.value(P.up), (const T*)nullptr, N, C, I);
  cpu::swiglu_forward(a.act.data(), a.gate.data(), a.up.data(), N, I);
  cpu::linear_forward(tmp.data(), a.act.data(), params_.value(P.down), (const T*)nullptr, N, I, C);
  cpu::add_inplace(x.data(), tmp.data(), N * C);
}

template <typename T>
typename Decoder<T>::KVCache Decoder<T>::make_cache(int64_t capacity) const {
  if (capacity > config_.max_position_embeddings)
    fail("KV cache of {} positions exceeds max_position_embeddings ({})", capacity, config_.max_position_embeddings);
  KVCache cache;
  cache.capacity = capacity;
  cache.k.assign(config_.num_hidden_layers, std::vector<T>(capacity * config_.kv_dim()));
  cache.v.assign(config_.num_hidden_layers, std::vector<T>(capacity * config_.kv_dim()));
  return cache;
}

template <typename T>
std::vector<T> Decoder<T>::forward_cached(const int32_t* tokens, int64_t n, KVCache& cache) {
  const ModelConfig& c = config_;
  const int64_t C = c.hidden_size, V = c.vocab_size, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const int64_t D = c.head_dim, KV = c.kv_dim();
  if (n <= 0) fail("forward_cached needs at least one token");
  if (cache.length + n > cache.capacity)
    fail("KV cache full: {} cached + {} new tokens exceed its {} positions", cache.length, n, cache.capacity);
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= V) fail("token id {} is outside the vocabulary [0, {})", tokens[i], V);
  std::vector<int32_t> positions(n);
  for (int64_t i = 0; i < n; ++i) positions[i] = int32_t(cache.length + i);
  const int64_t Sk = cache.length + n;
  std::vector<T> x(n * C);
  cpu::embedding_forward(x.data(), tokens, params_.value(embed_), n, C);
  LayerActivations a;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    attention_inputs(a, layers_[l], x.data(), n, positions.data());
    std::copy(a.k.begin(), a.k.end(), cache.k[l].begin() + cache.length * KV);
    std::copy(a.v.begin(), a.v.end(), cache.v[l].begin() + cache.length * KV);
    a.attn.resize(n * Hq * D);
    // New queries against every cached key: causal, bottom-right aligned (Sq = n ≤ Sk).
    flash4::ForwardArgs f = flash4::forward_args();
    f.device = FLASH4_CPU;
    f.q = flash4::contiguous(a.q.data(), flash4_type<T>(), {1, n, Hq, D});
    f.k = flash4::contiguous(cache.k[l].data(), flash4_type<T>(), {1, Sk, Hkv, D});
    f.v = flash4::contiguous(cache.v[l].data(), flash4_type<T>(), {1, Sk, Hkv, D});
    f.out = flash4::contiguous(a.attn.data(), flash4_type<T>(), {1, n, Hq, D});
    f.options.causal = 1;
    f.options.softmax_scale = float(1.0 / std::sqrt(double(D)));
    if (c.sliding_window > 0) f.options.window_left = int(c.sliding_window - 1);
    flash4::forward(f);
    layer_output(a, layers_[l], x, n);
  }
  cache.length = Sk;
  std::vector<T> h(C), rstd(1), logits(V);
  cpu::rmsnorm_forward(h.data(), rstd.data(), x.data() + (n - 1) * C, params_.value(final_norm_), 1, C, c.rms_norm_eps);
  cpu::linear_forward(logits.data(), h.data(), params_.value(lm_head_), (const T*)nullptr, 1, C, V);
  return logits;
}

template <typename T>
cpu::CrossEntropyResult Decoder<T>::forward(const Batch& batch, const ForwardOptions& options) {
  const ModelConfig& c = config_;
  const int64_t N = batch.B * batch.S, C = c.hidden_size, V = c.vocab_size;
  const int64_t Hq = c.num_attention_heads, D = c.head_dim;
  const int64_t L = c.num_hidden_layers;
  if (N <= 0) fail("batch is empty (B={}, S={})", batch.B, batch.S);
  N_ = N;

  // Documents and their positions.
  if (batch.documents) {
    cu_seqlens_ = *batch.documents;
    if (cu_seqlens_.size() < 2 || cu_seqlens_.front() != 0 || cu_seqlens_.back() != N)
      fail("batch documents must run from 0 to B*S={} in increasing offsets", N);
  } else {
    cu_seqlens_.resize(batch.B + 1);
    for (int64_t b = 0; b <= batch.B; ++b) cu_seqlens_[b] = int32_t(b * batch.S);
  }
  positions_.resize(N);
  max_doc_len_ = 0;
  for (size_t d = 0; d + 1 < cu_seqlens_.size(); ++d) {
    int32_t len = cu_seqlens_[d + 1] - cu_seqlens_[d];
    if (len <= 0) fail("batch document {} is empty or out of order", d);
    if (len > c.max_position_embeddings)
      fail("document of {} tokens exceeds max_position_embeddings ({})", len, c.max_position_embeddings);
    max_doc_len_ = std::max(max_doc_len_, len);
    for (int32_t i = 0; i < len; ++i) positions_[cu_seqlens_[d] + i] = i;
  }
  tokens_.assign(batch.tokens, batch.tokens + N);
  for (int64_t n = 0; n < N; ++n) {
    if (tokens_[n] < 0 || tokens_[n] >= V) fail("token id {} at position {} is outside the vocabulary [0, {})", tokens_[n], n, V);
    int32_t t = batch.targets[n];
    if (t != kIgnoreIndex && (t < 0 || t >= V))
      fail("target id {} at position {} is outside the vocabulary [0, {})", t, n, V);
  }
  skip_ = options.skip_layers;
  skip_.resize(L, false);

  acts_.resize(L);
  std::vector<T> x(N * C);
  cpu::embedding_forward(x.data(), tokens_.data(), params_.value(embed_), N, C);
  for (int64_t l = 0; l < L; ++l) {
    if (skip_[l]) continue;
    LayerActivations& a = acts_[l];
    a.x = x;
    attention_inputs(a, layers_[l], x.data(), N, positions_.data());
    a.attn.resize(N * Hq * D);
    a.lse.resize(Hq * N);
    attention_forward(a, N);
    layer_output(a, layers_[l], x, N);
  }
  x_final_ = std::move(x);
  h_final_.resize(N * C);
  rstd_final_.resize(N);
  cpu::rmsnorm_forward(h_final_.data(), rstd_final_.data(), x_final_.data(), params_.value(final_norm_), N, C,
                       c.rms_norm_eps);
  logits_.resize(N * V);
  cpu::linear_forward(logits_.data(), h_final_.data(), params_.value(lm_head_), (const T*)nullptr, N, C, V);

  if (!options.keep_activations) {
    have_activations_ = false;
    return cpu::cross_entropy<T>(nullptr, logits_.data(), batch.targets, N, V, kIgnoreIndex, 0.0);
  }
  // The scale must be known before the gradient is written; count first when it is 0.
  double scale = options.grad_scale;
  if (scale == 0.0) {
    int64_t count = 0;
    for (int64_t n = 0; n < N; ++n) count += batch.targets[n] != kIgnoreIndex;
    scale = count ? 1.0 / double(count) : 0.0;
  }
  dlogits_.resize(N * V);
  have_activations_ = true;
  return cpu::cross_entropy(dlogits_.data(), logits_.data(), batch.targets, N, V, kIgnoreIndex, scale);
}

template <typename T>
void Decoder<T>::backward() {
  if (!have_activations_) fail("Decoder::backward called without a forward that kept activations");
  const ModelConfig& c = config_;
  const int64_t N = N_, C = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  const int64_t L = c.num_hidden_layers;
  auto& P = params_;

  // Layers below the lowest one holding a trainable tensor need no gradient at all.
  auto layer_trainable = [&](int64_t l) {
    for (int i : layer_tensor_indices(layers_[l]))
      if (P.grad(i)) return true;
    return false;
  };
  int64_t lowest = P.grad(embed_) ? -1 : L;
  for (int64_t l = 0; l < L && lowest == L; ++l)
    if (!skip_[l] && layer_trainable(l)) lowest = l;

  std::vector<T> dh(N * C), dx(N * C), dtmp(N * C);
  cpu::linear_backward(dh.data(), P.grad(lm_head_), (T*)nullptr, dlogits_.data(), h_final_.data(),
                       P.value(lm_head_), N, C, V);
  cpu::rmsnorm_backward(dx.data(), P.grad(final_norm_), dh.data(), x_final_.data(), P.value(final_norm_),
                        rstd_final_.data(), N, C);

  std::vector<T> dact(N * I), dgate(N * I), dup(N * I);
  std::vector<T> dattn(N * Hq * D), dq(N * Hq * D), dk(N * Hkv * D), dv(N * Hkv * D), dqkv_tmp;
  for (int64_t l = L - 1; l >= 0 && l >= lowest; --l) {
    if (skip_[l]) continue;
    const LayerParams& lp = layers_[l];
    LayerActivations& a = acts_[l];
    // x3 = x2 + down(swiglu(gate(h2), up(h2))),  h2 = norm(x2)
    cpu::linear_backward(dact.data(), P.grad(lp.down), (T*)nullptr, dx.data(), a.act.data(), P.value(lp.down), N,
                         I, C);
    cpu::swiglu_backward(dgate.data(), dup.data(), dact.data(), a.gate.data(), a.up.data(), N, I);
    cpu::linear_backward(dh.data(), P.grad(lp.gate), (T*)nullptr, dgate.data(), a.h2.data(), P.value(lp.gate), N,
                         C, I);
    cpu::linear_backward(dtmp.data(), P.grad(lp.up), (T*)nullptr, dup.data(), a.h2.data(), P.value(lp.up), N, C,
                         I);
    cpu::add_inplace(dh.data(), dtmp.data(), N * C);
    cpu::rmsnorm_backward(dtmp.data(), P.grad(lp.post_norm), dh.data(), a.x2.data(), P.value(lp.post_norm),
                          a.rstd2.data(), N, C);
    cpu::add_inplace(dx.data(), dtmp.data(), N * C);  // dx is now d(x2)

    // x2 = x + o(attention(rope(norm_qk(q(h1))), ...)),  h1 = norm(x)
    auto bias_grad = [&](int i) -> T* { return i < 0 ? nullptr : P.grad(i); };
    cpu::linear_backward(dattn.data(), P.grad(lp.o), bias_grad(lp.o_bias), dx.data(), a.attn.data(),
                         P.value(lp.o), N, Hq * D, C);
    attention_backward(a, N, dattn.data(), dq.data(), dk.data(), dv.data());
    cpu::rope_backward(dq.data(), positions_.data(), rope_, N, Hq, D);
    cpu::rope_backward(dk.data(), positions_.data(), rope_, N, Hkv, D);
    if (c.has_qk_norm()) {
      dqkv_tmp.resize(N * Hq * D);
      cpu::rmsnorm_backward(dqkv_tmp.data(), P.grad(lp.q_norm), dq.data(), a.q_raw.data(), P.value(lp.q_norm),
                            a.rstd_q.data(), N * Hq, D);
      std::copy(dqkv_tmp.begin(), dqkv_tmp.end(), dq.begin());
      dqkv_tmp.resize(N * Hkv * D);
      cpu::rmsnorm_backward(dqkv_tmp.data(), P.grad(lp.k_norm), dk.data(), a.k_raw.data(), P.value(lp.k_norm),
                            a.rstd_k.data(), N * Hkv, D);
      std::copy(dqkv_tmp.begin(), dqkv_tmp.end(), dk.begin());
    }
    cpu::linear_backward(dh.data(), P.grad(lp.q), bias_grad(lp.q_bias), dq.data(), a.h1.data(), P.value(lp.q), N,
                         C, Hq * D);
    cpu::linear_backward(dtmp.data(), P.grad(lp.k), bias_grad(lp.k_bias), dk.data(), a.h1.data(), P.value(lp.k),
                         N, C, Hkv * D);
    cpu::add_inplace(dh.data(), dtmp.data(), N * C);
    cpu::linear_backward(dtmp.data(), P.grad(lp.v), bias_grad(lp.v_bias), dv.data(), a.h1.data(), P.value(lp.v),
                         N, C, Hkv * D);
    cpu::add_inplace(dh.data(), dtmp.data(), N * C);
    cpu::rmsnorm_backward(dtmp.data(), P.grad(lp.input_norm), dh.data(), a.x.data(), P.value(lp.input_norm),
                          a.rstd1.data(), N, C);
    cpu::add_inplace(dx.data(), dtmp.data(), N * C);  // dx is now d(x), the layer input
  }
  if (P.grad(embed_)) cpu::embedding_backward(P.grad(embed_), dx.data(), tokens_.data(), N, C);
}

template class Decoder<float>;
template class Decoder<double>;

}  // namespace adept
