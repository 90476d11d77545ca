// The optimizer and the training loop: exact AdamW arithmetic with learning-rate
// multipliers, frozen tensors untouched, non-finite steps skipped, accumulation equal to
// one large batch, and a tiny model that learns a small corpus.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/random.hpp"
#include "data/window_sampler.hpp"
#include "model/decoder.hpp"
#include "optim/adamw.hpp"
#include "train/trainer.hpp"

namespace adept {
namespace {

using testing_support::make_rng;

ModelConfig small_model() {
  ModelConfig c;
  c.vocab_size = 256;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.tie_word_embeddings = true;
  c.max_position_embeddings = 128;
  return c;
}

std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> v;
  for (unsigned char ch : s) v.push_back(ch);
  return v;
}

TEST(AdamW, OneStepWithTensorAndRowMultipliersMatchesHandComputation) {
  ParameterStore<float> store;
  int w = store.add("w", {2, 2}, true);     // decays, rows scaled
  int n = store.add("norm", {2}, false);  // no decay
  store.allocate();
  float* wv = store.value(w);
  wv[0] = 1.0f, wv[1] = -2.0f, wv[2] = 0.5f, wv[3] = 3.0f;
  store.value(n)[0] = 1.0f, store.value(n)[1] = 1.0f;
  float* g = store.grad(w);
  g[0] = 0.5f, g[1] = -0.25f, g[2] = 4.0f, g[3] = -1.0f;
  store.grad(n)[0] = 2.0f, store.grad(n)[1] = 0.0f;
  store.info(w).lr_multiplier = 0.5f;
  store.info(w).row_multiplier = {2.0f, 0.0f};
  store.info(n).lr_multiplier = 1.5f;

  AdamWConfig cfg;
  cfg.beta1 = 0.9, cfg.beta2 = 0.99, cfg.eps = 1e-8, cfg.weight_decay = 0.1;
  AdamW opt(cfg);
  opt.step(store, 0.01);
  // Step 1: m̂ = g, v̂ = g², so the Adam direction is g / (|g| + eps).
  // Row 0 of w: lr = 0.01 · 0.5 · 2 = 0.01;  w ← w·(1 − 0.01·0.1) − 0.01·g/(|g|+eps)
  auto dir = [](double gg) { return gg / (std::abs(gg) + 1e-8); };
  EXPECT_FLOAT_EQ(wv[0], float(1.0 * (1 - 0.001) - 0.01 * dir(0.5)));
  EXPECT_FLOAT_EQ(wv[1], float(-2.0 * (1 - 0.001) - 0.01 * dir(-0.25)));
  // Row 1: multiplier 0, no update at all (not even decay).
  EXPECT_EQ(wv[2], 0.5f);
  EXPECT_EQ(wv[3], 3.0f);
  // norm: lr = 0.015, no weight decay; a zero gradient leaves the element alone.
  EXPECT_FLOAT_EQ(store.value(n)[0], float(1.0 - 0.015 * dir(2.0)));
  EXPECT_EQ(store.value(n)[1], 1.0f);
}

TEST(AdamW, FrozenTensorHasNoGradientAndNoState) {
  ParameterStore<float> store;
  int a = store.add("a", {3}, true);
  int b = store.add("b", {5}, true);
  store.allocate();
  store.set_trainable(a, false);
  store.allocate_gradients();
  EXPECT_EQ(store.grad(a), nullptr);
  EXPECT_EQ(store.trainable_numel(), 5);
  AdamW opt(AdamWConfig{});
  for (int i = 0; i < 5; ++i) store.grad(b)[i] = 1.0f;
  opt.step(store, 0.1);
  EXPECT_EQ(opt.first_moment().size(), 5u);
}

TEST(Schedule, WarmupIsLinearAndCosineEndsAtTheFloor) {
  EXPECT_DOUBLE_EQ(cosine_schedule(0, 10, 100, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(cosine_schedule(9, 10, 100, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(cosine_schedule(10, 10, 100, 1.0, 0.1), 1.0);
  EXPECT_NEAR(cosine_schedule(55, 10, 100, 1.0, 0.1), 0.55, 1e-12);  // half way: mean of 1 and 0.1
  EXPECT_NEAR(cosine_schedule(100, 10, 100, 1.0, 0.1), 0.1, 1e-12);
}

TEST(GradientClipping, ScalesToTheMaximumNormAndReportsTheOriginal) {
  ParameterStore<float> store;
  int a = store.add("a", {2}, true);
  store.allocate();
  store.grad(a)[0] = 3.0f, store.grad(a)[1] = 4.0f;
  EXPECT_DOUBLE_EQ(clip_gradient_norm(store, 1.0), 5.0);
  EXPECT_FLOAT_EQ(store.grad(a)[0], 0.6f);
  EXPECT_FLOAT_EQ(store.grad(a)[1], 0.8f);
}

TEST(Training, FrozenTensorsAreBitIdenticalAfterTraining) {
  auto rng = make_rng(21);
  Decoder<float> model(small_model());
  model.init_random(rng(), 0.05);
  auto& P = model.params();
  // Freeze everything except layer 1 (as ADEPT freezes all but the inserted layers).
  for (int i = 0; i < P.size(); ++i) P.set_trainable(i, P.info(i).name.rfind("model.layers.1.", 0) == 0);
  P.allocate_gradients();
  std::vector<float> before = P.values();
  TrainConfig cfg;
  cfg.seq_len = 16, cfg.batch_size = 2, cfg.steps = 5, cfg.warmup_steps = 1, cfg.lr = 1e-2;
  WindowSampler data(bytes_of(std::string(200, 'a') + "bcdefghij"), cfg.seq_len, 1);
  TrainOptions quiet;
  quiet.show_progress = false;
  train(model, cfg, data, nullptr, quiet);
  int changed_trainable = 0;
  for (int i = 0; i < P.size(); ++i) {
    const ParameterInfo& p = P.info(i);
    bool same = std::memcmp(P.value(i), before.data() + p.offset, sizeof(float) * p.numel) == 0;
    if (!p.trainable) EXPECT_TRUE(same) << p.name << " changed although frozen";
    changed_trainable += p.trainable && !same;
  }
  EXPECT_GT(changed_trainable, 0);
}

TEST(Training, NonFiniteLossSkipsTheStep) {
  auto rng = make_rng(22);
  Decoder<float> model(small_model());
  model.init_random(rng(), 0.05);
  auto& P = model.params();
  P.value(model.final_norm_index())[0] = NAN;
  std::vector<float> before = P.values();
  TrainConfig cfg;
  cfg.seq_len = 8, cfg.batch_size = 2, cfg.steps = 1, cfg.warmup_steps = 0;
  WindowSampler data(bytes_of("some text to sample windows from"), cfg.seq_len, 1);
  AdamW opt(AdamWConfig{});
  StepRecord r = train_step(model, opt, {data.random_batch(2, 0, 0)}, cfg, 0);
  EXPECT_TRUE(r.skipped);
  EXPECT_EQ(opt.steps_taken(), 0);
  EXPECT_EQ(std::memcmp(P.values().data(), before.data(), sizeof(float) * before.size()), 0);
}

TEST(Training, AccumulatedMicroBatchesEqualOneLargeBatch) {
  auto rng = make_rng(23);
  Decoder<double> model(small_model());
  model.init_random(rng(), 0.05);
  std::uniform_int_distribution<int32_t> tok(0, 255);
  const int64_t S = 6;
  std::vector<int32_t> tokens(4 * S), targets(4 * S);
  for (auto& t : tokens) t = tok(rng);
  for (auto& t : targets) t = tok(rng);
  targets[5] = kIgnoreIndex;
  int64_t counted = 4 * S - 1;
  ForwardOptions fo;
  fo.keep_activations = true;
  model.params().zero_gradients();
  model.forward(Batch{4, S, tokens.data(), targets.data(), nullptr}, fo);
  model.backward();
  std::vector<double> whole = model.params().gradients();
  model.params().zero_gradients();
  fo.grad_scale = 1.0 / double(counted);
  for (int half = 0; half < 2; ++half) {
    model.forward(Batch{2, S, tokens.data() + half * 2 * S, targets.data() + half * 2 * S, nullptr}, fo);
    model.backward();
  }
  const std::vector<double>& accumulated = model.params().gradients();
  for (size_t i = 0; i < whole.size(); ++i) ASSERT_NEAR(accumulated[i], whole[i], 1e-12 + 1e-9 * std::abs(whole[i]));
}

TEST(Training, TinyModelLearnsASmallCorpus) {
  auto rng = make_rng(24);
  Decoder<float> model(small_model());
  model.init_random(rng(), 0.02);
  std::string text = "the quick brown fox jumps over the lazy dog. ";
  std::string corpus;
  for (int i = 0; i < 20; ++i) corpus += text;
  TrainConfig cfg;
  cfg.seq_len = 32, cfg.batch_size = 8, cfg.steps = 150, cfg.warmup_steps = 10, cfg.lr = 1e-2, cfg.grad_clip = 1.0;
  cfg.seed = rng();
  WindowSampler data(bytes_of(corpus), cfg.seq_len, cfg.seed);
  TrainOptions quiet;
  quiet.show_progress = false;
  TrainResult r = train(model, cfg, data, &data, quiet);
  ASSERT_EQ(r.evals.size(), 4u);           // before, at 50 and 100, and at the end
  EXPECT_GT(r.evals.front().loss, 5.0);   // ~ln(256) = 5.55 at random init
  EXPECT_LT(r.evals.back().loss, 0.5);    // the sentence is memorised
  EXPECT_EQ(r.skipped_steps, 0);
}

}  // namespace
}  // namespace adept
