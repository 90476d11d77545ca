// Whole-model gradient of the CPU reference decoder against central finite differences,
// in float64, for each family's variant of the block (GQA, qkv bias, q/k norm, untied
// head, Llama-3 RoPE scaling, packed documents).
#include <gtest/gtest.h>

#include <cmath>

#include "common/random.hpp"
#include "model/decoder.hpp"

namespace adept {
namespace {

using testing_support::make_rng;

ModelConfig tiny(const std::string& model_type) {
  ModelConfig c;
  c.model_type = model_type;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 100.0;
  c.max_position_embeddings = 64;
  return c;
}

struct Case {
  ModelConfig config;
  const std::vector<int32_t>* documents = nullptr;
};

// Perturbs parameters with random non-trivial values (norm weights away from 1, biases
// non-zero) so every term of the gradient matters, then checks a sample of every tensor.
void expect_gradients_match(ModelConfig config, const std::vector<int32_t>* documents, uint64_t salt) {
  auto rng = make_rng(salt);
  Decoder<double> model(config);
  model.init_random(rng(), 0.5);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (int i = 0; i < model.params().size(); ++i) {
    const ParameterInfo& p = model.params().info(i);
    if (p.name.find("norm") != std::string::npos || p.name.find("bias") != std::string::npos)
      for (int64_t j = 0; j < p.numel; ++j) model.params().value(i)[j] += normal(rng);
  }
  const int64_t B = 2, S = 5;
  std::uniform_int_distribution<int32_t> tok(0, int32_t(config.vocab_size) - 1);
  std::vector<int32_t> tokens(B * S), targets(B * S);
  for (auto& t : tokens) t = tok(rng);
  for (auto& t : targets) t = tok(rng);
  targets[3] = kIgnoreIndex;
  Batch batch{B, S, tokens.data(), targets.data(), documents};

  ForwardOptions train;
  train.keep_activations = true;
  model.params().zero_gradients();
  model.forward(batch, train);
  model.backward();

  auto loss = [&] { return model.forward(batch).loss; };
  const double h = 1e-6;
  std::uniform_int_distribution<int> pick(0, 1 << 30);
  for (int i = 0; i < model.params().size(); ++i) {
    const ParameterInfo& p = model.params().info(i);
    double* w = model.params().value(i);
    const double* g = model.params().grad(i);
    ASSERT_NE(g, nullptr) << p.name;
    double worst = 0, scale = 1e-4;
    for (int s = 0; s < 6; ++s) {
      int64_t j = pick(rng) % p.numel;
      double saved = w[j];
      w[j] = saved + h;
      double up = loss();
      w[j] = saved - h;
      double down = loss();
      w[j] = saved;
      double numeric = (up - down) / (2 * h);
      worst = std::max(worst, std::abs(numeric - g[j]));
      scale = std::max(scale, std::abs(numeric));
    }
    // lse travels in fp32 through flash4 (as on the GPU), which bounds the agreement.
    EXPECT_LT(worst / scale, 2e-5) << config.model_type << " " << p.name << ": max |analytic - numeric| " << worst;
  }
}

TEST(DecoderGradient, LlamaWithGqaAndTiedEmbeddings) {
  ModelConfig c = tiny("llama");
  c.tie_word_embeddings = true;
  expect_gradients_match(c, nullptr, 11);
}

TEST(DecoderGradient, LlamaUntiedWithLlama3RopeScalingAndAttentionBias) {
  ModelConfig c = tiny("llama");
  c.attention_bias = true;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 16;
  expect_gradients_match(c, nullptr, 12);
}

TEST(DecoderGradient, Qwen2WithQkvBias) { expect_gradients_match(tiny("qwen2"), nullptr, 13); }

TEST(DecoderGradient, Qwen3WithQkNorm) { expect_gradients_match(tiny("qwen3"), nullptr, 14); }

TEST(DecoderGradient, MistralWithSlidingWindowOverPackedDocuments) {
  ModelConfig c = tiny("mistral");
  c.sliding_window = 2;
  std::vector<int32_t> documents = {0, 3, 7, 10};  // crosses the row boundary at 5
  expect_gradients_match(c, &documents, 15);
}

TEST(Decoder, DocumentsDoNotSeeEachOther) {
  auto rng = make_rng(16);
  Decoder<double> model(tiny("llama"));
  model.init_random(rng(), 0.5);
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6}, targets = {2, 3, 4, 5, 6, 7};
  std::vector<int32_t> documents = {0, 2, 6};
  model.forward(Batch{1, 6, tokens.data(), targets.data(), &documents});
  std::vector<double> packed = model.logits();
  // The second document alone, as its own batch, gives the same logits.
  model.forward(Batch{1, 4, tokens.data() + 2, targets.data() + 2, nullptr});
  const int64_t V = 11;
  for (int64_t i = 0; i < 4 * V; ++i) EXPECT_NEAR(model.logits()[i], packed[2 * V + i], 1e-12);
}

TEST(Decoder, SkippedLayerLeavesTheResidualStreamAlone) {
  auto rng = make_rng(17);
  ModelConfig one = tiny("llama");
  one.num_hidden_layers = 1;
  Decoder<double> two(tiny("llama")), single(one);
  two.init_random(rng(), 0.5);
  // `single` holds layer 1 of `two` as its only layer; all else equal.
  for (int i = 0; i < single.params().size(); ++i) {
    std::string name = single.params().info(i).name;
    std::string source = name;
    if (name.rfind("model.layers.0.", 0) == 0) source = "model.layers.1." + name.substr(15);
    const double* src = two.params().value(two.params().index(source));
    std::copy(src, src + single.params().info(i).numel, single.params().value(i));
  }
  std::vector<int32_t> tokens = {1, 5, 9, 2}, targets = {5, 9, 2, 0};
  ForwardOptions skip_first;
  skip_first.skip_layers = {true, false};
  double skipped = two.forward(Batch{1, 4, tokens.data(), targets.data(), nullptr}, skip_first).loss;
  double reference = single.forward(Batch{1, 4, tokens.data(), targets.data(), nullptr}).loss;
  EXPECT_NEAR(skipped, reference, 1e-12);
}

TEST(Decoder, OutOfVocabularyTokenIsAClearError) {
  Decoder<float> model(tiny("llama"));
  std::vector<int32_t> tokens = {1, 99}, targets = {2, 3};
  try {
    model.forward(Batch{1, 2, tokens.data(), targets.data(), nullptr});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 99"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace adept

namespace adept {
namespace {

TEST(Decoder, CachedDecodingEqualsTheFullForward) {
  auto rng = testing_support::make_rng(18);
  for (const char* type : {"llama", "qwen3"}) {
    ModelConfig c = tiny(type);
    Decoder<double> model(c);
    model.init_random(rng(), 0.5);
    std::vector<int32_t> tokens = {3, 1, 4, 1, 5, 9, 2}, targets(7, 0);
    model.forward(Batch{1, 7, tokens.data(), targets.data(), nullptr});
    std::vector<double> full = model.logits();
    auto cache = model.make_cache(16);
    // A prompt of 4 tokens at once, then one token at a time.
    std::vector<double> last = model.forward_cached(tokens.data(), 4, cache);
    for (int64_t v = 0; v < c.vocab_size; ++v) EXPECT_NEAR(last[v], full[3 * c.vocab_size + v], 1e-9) << type;
    for (int64_t i = 4; i < 7; ++i) {
      last = model.forward_cached(tokens.data() + i, 1, cache);
      for (int64_t v = 0; v < c.vocab_size; ++v) EXPECT_NEAR(last[v], full[i * c.vocab_size + v], 1e-9) << type;
    }
    EXPECT_EQ(cache.length, 7);
  }
}

}  // namespace
}  // namespace adept
