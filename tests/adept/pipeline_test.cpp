// `adept run` end to end on a few steps: every stage runs, every artefact is written,
// and the report compares every method against the base.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "core/embedded.hpp"
#include "core/error.hpp"
#include "pipeline/run_pipeline.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::TempDir;

std::string write_temp(const fs::path& dir, const std::string& name, const std::string& text) {
  fs::path p = dir / name;
  std::ofstream(p) << text;
  return p.string();
}

TEST(Pipeline, RunsEveryMethodAndWritesTheReport) {
  auto rng = testing_support::make_rng(41);
  TempDir tmp(rng);  // removed even when an expectation fails
  const fs::path& dir = tmp.path;
  std::string corpus = read_text_source("embedded:data/tiny/corpus.txt");
  RunConfig rc = load_run_config("");
  rc.data.general = {write_temp(dir, "general.txt", corpus.substr(0, corpus.size() / 2))};
  rc.data.domain = {write_temp(dir, "domain.txt", corpus.substr(corpus.size() / 2))};
  rc.run.methods = {"adept", "full", "llama-pro", "freeze", "adept-uniform", "adept-one-lr"};
  rc.run.out_dir = (dir / "run").string();
  rc.model.num_hidden_layers = 3;
  rc.model.hidden_size = 32;
  rc.model.intermediate_size = 48;
  for (TrainConfig* t : {&rc.pretrain, &rc.train}) t->steps = 4, t->seq_len = 16, t->batch_size = 2, t->eval_every = 2;
  rc.adept.reestimate_every = 2;
  rc.probe.batches = 2;
  rc.eval.batches = 2;
  rc.eval.general_mc = write_temp(dir, "mc.jsonl",
                                  "{\"question\": \"q1\", \"choices\": [\"yes\", \"no\"], \"answer\": 0}\n"
                                  "{\"question\": \"q2\", \"choices\": [\"a\", \"b\", \"c\"], \"answer\": \"C\"}\n");
  rc.eval.domain_qa = write_temp(dir, "qa.jsonl", "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n"
                                                  "{\"question\": \"2+2?\", \"answer\": \"#### 4\"}\n");
  rc.eval.shots = 1;
  rc.eval.max_new_tokens = 4;
  PipelineOptions quiet;
  quiet.show_progress = false;
  std::string report = run_pipeline(rc, quiet);

  for (const char* f : {"report.md", "results.json", "loss_curves.svg", "layer_importance.svg", "lr_multipliers.svg",
                        "layer_importance.json", "adept/lr_multipliers.jsonl", "base/metrics.jsonl",
                        "base/model/config.json", "data/general-text/manifest.json",
                        "lr_multipliers_adept-uniform.svg", "adept-uniform/lr_multipliers.jsonl"})
    EXPECT_TRUE(fs::exists(dir / "run" / f)) << f;
  EXPECT_FALSE(fs::exists(dir / "run" / "adept-one-lr" / "lr_multipliers.jsonl")) << "one learning rate: no estimates";
  for (const char* m : {"adept", "full", "llama-pro", "freeze", "adept-uniform", "adept-one-lr"}) {
    EXPECT_TRUE(fs::exists(dir / "run" / m / "model" / "config.json")) << m;
    EXPECT_TRUE(fs::exists(dir / "run" / m / "model" / "model.safetensors")) << m;
  }
  std::ifstream in(dir / "run" / "results.json");
  nlohmann::json results = nlohmann::json::parse(in);
  for (const char* m : {"adept", "full", "llama-pro", "freeze"}) {
    ASSERT_TRUE(results["methods"].contains(m)) << m;
    EXPECT_TRUE(std::isfinite(results["methods"][m]["domain_loss"].get<double>())) << m;
    EXPECT_TRUE(results["methods"][m].contains("general_mc_acc")) << m;
    EXPECT_TRUE(results["methods"][m].contains("domain_qa_exact_match")) << m;
  }
  // ADEPT and LLaMA-Pro train only the inserted layers; full trains everything.
  EXPECT_EQ(results["methods"]["full"]["trainable_params"], results["methods"]["full"]["total_params"]);
  EXPECT_LT(results["methods"]["adept"]["trainable_params"].get<int64_t>(),
            results["methods"]["adept"]["total_params"].get<int64_t>());
  std::ifstream md(report);
  std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("general MC acc"), std::string::npos);
  for (const char* row : {"| base |", "| adept |", "| full |", "| llama-pro |", "| freeze |", "| adept-uniform |",
                          "| adept-one-lr |"})
    EXPECT_NE(text.find(row), std::string::npos) << row;
}

TEST(Pipeline, MissingCorpusFileIsAClearError) {
  RunConfig rc = load_run_config("");
  rc.data.general = {"/nonexistent/general.txt"};
  TempDir tmp(uint64_t(0));
  rc.run.out_dir = (tmp.path / "run").string();
  PipelineOptions quiet;
  quiet.show_progress = false;
  try {
    run_pipeline(rc, quiet);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/general.txt"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace adept
