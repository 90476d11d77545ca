// Models on disk: an HF base runs through `adept run`, every method's model is written
// back with its true depth, the expanded checkpoint computes exactly what its source does,
// and a vocabulary that cannot hold the tokenizer's ids is a clear error.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "core/embedded.hpp"
#include "data/packed_loader.hpp"
#include "io/hf_config.hpp"
#include "pipeline/model_files.hpp"
#include "pipeline/run_pipeline.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;

using testing_support::TempDir;

ModelConfig tiny(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 256;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = type != "qwen3";
  return c;
}

Decoder<float> random_model(const ModelConfig& c, std::mt19937_64& rng) {
  Decoder<float> m(c);
  m.init_random(rng(), 0.2);
  std::normal_distribution<double> normal(0.0, 0.2);
  for (int i = 0; i < m.params().size(); ++i)  // norms and biases away from their init
    if (m.params().info(i).name.find("norm") != std::string::npos || m.params().info(i).name.find("bias") != std::string::npos)
      for (int64_t j = 0; j < m.params().info(i).numel; ++j) m.params().value(i)[j] += float(normal(rng));
  return m;
}

class ExpandedCheckpoint : public ::testing::TestWithParam<const char*> {};

TEST_P(ExpandedCheckpoint, LogitsEqualTheOriginalsExactly) {
  auto rng = testing_support::make_rng(71);
  TempDir tmp(rng());
  Decoder<float> original = random_model(tiny(GetParam()), rng);
  save_hf_model((tmp.path / "in").string(), original, HfModelConfig(original.config()), "bytes", DType::F32);
  Expansion e = expand_checkpoint((tmp.path / "in").string(), (tmp.path / "out").string(), {1, 3});
  EXPECT_EQ(e.inserted, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(read_model_config((tmp.path / "out" / "config.json").string()).num_hidden_layers, 6);
  EXPECT_TRUE(fs::exists(tmp.path / "out" / "adept.json"));  // the byte tokenizer, recorded
  Decoder<float> loaded_in = load_hf_model((tmp.path / "in").string());
  Decoder<float> loaded_out = load_hf_model((tmp.path / "out").string());
  std::uniform_int_distribution<int32_t> token(0, 255);
  TokenBatch b;
  b.B = 2, b.S = 24;
  for (int64_t i = 0; i < b.B * b.S; ++i) b.tokens.push_back(token(rng)), b.targets.push_back(token(rng));
  b.documents = {0, 10, 24, 48};  // packed documents, as training sees them
  original.forward(batch_view(b));
  loaded_in.forward(batch_view(b));
  loaded_out.forward(batch_view(b));
  ASSERT_EQ(original.logits().size(), loaded_out.logits().size());
  EXPECT_EQ(std::memcmp(original.logits().data(), loaded_in.logits().data(), 4 * original.logits().size()), 0)
      << "a float32 checkpoint must round-trip exactly";
  EXPECT_EQ(std::memcmp(original.logits().data(), loaded_out.logits().data(), 4 * original.logits().size()), 0)
      << "the expanded checkpoint's logits differ from the original's";
}

INSTANTIATE_TEST_SUITE_P(Families, ExpandedCheckpoint, ::testing::Values("llama", "qwen2", "qwen3"));

TEST(ExpandedCheckpoint, RefusesToOverwriteItsSource) {
  auto rng = testing_support::make_rng(72);
  TempDir tmp(rng());
  Decoder<float> m = random_model(tiny("llama"), rng);
  save_hf_model((tmp.path / "in").string(), m, HfModelConfig(m.config()), "bytes", DType::F32);
  EXPECT_THROW(expand_checkpoint((tmp.path / "in").string(), (tmp.path / "in").string(), {0}), Error);
  EXPECT_THROW(expand_checkpoint((tmp.path / "in").string(), (tmp.path / "out").string(), {4}), Error);
}

RunConfig study_on(const fs::path& dir, const std::string& base) {
  std::string corpus = read_text_source("embedded:data/tiny/corpus.txt");
  std::ofstream(dir / "general.txt") << corpus.substr(0, corpus.size() / 2);
  std::ofstream(dir / "domain.txt") << corpus.substr(corpus.size() / 2);
  RunConfig rc = load_run_config("");
  rc.run.base = base;
  rc.data.general = {(dir / "general.txt").string()};
  rc.data.domain = {(dir / "domain.txt").string()};
  rc.data.general_split = "blocks";
  rc.run.out_dir = (dir / "run").string();
  rc.run.methods = {"adept", "llama-pro", "full"};
  rc.train.steps = 2, rc.train.seq_len = 16, rc.train.batch_size = 2, rc.train.eval_every = 0;
  rc.adept.reestimate_every = 1;
  rc.probe.batches = 1;
  rc.eval.batches = 1;
  rc.run.save_dtype = "bfloat16";
  return rc;
}

TEST(HfBase, EveryMethodIsWrittenBackAsACheckpointOfItsDepth) {
  auto rng = testing_support::make_rng(73);
  TempDir tmp(rng());
  Decoder<float> base = random_model(tiny("qwen2"), rng);
  save_hf_model((tmp.path / "base").string(), base, HfModelConfig(base.config()), "bytes", DType::F32);
  RunConfig rc = study_on(tmp.path, (tmp.path / "base").string());  // data.tokenizer = auto: adept.json says bytes
  PipelineOptions quiet;
  quiet.show_progress = false;
  run_pipeline(rc, quiet);
  const fs::path run = rc.run.out_dir;
  EXPECT_FALSE(fs::exists(run / "base" / "model")) << "an HF base is used in place, not copied";
  for (auto [method, depth] : {std::pair{"adept", 6}, std::pair{"llama-pro", 6}, std::pair{"full", 4}}) {
    HfModelConfig cfg = read_hf_config((run / method / "model" / "config.json").string());
    EXPECT_EQ(cfg.model.num_hidden_layers, depth) << method;
    EXPECT_EQ(cfg.model.model_type, "qwen2") << method;
    EXPECT_EQ(cfg.torch_dtype, "bfloat16") << method;
    Decoder<float> reloaded = load_hf_model((run / method / "model").string());  // loads: every tensor is there
    EXPECT_EQ(reloaded.params().total_numel(), Decoder<float>(cfg.model).params().total_numel());
  }
  nlohmann::json results = nlohmann::json::parse(read_text_source((run / "results.json").string()));
  EXPECT_TRUE(results["base"]["general_loss"].is_number());
}

TEST(HfBase, AVocabularySmallerThanTheTokenizersIsAnErrorNamingTheFileAndField) {
  auto rng = testing_support::make_rng(74);
  TempDir tmp(rng());
  ModelConfig c = tiny("llama");
  c.vocab_size = 200;  // the byte tokenizer needs 256
  Decoder<float> base = random_model(c, rng);
  save_hf_model((tmp.path / "base").string(), base, HfModelConfig(base.config()), "bytes", DType::F32);
  RunConfig rc = study_on(tmp.path, (tmp.path / "base").string());
  PipelineOptions quiet;
  quiet.show_progress = false;
  try {
    run_pipeline(rc, quiet);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("base/config.json"), std::string::npos) << what;
    EXPECT_NE(what.find("vocab_size 200"), std::string::npos) << what;
  }
}

