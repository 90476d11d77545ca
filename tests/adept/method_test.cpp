// The ADEPT method's pieces on the CPU reference: probing never touches weights,
// expansion is an exact identity, only inserted layers train, the learning-rate
// multipliers follow the formula, and re-estimating importance changes nothing but them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/random.hpp"
#include "method/decoupled_lr.hpp"
#include "method/expand.hpp"
#include "method/layer_importance.hpp"
#include "train/trainer.hpp"

namespace adept {
namespace {

using testing_support::make_rng;

ModelConfig model_config(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 256;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.attention_bias = type == "llama";
  return c;
}

std::vector<TokenBatch> random_batches(std::mt19937_64& rng, int n, int64_t B, int64_t S) {
  std::vector<int32_t> stream(4096);
  std::uniform_int_distribution<int32_t> tok(0, 255);
  for (auto& t : stream) t = tok(rng);
  WindowSampler sampler(stream, S, rng());
  std::vector<TokenBatch> out;
  for (int i = 0; i < n; ++i) out.push_back(sampler.random_batch(B, i, 0));
  return out;
}

Decoder<float> random_model(const std::string& type, std::mt19937_64& rng) {
  Decoder<float> m(model_config(type));
  m.init_random(rng(), 0.2);
  // Norms and biases away from their init so copies of them are actually tested.
  std::normal_distribution<double> normal(0.0, 0.2);
  for (int i = 0; i < m.params().size(); ++i) {
    const std::string& n = m.params().info(i).name;
    if (n.find("norm") != std::string::npos || n.find("bias") != std::string::npos)
      for (int64_t j = 0; j < m.params().info(i).numel; ++j) m.params().value(i)[j] += float(normal(rng));
  }
  return m;
}

class ExpansionIsIdentity : public ::testing::TestWithParam<const char*> {};

TEST_P(ExpansionIsIdentity, LogitsAreExactlyEqual) {
  auto rng = make_rng(31);
  Decoder<float> base = random_model(GetParam(), rng);
  Expansion e;
  Decoder<float> expanded = expand_layers(base, {0, 2}, &e);
  EXPECT_EQ(expanded.config().num_hidden_layers, 6);
  EXPECT_EQ(e.inserted, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(e.origin, (std::vector<int64_t>{0, 0, 1, 2, 2, 3}));
  TokenBatch b = random_batches(rng, 1, 2, 16)[0];
  base.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr});
  expanded.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr});
  ASSERT_EQ(base.logits().size(), expanded.logits().size());
  EXPECT_EQ(std::memcmp(base.logits().data(), expanded.logits().data(), sizeof(float) * base.logits().size()), 0)
      << "expanded model's logits differ from the original's";
}

INSTANTIATE_TEST_SUITE_P(Families, ExpansionIsIdentity, ::testing::Values("llama", "qwen2", "qwen3"));

TEST(Expansion, CopiesAreClonesWithZeroedOutputProjections) {
  auto rng = make_rng(32);
  Decoder<float> base = random_model("llama", rng);
  Expansion e;
  Decoder<float> expanded = expand_layers(base, {1}, &e);
  const auto& P = expanded.params();
  auto tensor = [&](const std::string& n) { return P.value(P.index(n)); };
  EXPECT_EQ(std::memcmp(tensor("model.layers.2.mlp.up_proj.weight"), tensor("model.layers.1.mlp.up_proj.weight"),
                        sizeof(float) * 48 * 32), 0);
  for (const char* zeroed : {"model.layers.2.self_attn.o_proj.weight", "model.layers.2.self_attn.o_proj.bias",
                             "model.layers.2.mlp.down_proj.weight"}) {
    int i = P.index(zeroed);
    for (int64_t j = 0; j < P.info(i).numel; ++j) ASSERT_EQ(P.value(i)[j], 0.0f) << zeroed;
  }
}

