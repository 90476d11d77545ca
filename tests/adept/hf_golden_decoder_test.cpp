// adept's CPU decoder against Hugging Face transformers on the tiny random models of
// tools/fixtures/make_hf_model_fixtures.py (golden logits, loss and gradients computed by
// transformers in float32), and the export path: an identity-expanded model written by
// save_checkpoint reloads with the same logits. (On the GPU machine,
// tools/fixtures/check_export_in_transformers.py loads those exports in transformers:
// set ADEPT_EXPORT_DIR to keep them.) Skipped until tests/fixtures/hf/ exists.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "io/hf_checkpoint.hpp"
#include "io/safetensors.hpp"
#include "method/expand.hpp"
#include "model/decoder.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
const std::string kHf = std::string(ADEPT_SOURCE_DIR) + "/tests/fixtures/hf";

// ||got - want|| / ||want||, the tolerance measure of fp32 vs fp32 with different
// summation orders.
double relative_error(const float* got, const float* want, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

std::unique_ptr<Decoder<float>> decoder_from(const HfCheckpoint& ckpt) {
  auto model = std::make_unique<Decoder<float>>(ckpt.config.model);
  ParameterStore<float>& p = model->params();
  for (int i = 0; i < p.size(); ++i) {
    const HostTensor& t = ckpt.tensors.at(p.info(i).name);
    EXPECT_EQ(int64_t(t.values.size()), p.info(i).numel) << p.info(i).name;
    std::copy(t.values.begin(), t.values.end(), p.value(i));
  }
  return model;
}

// transformers' causal-LM loss: labels = input_ids, shifted inside the model, so the
// last position of each row predicts nothing.
struct GoldenBatch {
  int64_t B = 0, S = 0;
  std::vector<int32_t> tokens, targets;
  Batch batch() const { return Batch{B, S, tokens.data(), targets.data(), nullptr}; }
};

GoldenBatch golden_batch(const SafetensorsFile& golden) {
  GoldenBatch g;
  const auto& shape = golden.tensor("input_ids").shape;
  g.B = shape.at(0), g.S = shape.at(1);
  for (float id : golden.read_f32("input_ids")) g.tokens.push_back(int32_t(id));
  g.targets.assign(g.tokens.size(), kIgnoreIndex);
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t s = 0; s + 1 < g.S; ++s) g.targets[b * g.S + s] = g.tokens[b * g.S + s + 1];
  return g;
}

class HfGoldenDecoder : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return kHf + "/" + GetParam(); }
  void SetUp() override {
    if (!fs::exists(dir() + "/golden.safetensors"))
      GTEST_SKIP() << dir() << " not generated yet (tools/fixtures/make_hf_model_fixtures.py)";
  }
};

TEST_P(HfGoldenDecoder, LogitsLossAndGradientsMatchTransformers) {
  HfCheckpoint ckpt = load_checkpoint(dir());
  SafetensorsFile golden(dir() + "/golden.safetensors");
  GoldenBatch g = golden_batch(golden);
  auto model = decoder_from(ckpt);
  model->params().allocate_gradients();
  model->params().zero_gradients();
  ForwardOptions fo;
  fo.keep_activations = true;
  const double loss = model->forward(g.batch(), fo).loss;
  model->backward();

  std::vector<float> want_logits = golden.read_f32("logits");
  ASSERT_EQ(model->logits().size(), want_logits.size());
  const double logits_error = relative_error(model->logits().data(), want_logits.data(), want_logits.size());
  std::printf("[ info ] %s: logits relative error %.3g\n", GetParam().c_str(), logits_error);
  EXPECT_LT(logits_error, 1e-4);
  const double want_loss = golden.read_f32("loss").at(0);
  EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss);

  const ParameterStore<float>& p = model->params();
  int compared = 0;
  for (const SafetensorsTensor& t : golden.tensors()) {
    const std::string& name = t.name;
    if (name.rfind("grad.", 0) != 0) continue;
    const std::string tensor = name.substr(5);
    const int i = p.index(tensor);
    std::vector<float> want = golden.read_f32(name);
    ASSERT_EQ(int64_t(want.size()), p.info(i).numel) << tensor;
    const double err = relative_error(p.grad(i), want.data(), want.size());
    std::printf("[ info ] %s: d %s relative error %.3g\n", GetParam().c_str(), tensor.c_str(), err);
    EXPECT_LT(err, 1e-4) << tensor;
    ++compared;
  }
  EXPECT_GE(compared, 5);
}

// Expansion after layer 0 adds a block that writes zero into the residual stream: the
// written checkpoint has one more layer, reloads, and gives transformers' logits again.
TEST_P(HfGoldenDecoder, ExpandedExportReloadsWithTheSameLogits) {
  HfCheckpoint ckpt = load_checkpoint(dir());
  SafetensorsFile golden(dir() + "/golden.safetensors");
  GoldenBatch g = golden_batch(golden);
  auto original = decoder_from(ckpt);
  Expansion expansion;
  Decoder<float> expanded = expand_layers(*original, {0}, &expansion);
  ASSERT_EQ(expanded.config().num_hidden_layers, ckpt.config.model.num_hidden_layers + 1);

  fs::path out;
  if (const char* keep = std::getenv("ADEPT_EXPORT_DIR")) {
    out = fs::path(keep) / GetParam();
  } else {
    out = fs::temp_directory_path() / ("adept_export_" + GetParam() + "_" + std::to_string(::getpid()));
  }
  fs::remove_all(out);
  HfModelConfig config = ckpt.config;
  config.model = expanded.config();
  std::vector<TensorRef> refs;
  const ParameterStore<float>& p = expanded.params();
  for (int i = 0; i < p.size(); ++i)
    refs.push_back({p.info(i).name, p.info(i).shape, std::span<const float>(p.value(i), size_t(p.info(i).numel))});
  save_checkpoint(out.string(), config, refs, "", DType::F32);

  HfCheckpoint reloaded = load_checkpoint(out.string());
  EXPECT_EQ(reloaded.config.model.num_hidden_layers, ckpt.config.model.num_hidden_layers + 1);
  auto model = decoder_from(reloaded);
  model->forward(g.batch());
  original->forward(g.batch());
  // Bit-identical to the unexpanded model: the inserted block adds exact zeros.
  EXPECT_EQ(model->logits(), original->logits());
  std::vector<float> want = golden.read_f32("logits");
  EXPECT_LT(relative_error(model->logits().data(), want.data(), want.size()), 1e-4);
  if (!std::getenv("ADEPT_EXPORT_DIR")) fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Types, HfGoldenDecoder, ::testing::Values("llama", "mistral", "qwen2", "qwen3"));

}  // namespace
}  // namespace adept
