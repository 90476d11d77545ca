// Hugging Face model directories: the name/shape table per model type, save -> load
// round trips with the tokenizer copied, and each layout disagreement named with the
// file and the tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/error_of.hpp"
#include "common/random.hpp"
#include "core/error.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/safetensors.hpp"
#include "io/tokenizer.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::error_of;
#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)
const std::string kTokenizerDir = std::string(ADEPT_SOURCE_DIR) + "/tests/fixtures/tokenizer/llama3";

struct ScratchDir {
  fs::path path;
  explicit ScratchDir(const std::string& name)
      : path(fs::temp_directory_path() / ("adept_io_ckpt_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
  std::string str() const { return path.string(); }
};

ModelConfig tiny(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 600;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = type == "qwen3" ? 16 : 0;
  c.finalize_and_validate();
  return c;
}

TensorMap random_tensors(const ModelConfig& cfg, std::mt19937_64& rng) {
  TensorMap m;
  for (const TensorSpec& s : expected_tensors(cfg)) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    m[s.name] = {s.shape, testing_support::random_vector<float>(rng, size_t(n), 0.5)};
  }
  return m;
}

// --- the name/shape table -----------------------------------------------------------

TEST(ExpectedTensors, LlamaHasNineTensorsPerLayerPlusEmbeddingsNormAndHead) {
  ModelConfig c = tiny("llama");
  auto t = expected_tensors(c);
  EXPECT_EQ(t.size(), 2u * 9 + 3);
  EXPECT_EQ(t.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(t.front().shape, (std::vector<int64_t>{600, 32}));
  EXPECT_EQ(t.back().name, "lm_head.weight");
  EXPECT_EQ(t[2].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(t[3].name, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(t[3].shape, (std::vector<int64_t>{16, 32}));  // Hkv * D = 2 * 8
  EXPECT_EQ(t[5].shape, (std::vector<int64_t>{32, 32}));  // o_proj [H, Hq * D]
  EXPECT_EQ(t[9].shape, (std::vector<int64_t>{32, 48}));  // down_proj [H, I]
}

TEST(ExpectedTensors, Qwen2HasQkvBiasesButNoOutputBias) {
  auto t = expected_tensors(tiny("qwen2"));
  auto has = [&](const std::string& n) {
    return std::any_of(t.begin(), t.end(), [&](const TensorSpec& s) { return s.name == n; });
  };
  EXPECT_TRUE(has("model.layers.1.self_attn.q_proj.bias"));
  EXPECT_TRUE(has("model.layers.1.self_attn.v_proj.bias"));
  EXPECT_FALSE(has("model.layers.1.self_attn.o_proj.bias"));
}

TEST(ExpectedTensors, Qwen3HasQkNormsOfHeadDim) {
  auto t = expected_tensors(tiny("qwen3"));
  auto it = std::find_if(t.begin(), t.end(), [](const TensorSpec& s) { return s.name == "model.layers.0.self_attn.k_norm.weight"; });
  ASSERT_NE(it, t.end());
  EXPECT_EQ(it->shape, std::vector<int64_t>{16});
  auto q = std::find_if(t.begin(), t.end(), [](const TensorSpec& s) { return s.name == "model.layers.0.self_attn.q_proj.weight"; });
  EXPECT_EQ(q->shape, (std::vector<int64_t>{64, 32}));  // head_dim 16 * 4 heads, not hidden_size
}

TEST(ExpectedTensors, TiedEmbeddingsHaveNoLmHead) {
  ModelConfig c = tiny("llama");
  c.tie_word_embeddings = true;
  EXPECT_EQ(expected_tensors(c).back().name, "model.norm.weight");
}

TEST(ExpectedTensors, AttentionBiasAddsAllFourBiases) {
  ModelConfig c = tiny("llama");
  c.attention_bias = true;
  EXPECT_EQ(expected_tensors(c).size(), 2u * 13 + 3);
}

// --- save / load ----------------------------------------------------------------------

TEST(HfCheckpoint, SaveThenLoadIsExactInFloat32ForEveryModelType) {
  auto rng = testing_support::make_rng(1);
  for (const char* type : {"llama", "mistral", "qwen2", "qwen3"}) {
    SCOPED_TRACE(type);
    ScratchDir dir(std::string("rt_") + type);
    ModelConfig cfg = tiny(type);
    TensorMap tensors = random_tensors(cfg, rng);
    save_checkpoint(dir.str(), cfg, tensors, "", DType::F32);
    HfCheckpoint back = load_checkpoint(dir.str());
    EXPECT_EQ(back.config.model.model_type, type);
    EXPECT_EQ(back.config.torch_dtype, "float32");
    ASSERT_EQ(back.tensors.size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      EXPECT_EQ(back.tensors.at(name).shape, t.shape) << name;
      EXPECT_EQ(back.tensors.at(name).values, t.values) << name;
    }
  }
}

TEST(HfCheckpoint, SavingInBf16RoundsEachValueOnce) {
  auto rng = testing_support::make_rng(2);
  ScratchDir dir("bf16");
  ModelConfig cfg = tiny("llama");
  TensorMap tensors = random_tensors(cfg, rng);
  save_checkpoint(dir.str(), cfg, tensors, "", DType::BF16);
  HfCheckpoint back = load_checkpoint(dir.str());
  EXPECT_EQ(back.config.torch_dtype, "bfloat16");
  const auto& a = tensors.at("model.layers.1.mlp.up_proj.weight").values;
  const auto& b = back.tensors.at("model.layers.1.mlp.up_proj.weight").values;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(b[i], bf16_to_f32(f32_to_bf16(a[i])));
}

TEST(HfCheckpoint, TokenizerFilesAreCopiedAndLoad) {
  auto rng = testing_support::make_rng(3);
  ScratchDir dir("tok");
  ModelConfig cfg = tiny("llama");
  save_checkpoint(dir.str(), cfg, random_tensors(cfg, rng), kTokenizerDir, DType::BF16);
  EXPECT_TRUE(fs::exists(dir.path / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir.path / "tokenizer_config.json"));
  EXPECT_TRUE(fs::exists(dir.path / "config.json"));
  auto tok = load_tokenizer(dir.str());
  EXPECT_EQ(tok->encode("Hello world"), load_tokenizer(kTokenizerDir)->encode("Hello world"));
}

TEST(HfCheckpoint, ShardedSaveLoadsThroughTheIndex) {
  auto rng = testing_support::make_rng(4);
  ScratchDir dir("shards");
  ModelConfig cfg = tiny("qwen2");
  TensorMap tensors = random_tensors(cfg, rng);
  save_checkpoint(dir.str(), cfg, tensors, "", DType::F32, 40000);
  EXPECT_TRUE(fs::exists(dir.path / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir.path / "model.safetensors"));
  EXPECT_EQ(load_checkpoint(dir.str()).tensors.at("lm_head.weight").values, tensors.at("lm_head.weight").values);
}

TEST(HfCheckpoint, ReadsStraightIntoCallerBuffers) {
  auto rng = testing_support::make_rng(5);
  ScratchDir dir("into");
  ModelConfig cfg = tiny("qwen3");
  TensorMap tensors = random_tensors(cfg, rng);
  save_checkpoint(dir.str(), cfg, tensors, "", DType::F32);
  std::map<std::string, std::vector<float>> store;
  read_checkpoint_tensors(dir.str(), cfg, [&](const TensorSpec& s) -> std::span<float> {
    auto& v = store[s.name];
    v.resize(tensors.at(s.name).values.size());
    return v;
  });
  EXPECT_EQ(store.at("model.layers.0.self_attn.q_norm.weight"), tensors.at("model.layers.0.self_attn.q_norm.weight").values);
}

// --- disagreements ----------------------------------------------------------------------

// A directory with config.json of `cfg` and tensors as given (not checked on write).
void write_raw(const ScratchDir& dir, const ModelConfig& cfg, const TensorMap& tensors) {
  std::vector<TensorToWrite> ts;
  for (const auto& [name, t] : tensors) ts.push_back({name, t.shape, t.values, DType::F32});
  write_safetensors_checkpoint(dir.str(), ts);
  write_model_config((dir.path / "config.json").string(), cfg);
}

TEST(HfCheckpointMalformed, ShapeDisagreeingWithTheConfigNamesFileTensorAndShapes) {
  auto rng = testing_support::make_rng(6);
  ScratchDir dir("shape");
  ModelConfig cfg = tiny("llama");
  TensorMap tensors = random_tensors(cfg, rng);
  tensors["model.layers.1.self_attn.k_proj.weight"] = {{32, 32}, std::vector<float>(32 * 32)};
  write_raw(dir, cfg, tensors);
  EXPECT_CONTAINS(error_of([&] { load_checkpoint(dir.str()); }),
                  "model.safetensors: tensor 'model.layers.1.self_attn.k_proj.weight' has shape [32, 32], " +
                      (dir.path / "config.json").string() + " expects [16, 32]");
}

TEST(HfCheckpointMalformed, MissingTensorIsNamed) {
  auto rng = testing_support::make_rng(7);
  ScratchDir dir("missing");
  ModelConfig cfg = tiny("llama");
  TensorMap tensors = random_tensors(cfg, rng);
  tensors.erase("model.layers.1.post_attention_layernorm.weight");
  write_raw(dir, cfg, tensors);
  EXPECT_CONTAINS(error_of([&] { load_checkpoint(dir.str()); }),
                  "model.safetensors: tensor 'model.layers.1.post_attention_layernorm.weight' is missing");
}

TEST(HfCheckpointMalformed, ExtraLayerIsAnUnexpectedTensor) {
  auto rng = testing_support::make_rng(8);
  ScratchDir dir("extra");
  ModelConfig cfg = tiny("llama");
  TensorMap tensors = random_tensors(cfg, rng);
  tensors["model.layers.2.input_layernorm.weight"] = {{32}, std::vector<float>(32)};
  write_raw(dir, cfg, tensors);
  EXPECT_CONTAINS(error_of([&] { load_checkpoint(dir.str()); }),
                  "unexpected tensor 'model.layers.2.input_layernorm.weight' (not part of a llama model with 2 layers");
}

TEST(HfCheckpointMalformed, StoredLmHeadOfATiedModelIsIgnored) {
  auto rng = testing_support::make_rng(9);
  ScratchDir dir("tied");
  ModelConfig cfg = tiny("qwen2");
  cfg.tie_word_embeddings = true;
  TensorMap tensors = random_tensors(cfg, rng);
  tensors["lm_head.weight"] = tensors.at("model.embed_tokens.weight");
  write_raw(dir, cfg, tensors);
  HfCheckpoint back = load_checkpoint(dir.str());
  EXPECT_EQ(back.tensors.count("lm_head.weight"), 0u);
}

TEST(HfCheckpointMalformed, UnknownModelTypeInConfigIsNamed) {
  ScratchDir dir("type");
  { std::ofstream(dir.path / "config.json") << R"({"model_type": "gpt_neox", "vocab_size": 8})"; }
  EXPECT_CONTAINS(error_of([&] { load_checkpoint(dir.str()); }), "config.json: field 'model_type' is 'gpt_neox'");
}

TEST(HfCheckpointMalformed, SaveRefusesATensorSetTransformersCouldNotLoad) {
  auto rng = testing_support::make_rng(10);
  ScratchDir dir("badsave");
  ModelConfig cfg = tiny("mistral");
  TensorMap tensors = random_tensors(cfg, rng);
  tensors["model.layers.0.mlp.gate_proj.weight"].shape = {24, 64};
  EXPECT_CONTAINS(error_of([&] { save_checkpoint(dir.str(), cfg, tensors, "", DType::BF16); }),
                  "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [24, 64], the config expects [48, 32]");
  EXPECT_FALSE(fs::exists(dir.path / "config.json"));
  tensors = random_tensors(cfg, rng);
  tensors.erase("lm_head.weight");
  EXPECT_CONTAINS(error_of([&] { save_checkpoint(dir.str(), cfg, tensors, "", DType::BF16); }),
                  "tensor 'lm_head.weight' (shape [600, 32]) is missing");
}

TEST(HfCheckpointMalformed, TokenizerSourceWithoutTokenizerFilesIsAnError) {
  auto rng = testing_support::make_rng(11);
  ScratchDir dir("notok"), empty("empty");
  ModelConfig cfg = tiny("llama");
  EXPECT_CONTAINS(error_of([&] { save_checkpoint(dir.str(), cfg, random_tensors(cfg, rng), empty.str(), DType::BF16); }),
                  empty.str() + ": no tokenizer files");
}

}  // namespace
}  // namespace adept