TEST(Expansion, UniformLayersFollowLlamaPro) {
  EXPECT_EQ(uniform_expansion_layers(8, 2), (std::vector<int64_t>{3, 7}));
  EXPECT_EQ(uniform_expansion_layers(6, 3), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_THROW(uniform_expansion_layers(4, 5), Error);
}

TEST(Expansion, BadLayerListIsAClearError) {
  auto rng = make_rng(33);
  Decoder<float> base = random_model("llama", rng);
  EXPECT_THROW(expand_layers(base, {4}, nullptr), Error);
  EXPECT_THROW(expand_layers(base, {1, 1}, nullptr), Error);
}

TEST(Probe, MaskingOutIsTheLossRiseAndLeavesWeightsAlone) {
  auto rng = make_rng(34);
  Decoder<float> model = random_model("llama", rng);
  std::vector<float> before = model.params().values();
  auto probe = random_batches(rng, 2, 2, 16);
  LayerImportance imp = probe_layer_importance(model, probe, ImportanceMethod::masking_out);
  EXPECT_EQ(std::memcmp(before.data(), model.params().values().data(), sizeof(float) * before.size()), 0);
  ASSERT_EQ(imp.score.size(), 4u);
  // Layer 2's score, recomputed by hand.
  double with = 0, without = 0;
  int64_t n = 0;
  ForwardOptions skip;
  skip.skip_layers = {false, false, true, false};
  for (auto& b : probe) {
    with += model.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr}).loss_sum;
    auto r = model.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr}, skip);
    without += r.loss_sum;
    n += r.count;
  }
  EXPECT_NEAR(imp.score[2], (without - with) / double(n), 1e-9);
  EXPECT_NEAR(*std::max_element(imp.normalized.begin(), imp.normalized.end()), 1.0, 1e-12);
}

TEST(Probe, GradientMethodsRestoreTrainableFlagsAndGradients) {
  auto rng = make_rng(35);
  Decoder<float> model = random_model("qwen3", rng);
  train_only_layers(model, {3});
  for (float& g : model.params().gradients()) g = 0.25f;
  std::vector<float> grads = model.params().gradients();
  auto probe = random_batches(rng, 2, 2, 8);
  for (auto method : {ImportanceMethod::cumulative_gradient, ImportanceMethod::rank_aggregation, ImportanceMethod::fisher}) {
    LayerImportance imp = probe_layer_importance(model, probe, method);
    EXPECT_EQ(imp.score.size(), 4u);
    EXPECT_EQ(model.params().gradients(), grads) << importance_method_name(method);
    EXPECT_EQ(model.params().grad(model.embed_index()), nullptr) << importance_method_name(method);
  }
}

TEST(Probe, LeastImportantLayersAreTheLowestScores) {
  LayerImportance imp;
  imp.score = {0.5, 0.1, 0.9, 0.05, 0.3};
  EXPECT_EQ(least_important_layers(imp, 2), (std::vector<int64_t>{1, 3}));
  EXPECT_THROW(least_important_layers(imp, 6), Error);
}

TEST(DecoupledLr, MultipliersFollowTheFormulaOnAHandComputedCase) {
  // Matrices range over non-norm units [1, 5]; norms over all units [0.5, 5].
  std::vector<UnitEstimate> u = {{0, -1, false, 1.0}, {1, -1, false, 5.0}, {2, -1, false, 2.0},
                                 {3, -1, true, 0.5},  {4, -1, true, 3.2}};
  compute_lr_multipliers(u, false);
  EXPECT_DOUBLE_EQ(u[0].multiplier, 2.0);               // least important matrix: 2x
  EXPECT_DOUBLE_EQ(u[1].multiplier, 0.0);               // most important: protected
  EXPECT_DOUBLE_EQ(u[2].multiplier, 2.0 * 3.0 / 4.0);   // 2·(5−2)/(5−1)
  EXPECT_DOUBLE_EQ(u[3].multiplier, 2.0);               // 2·(5−0.5)/(5−0.5)
  EXPECT_DOUBLE_EQ(u[4].multiplier, 2.0 * 1.8 / 4.5);   // 2·(5−3.2)/(5−0.5)
  compute_lr_multipliers(u, true);
  EXPECT_DOUBLE_EQ(u[2].multiplier, 2.0 * 1.0 / 4.0);   // inverted: 2·(2−1)/(5−1)
  std::vector<UnitEstimate> flat = {{0, -1, false, 3.0}, {1, -1, false, 3.0}};
  compute_lr_multipliers(flat, false);
  EXPECT_DOUBLE_EQ(flat[0].multiplier, 1.0);  // zero range: plain learning rate
}

