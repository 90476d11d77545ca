// config.json <-> ModelConfig: the four model types as transformers writes them, the
// defaults transformers applies, refusals naming field and file, and a lossless round trip.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "io/hf_config.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

// Llama-3.1-8B's config.json, shrunk.
const char* kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 224, "max_position_embeddings": 131072,
  "mlp_bias": false, "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
  "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

// Qwen2.5-0.5B's config.json, shrunk.
const char* kQwen25 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
  "intermediate_size": 128, "max_position_embeddings": 32768, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

const char* kMinimal = R"("vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2)";

HfModelConfig parse(const std::string& text) { return parse_hf_config(text, "config.json"); }

std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string with(const std::string& model_type, const std::string& extra = "") {
  return "{\"model_type\": \"" + model_type + "\", " + kMinimal + (extra.empty() ? "" : ", " + extra) + "}";
}

TEST(HfConfigRead, Llama31WithLlama3RopeScalingAndAnEosList) {
  HfModelConfig h = parse(kLlama31);
  const ModelConfig& c = h.model;
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 224);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_id, 128001);
  EXPECT_EQ(h.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(h.torch_dtype, "bfloat16");
}

TEST(HfConfigRead, Qwen25WithSlidingWindowSwitchedOff) {
  HfModelConfig h = parse(kQwen25);
  EXPECT_EQ(h.model.model_type, "qwen2");
  EXPECT_EQ(h.model.sliding_window, 0);  // use_sliding_window: false
  EXPECT_TRUE(h.model.tie_word_embeddings);
  EXPECT_TRUE(h.model.has_qkv_bias());
  EXPECT_EQ(h.model.bos_token_id, 151643);
  EXPECT_EQ(h.model.eos_token_id, 151643);
}

TEST(HfConfigRead, Qwen2SlidingWindowOnAllLayers) {
  auto c = parse(with("qwen2", R"("use_sliding_window": true, "sliding_window": 256, "max_window_layers": 0)")).model;
  EXPECT_EQ(c.sliding_window, 256);
}

TEST(HfConfigRead, Qwen2SlidingWindowOnSomeLayersIsRefused) {
  EXPECT_CONTAINS(parse_error(with("qwen2", R"("use_sliding_window": true, "sliding_window": 256, "max_window_layers": 1)")),
                  "config.json: field 'max_window_layers' = 1");
}

TEST(HfConfigRead, Qwen2MaxWindowLayersPastTheLastLayerMeansNoWindow) {
  auto c = parse(with("qwen2", R"("use_sliding_window": true, "sliding_window": 256, "max_window_layers": 28)")).model;
  EXPECT_EQ(c.sliding_window, 0);
}

TEST(HfConfigRead, MistralSlidingWindowNullMeansNone) {
  EXPECT_EQ(parse(with("mistral", R"("sliding_window": null)")).model.sliding_window, 0);
  EXPECT_EQ(parse(with("mistral", R"("sliding_window": 4096)")).model.sliding_window, 4096);
}

TEST(HfConfigRead, MissingFieldsTakeTransformersDefaultsPerModelType) {
  auto llama = parse(R"({"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
                         "num_hidden_layers": 2, "num_attention_heads": 4})").model;
  EXPECT_EQ(llama.num_key_value_heads, 4);  // None -> num_attention_heads
  EXPECT_EQ(llama.max_position_embeddings, 2048);
  EXPECT_EQ(llama.bos_token_id, 1);
  EXPECT_EQ(llama.eos_token_id, 2);
  auto mistral = parse(with("mistral")).model;
  EXPECT_EQ(mistral.sliding_window, 4096);
  auto qwen3 = parse(with("qwen3")).model;
  EXPECT_EQ(qwen3.head_dim, 128);  // Qwen3Config's default, not hidden / heads
  EXPECT_EQ(qwen3.bos_token_id, -1);
  EXPECT_TRUE(qwen3.has_qk_norm());
}

TEST(HfConfigRead, Qwen3ExplicitHeadDimAndAttentionBias) {
  auto c = parse(with("qwen3", R"("head_dim": 32, "attention_bias": true)")).model;
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_TRUE(c.has_qkv_bias());
  EXPECT_TRUE(c.has_o_bias());
}

TEST(HfConfigRead, RopeScalingTypeKeyIsAcceptedAsRopeType) {
  auto c = parse(with("llama", R"("rope_scaling": {"type": "linear", "factor": 2.0})")).model;
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_EQ(parse(with("llama", R"("rope_scaling": {"rope_type": "default"})")).model.rope_scaling.type, "");
}

TEST(HfConfigRead, RopeParametersOfNewerTransformers) {
  auto c = parse(with("llama", R"("rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0})")).model;
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "");
}

TEST(HfConfigRead, UnknownModelTypeNamesFieldAndFile) {
  EXPECT_CONTAINS(parse_error(with("gpt2")), "config.json: field 'model_type' is 'gpt2', which is not supported");
}

TEST(HfConfigRead, YarnRopeScalingIsRefused) {
  EXPECT_CONTAINS(parse_error(with("qwen3", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})")),
                  "config.json: field 'rope_scaling.rope_type' is 'yarn', which is not supported");
}

