// The tiny transformers-made models of tools/fixtures/make_hf_model_fixtures.py (run
// on a machine with torch; skipped until tests/fixtures/hf/ exists): their config.json
// and weights load, and golden.safetensors holds what the decoder tests compare with.
#include <gtest/gtest.h>

#include <filesystem>

#include "io/hf_checkpoint.hpp"
#include "io/safetensors.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
const std::string kHf = std::string(ADEPT_SOURCE_DIR) + "/tests/fixtures/hf";

class HfModelFixture : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return kHf + "/" + GetParam(); }
  void SetUp() override {
    if (!fs::exists(dir() + "/config.json"))
      GTEST_SKIP() << dir() << " not generated yet (tools/fixtures/make_hf_model_fixtures.py)";
  }
};

TEST_P(HfModelFixture, LoadsWithEveryTensorTheConfigExpects) {
  HfCheckpoint ckpt = load_checkpoint(dir());
  const ModelConfig& c = ckpt.config.model;
  EXPECT_EQ(c.model_type, GetParam());
  EXPECT_EQ(c.vocab_size, 128);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(ckpt.tensors.size(), expected_tensors(c).size());
  if (GetParam() == "llama") EXPECT_EQ(c.rope_scaling.type, "llama3");
  if (GetParam() == "mistral") EXPECT_EQ(c.sliding_window, 8);
  if (GetParam() == "qwen2") {
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(ckpt.tensors.count("lm_head.weight"), 0u);
  }
  if (GetParam() == "qwen3") EXPECT_EQ(c.head_dim, 32);
}

TEST_P(HfModelFixture, GoldenHoldsInputsLogitsLossAndGradients) {
  SafetensorsFile golden(dir() + "/golden.safetensors");
  EXPECT_EQ(golden.tensor("input_ids").shape, (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(golden.tensor("logits").shape, (std::vector<int64_t>{2, 16, 128}));
  EXPECT_TRUE(golden.tensor("loss").shape.empty());
  EXPECT_NE(golden.find("grad.model.layers.0.self_attn.q_proj.weight"), nullptr);
  for (float id : golden.read_f32("input_ids")) EXPECT_TRUE(id >= 0 && id < 128 && id == float(int(id)));
}

INSTANTIATE_TEST_SUITE_P(Types, HfModelFixture, ::testing::Values("llama", "mistral", "qwen2", "qwen3"));

}  // namespace
}  // namespace adept