TEST(DecoupledLr, ImportanceIsMeanOfWeightTimesMeanAbsoluteGradient) {
  auto rng = make_rng(36);
  Decoder<float> model = random_model("llama", rng);
  train_only_layers(model, {1});
  auto probe = random_batches(rng, 2, 2, 8);
  auto units = estimate_unit_importance(model, probe, UnitGranularity::tensor);
  ASSERT_EQ(units.size(), layer_tensor_indices(model.layer(1)).size());
  // Recompute one unit (mlp.up_proj) by hand.
  int up = model.layer(1).up;
  auto& P = model.params();
  std::vector<double> mean_abs(P.info(up).numel, 0.0);
  ForwardOptions fo;
  fo.keep_activations = true;
  for (auto& b : probe) {
    P.zero_gradients();
    model.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr}, fo);
    model.backward();
    for (int64_t j = 0; j < P.info(up).numel; ++j) mean_abs[j] += std::abs(P.grad(up)[j]) / 2.0;
  }
  double expected = 0;
  for (int64_t j = 0; j < P.info(up).numel; ++j) expected += std::abs(P.value(up)[j]) * mean_abs[j];
  expected /= double(P.info(up).numel);
  for (auto& unit : units)
    if (unit.tensor == up) EXPECT_NEAR(unit.importance, expected, 1e-6 * expected);
}

TEST(DecoupledLr, RowGranularityGivesEveryMatrixRowItsOwnMultiplier) {
  auto rng = make_rng(37);
  Decoder<float> model = random_model("llama", rng);
  train_only_layers(model, {2});
  auto units = estimate_unit_importance(model, random_batches(rng, 1, 2, 8), UnitGranularity::row);
  compute_lr_multipliers(units, false);
  apply_lr_multipliers(model.params(), units);
  const ParameterInfo& gate = model.params().info(model.layer(2).gate);
  ASSERT_EQ(gate.row_multiplier.size(), 48u);
  EXPECT_TRUE(model.params().info(model.layer(2).input_norm).row_multiplier.empty());
  double lo = 2, hi = 0;
  for (auto& u : units)
    if (!u.is_norm) lo = std::min(lo, u.multiplier), hi = std::max(hi, u.multiplier);
  EXPECT_DOUBLE_EQ(lo, 0.0);
  EXPECT_DOUBLE_EQ(hi, 2.0);
}

TEST(DecoupledLr, EstimationChangesNothingButTheMultipliers) {
  // Two runs of the same training: one re-estimates importance before every step and
  // discards the result. Weights must be bit-identical at the end.
  auto rng = make_rng(38);
  Decoder<float> base = random_model("llama", rng);
  auto train_batches = random_batches(rng, 4, 2, 16);
  auto probe = random_batches(rng, 1, 2, 16);
  auto run = [&](bool estimate) {
    Decoder<float> m = expand_layers(base, {1}, nullptr);
    train_only_layers(m, {2});
    AdamW opt(AdamWConfig{});
    TrainConfig cfg;
    cfg.steps = 4, cfg.warmup_steps = 1, cfg.lr = 1e-2;
    for (int64_t s = 0; s < 4; ++s) {
      if (estimate) estimate_unit_importance(m, probe, UnitGranularity::tensor);
      train_step(m, opt, {train_batches[s]}, cfg, s);
    }
    return m.params().values();
  };
  std::vector<float> plain = run(false), estimated = run(true);
  EXPECT_EQ(std::memcmp(plain.data(), estimated.data(), sizeof(float) * plain.size()), 0);
}