TEST(HfBase, TheBasesOwnBpeTokenizerPreparesTheDataAndTravelsWithEveryModel) {
  auto rng = testing_support::make_rng(76);
  TempDir tmp(rng());
  const fs::path bpe = fs::path(ADEPT_SOURCE_DIR) / "tests/fixtures/data/tiny_bpe";
  ModelConfig c = tiny("llama");
  c.vocab_size = 320;  // the fixture BPE has 300 ids; a model's table may be larger
  Decoder<float> base = random_model(c, rng);
  save_hf_model((tmp.path / "base").string(), base, HfModelConfig(base.config()), bpe.string(), DType::F32);
  RunConfig rc = study_on(tmp.path, (tmp.path / "base").string());
  rc.run.methods = {"adept", "freeze"};
  PipelineOptions quiet;
  quiet.show_progress = false;
  run_pipeline(rc, quiet);
  const fs::path run = rc.run.out_dir;
  nlohmann::json manifest = nlohmann::json::parse(read_text_source((run / "data" / "domain-text" / "manifest.json").string()));
  EXPECT_EQ(manifest["tokenizer"]["kind"], "bpe");
  EXPECT_EQ(manifest["tokenizer"]["vocab_size"], 300);
  for (const char* m : {"adept", "freeze"}) {
    EXPECT_TRUE(fs::exists(run / m / "model" / "tokenizer.json")) << m;
    EXPECT_TRUE(fs::exists(run / m / "model" / "tokenizer_config.json")) << m;
    EXPECT_FALSE(fs::exists(run / m / "model" / "adept.json")) << m;
  }
}

TEST(HfBase, ATransformersCheckpointWithTooSmallAVocabularyForBytesIsRefused) {
  // tests/fixtures/hf/llama was written by transformers (vocab_size 128, no tokenizer).
  TempDir tmp(77);
  RunConfig rc = study_on(tmp.path, (fs::path(ADEPT_SOURCE_DIR) / "tests/fixtures/hf/llama").string());
  rc.data.tokenizer = "bytes";
  PipelineOptions quiet;
  quiet.show_progress = false;
  try {
    run_pipeline(rc, quiet);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("hf/llama/config.json: vocab_size 128"), std::string::npos) << what;
  }
}

TEST(HfBase, ASequenceLongerThanTheBaseCanPlaceIsAnErrorNamingItsConfig) {
  auto rng = testing_support::make_rng(78);
  TempDir tmp(rng());
  Decoder<float> base = random_model(tiny("llama"), rng);  // max_position_embeddings 64
  save_hf_model((tmp.path / "base").string(), base, HfModelConfig(base.config()), "bytes", DType::F32);
  RunConfig rc = study_on(tmp.path, (tmp.path / "base").string());
  rc.train.seq_len = 128;
  PipelineOptions quiet;
  quiet.show_progress = false;
  try {
    run_pipeline(rc, quiet);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("train.seq_len (128) exceeds max_position_embeddings (64)"), std::string::npos) << what;
    EXPECT_NE(what.find("base/config.json"), std::string::npos) << what;
  }
}

TEST(HfBase, AMissingBaseDirectoryIsAClearError) {
  TempDir tmp(75);
  RunConfig rc = study_on(tmp.path, "/nonexistent/base-model");
  PipelineOptions quiet;
  quiet.show_progress = false;
  try {
    run_pipeline(rc, quiet);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/base-model"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace adept
