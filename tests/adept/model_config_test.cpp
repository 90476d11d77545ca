// ModelConfig validation: each bad field is named in the error.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "model/config.hpp"

namespace adept {
namespace {

ModelConfig small_llama() {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  return c;
}

std::string validation_error(ModelConfig c) {
  try {
    c.finalize_and_validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, HeadDimDefaultsToHiddenOverHeads) {
  ModelConfig c = small_llama();
  c.finalize_and_validate();
  EXPECT_EQ(c.head_dim, 4);
}

TEST(ModelConfig, UnknownModelTypeIsNamed) {
  ModelConfig c = small_llama();
  c.model_type = "gpt2";
  EXPECT_NE(validation_error(c).find("model_type 'gpt2'"), std::string::npos);
}

TEST(ModelConfig, HeadsNotMultipleOfKvHeadsIsNamed) {
  ModelConfig c = small_llama();
  c.num_key_value_heads = 3;
  EXPECT_NE(validation_error(c).find("num_key_value_heads"), std::string::npos);
}

TEST(ModelConfig, NonPositiveSizeIsNamed) {
  ModelConfig c = small_llama();
  c.intermediate_size = 0;
  EXPECT_NE(validation_error(c).find("intermediate_size"), std::string::npos);
}

TEST(ModelConfig, QwenFamiliesDeriveTheirModules) {
  ModelConfig c = small_llama();
  c.model_type = "qwen2";
  EXPECT_TRUE(c.has_qkv_bias());
  EXPECT_FALSE(c.has_o_bias());
  EXPECT_FALSE(c.has_qk_norm());
  c.model_type = "qwen3";
  EXPECT_FALSE(c.has_qkv_bias());
  EXPECT_TRUE(c.has_qk_norm());
}

}  // namespace
}  // namespace adept