TEST(DecoupledLr, EstimatesThroughTheTrainingEngineChangeNothingButTheMultipliers) {
  // The training loop as `adept run` drives it: importance estimated before every step
  // through the engine's gradient (the path a GPU engine takes too) and discarded,
  // against the same loop without estimates. Weights and losses must be bit-identical.
  auto rng = make_rng(40);
  Decoder<float> base = random_model("qwen3", rng);
  auto batches = random_batches(rng, 5, 2, 16);
  auto probe = random_batches(rng, 2, 2, 16);
  TrainConfig cfg;
  cfg.steps = 5, cfg.warmup_steps = 1, cfg.lr = 1e-2, cfg.eval_every = 0;
  auto run = [&](bool estimate, std::vector<double>& losses) {
    Expansion e;
    Decoder<float> m = expand_layers(base, {0, 2}, &e);
    train_only_layers(m, e.inserted);
    std::unique_ptr<TrainEngine> engine = make_cpu_engine(m, adamw_config(cfg));
    TrainData data;
    data.next = [&](int64_t step, int64_t) { return batches[step]; };
    TrainOptions o;
    o.show_progress = false;
    if (estimate)
      o.before_step = [&](int64_t, TrainEngine& eng) {
        estimate_unit_importance(m, probe, UnitGranularity::row, [&](const TokenBatch& b) { eng.gradient(b); });
      };
    TrainResult r = train(m, *engine, cfg, data, o);
    for (const StepRecord& s : r.steps) losses.push_back(s.loss);
    return m.params().values();
  };
  std::vector<double> plain_losses, estimated_losses;
  std::vector<float> plain = run(false, plain_losses), estimated = run(true, estimated_losses);
  EXPECT_EQ(plain_losses, estimated_losses);
  EXPECT_EQ(std::memcmp(plain.data(), estimated.data(), sizeof(float) * plain.size()), 0);
}

TEST(DecoupledLr, AdeptTrainingLeavesOriginalParametersBitIdentical) {
  auto rng = make_rng(39);
  Decoder<float> base = random_model("qwen2", rng);
  Expansion e;
  Decoder<float> m = expand_layers(base, {0, 3}, &e);
  train_only_layers(m, e.inserted);
  std::vector<float> before = m.params().values();
  auto batches = random_batches(rng, 3, 2, 16);
  auto probe = random_batches(rng, 1, 2, 16);
  AdamW opt(AdamWConfig{});
  TrainConfig cfg;
  cfg.steps = 3, cfg.warmup_steps = 0, cfg.lr = 1e-2;
  for (int64_t s = 0; s < 3; ++s) {
    auto units = estimate_unit_importance(m, probe, UnitGranularity::tensor);
    compute_lr_multipliers(units, false);
    apply_lr_multipliers(m.params(), units);
    train_step(m, opt, {batches[s]}, cfg, s);
  }
  std::set<int> inserted_tensors;
  for (int64_t l : e.inserted)
    for (int i : layer_tensor_indices(m.layer(l))) inserted_tensors.insert(i);
  int changed = 0;
  for (int i = 0; i < m.params().size(); ++i) {
    const ParameterInfo& p = m.params().info(i);
    bool same = std::memcmp(m.params().value(i), before.data() + p.offset, sizeof(float) * p.numel) == 0;
    if (!inserted_tensors.count(i)) EXPECT_TRUE(same) << p.name;
    changed += !same;
  }
  EXPECT_GT(changed, 0);
}

}  // namespace
}  // namespace adept