TEST(HfConfigRead, Llama3RopeScalingWithoutItsFactorsIsRefused) {
  EXPECT_CONTAINS(parse_error(with("llama", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0})")),
                  "field 'rope_scaling.low_freq_factor' is missing");
}

TEST(HfConfigRead, ActivationOtherThanSiluIsRefused) {
  EXPECT_CONTAINS(parse_error(with("llama", R"("hidden_act": "gelu")")),
                  "config.json: field 'hidden_act' is 'gelu', which is not supported");
}

TEST(HfConfigRead, WrongJsonTypeIsNamed) {
  EXPECT_CONTAINS(parse_error(R"({"model_type": "llama", "vocab_size": "128", "hidden_size": 64})"),
                  "config.json: field 'vocab_size' must be an integer, got \"128\"");
}

TEST(HfConfigRead, MissingRequiredSizeIsNamed) {
  EXPECT_CONTAINS(parse_error(R"({"model_type": "llama", "vocab_size": 128})"), "config.json: field 'hidden_size' is missing");
}

TEST(HfConfigRead, InconsistentValuesAreNamedWithTheFile) {
  EXPECT_CONTAINS(parse_error(R"({"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3})"),
                  "config.json: num_attention_heads (4) must be a multiple of num_key_value_heads (3)");
}

TEST(HfConfigRead, QuantizedCheckpointIsRefused) {
  EXPECT_CONTAINS(parse_error(with("llama", R"("quantization_config": {"quant_method": "gptq"})")),
                  "field 'quantization_config'");
}

TEST(HfConfigRead, ErrorsFromAFileNameThePath) {
  fs::path p = fs::temp_directory_path() / ("adept_io_config_" + std::to_string(::getpid()) + ".json");
  { std::ofstream(p) << with("falcon"); }
  try {
    read_model_config(p.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), p.string() + ": field 'model_type' is 'falcon'");
  }
  fs::remove(p);
}

TEST(HfConfigWrite, WritesWhatTransformersNeeds) {
  HfModelConfig h = parse(kLlama31);
  auto j = nlohmann::json::parse(hf_config_json(h));
  EXPECT_EQ(j["architectures"], nlohmann::json({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["eos_token_id"], nlohmann::json({128001, 128008, 128009}));
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["head_dim"], 16);
  EXPECT_EQ(j["mlp_bias"], false);
}

TEST(HfConfigWrite, EachModelTypeGetsItsArchitecture) {
  for (auto [type, arch] : {std::pair{"llama", "LlamaForCausalLM"}, std::pair{"mistral", "MistralForCausalLM"},
                            std::pair{"qwen2", "Qwen2ForCausalLM"}, std::pair{"qwen3", "Qwen3ForCausalLM"}}) {
    auto j = nlohmann::json::parse(hf_config_json(parse(with(type))));
    EXPECT_EQ(j["architectures"][0], arch);
  }
}

TEST(HfConfigWrite, QwenSlidingWindowIsWrittenForEveryLayer) {
  HfModelConfig h = parse(with("qwen2", R"("use_sliding_window": true, "sliding_window": 256, "max_window_layers": 0)"));
  auto j = nlohmann::json::parse(hf_config_json(h));
  EXPECT_EQ(j["use_sliding_window"], true);
  EXPECT_EQ(j["sliding_window"], 256);
  EXPECT_EQ(j["max_window_layers"], 0);
}

TEST(HfConfigWrite, ReadWriteReadIsLossless) {
  const std::vector<std::string> configs = {
      kLlama31, kQwen25, with("mistral", R"("sliding_window": null)"),
      with("mistral", R"("sliding_window": 512, "rope_theta": 1e6)"),
      with("qwen3", R"("head_dim": 32, "tie_word_embeddings": true)"),
      with("qwen2", R"("use_sliding_window": true, "sliding_window": 256, "max_window_layers": 0)"),
      with("llama", R"("rope_scaling": {"type": "linear", "factor": 2.0}, "attention_bias": true, "eos_token_id": null)")};
  fs::path p = fs::temp_directory_path() / ("adept_io_config_rt_" + std::to_string(::getpid()) + ".json");
  for (const std::string& text : configs) {
    HfModelConfig a = parse(text);
    write_hf_config(p.string(), a);
    HfModelConfig b = read_hf_config(p.string());
    EXPECT_EQ(hf_config_json(a), hf_config_json(b)) << text;
    EXPECT_EQ(b.model.head_dim, a.model.head_dim);
    EXPECT_EQ(b.model.sliding_window, a.model.sliding_window);
    EXPECT_EQ(b.model.attention_bias, a.model.attention_bias);
    EXPECT_EQ(b.model.eos_token_id, a.model.eos_token_id);
    EXPECT_EQ(b.eos_token_ids, a.eos_token_ids);
  }
  fs::remove(p);
}

TEST(HfConfigWrite, ASlidingWindowLlamaCannotBeWritten) {
  ModelConfig c = parse(with("llama")).model;
  c.sliding_window = 128;
  try {
    write_model_config("/tmp/unused_config.json", c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "sliding_window 128 cannot be expressed for model_type llama");
  }
}

}  // namespace
}  // namespace adept
