// Resuming: a training interrupted after its checkpoint and started again ends with the
// same weights, losses and ADEPT multipliers, bit for bit, as one that ran through; and
// `adept run` skips the stages it has finished.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "small_study.hpp"
#include "core/embedded.hpp"
#include "method/layer_importance.hpp"
#include "pipeline/method_training.hpp"
#include "pipeline/run_pipeline.hpp"
#include "pipeline/study_data.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;

using testing_support::TempDir;

RunConfig small_run(const fs::path& dir, std::mt19937_64& rng) {
  RunConfig rc = testing_study::small_study_config(dir, rng);
  rc.adept.reestimate_every = 2;
  rc.adept.granularity = "row";
  validate_run_config(rc);
  return rc;
}

TEST(Resume, InterruptedAdeptTrainingContinuesExactly) {
  auto rng = testing_support::make_rng(61);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  Decoder<float> base(rc.model);
  base.init_random(rng(), 0.1);
  LayerImportance importance;
  importance.score = {0.3, 0.1, 0.2};

  MethodModel straight = prepare_method_model("adept", base, &importance, rc);
  MethodTraining a = train_method("adept", straight, data, rc, (tmp.path / "straight").string(), false);

  const std::string dir = (tmp.path / "interrupted").string();
  MethodModel first = prepare_method_model("adept", base, &importance, rc);
  train_method("adept", first, data, rc, dir, false, /*stop_after=*/5);  // checkpoint at 3, stops after 5
  ASSERT_TRUE(fs::exists(fs::path(dir) / "checkpoints" / "latest.json"));
  MethodModel resumed = prepare_method_model("adept", base, &importance, rc);
  MethodTraining b = train_method("adept", resumed, data, rc, dir, false);

  EXPECT_EQ(b.train.resumed_from, 3);
  const auto& wa = straight.model.params().values();
  const auto& wb = resumed.model.params().values();
  ASSERT_EQ(wa.size(), wb.size());
  EXPECT_EQ(std::memcmp(wa.data(), wb.data(), sizeof(float) * wa.size()), 0) << "final weights differ";
  ASSERT_EQ(a.train.steps.size(), b.train.steps.size());
  for (size_t s = 0; s < a.train.steps.size(); ++s) EXPECT_EQ(a.train.steps[s].loss, b.train.steps[s].loss) << s;
  ASSERT_EQ(a.train.evals.size(), b.train.evals.size());
  for (size_t e = 0; e < a.train.evals.size(); ++e) EXPECT_EQ(a.train.evals[e].loss, b.train.evals[e].loss) << e;
  ASSERT_EQ(a.multipliers.size(), b.multipliers.size());
  for (size_t u = 0; u < a.multipliers.size(); ++u) EXPECT_EQ(a.multipliers[u].y, b.multipliers[u].y) << u;
  // The logs hold each step once: the interrupted run's lines past the checkpoint are gone.
  std::ifstream metrics(fs::path(dir) / "metrics.jsonl");
  int step_lines = 0;
  for (std::string line; std::getline(metrics, line);) step_lines += line.find("\"event\":\"step\"") != std::string::npos;
  EXPECT_EQ(step_lines, 7);
}

TEST(Resume, FullTrainingResumesExactlyFromEveryCheckpoint) {
  auto rng = testing_support::make_rng(62);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  rc.train.checkpoint_every = 2;
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  Decoder<float> base(rc.model);
  base.init_random(rng(), 0.1);
  MethodModel straight = prepare_method_model("full", base, nullptr, rc);
  train_method("full", straight, data, rc, (tmp.path / "straight").string(), false);
  for (int64_t stop : {1, 2, 6}) {
    const std::string dir = (tmp.path / ("stop" + std::to_string(stop))).string();
    MethodModel first = prepare_method_model("full", base, nullptr, rc);
    train_method("full", first, data, rc, dir, false, stop);
    MethodModel resumed = prepare_method_model("full", base, nullptr, rc);
    MethodTraining b = train_method("full", resumed, data, rc, dir, false);
    EXPECT_EQ(b.train.resumed_from, stop < 2 ? -1 : stop / 2 * 2) << stop;
    EXPECT_EQ(std::memcmp(straight.model.params().values().data(), resumed.model.params().values().data(),
                          sizeof(float) * straight.model.params().values().size()),
              0)
        << "interrupted after " << stop << " steps";
  }
}

TEST(Resume, ACheckpointOfOtherSettingsIsNotResumedFrom) {
  auto rng = testing_support::make_rng(64);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  Decoder<float> base(rc.model);
  base.init_random(rng(), 0.1);
  const std::string dir = (tmp.path / "llama-pro").string();
  MethodModel first = prepare_method_model("llama-pro", base, nullptr, rc);
  train_method("llama-pro", first, data, rc, dir, false, /*stop_after=*/4);
  ASSERT_TRUE(fs::exists(fs::path(dir) / "checkpoints" / "latest.json"));
  rc.train.lr *= 0.5;  // another training: its checkpoints must not be mixed in
  MethodModel again = prepare_method_model("llama-pro", base, nullptr, rc);
  MethodTraining b = train_method("llama-pro", again, data, rc, dir, false);
  EXPECT_EQ(b.train.resumed_from, -1);
  MethodModel straight = prepare_method_model("llama-pro", base, nullptr, rc);
  train_method("llama-pro", straight, data, rc, (tmp.path / "straight").string(), false);
  EXPECT_EQ(std::memcmp(straight.model.params().values().data(), again.model.params().values().data(),
                        sizeof(float) * straight.model.params().values().size()),
            0);
}

TEST(Resume, ARerunOfAFinishedStudySkipsEveryStage) {
  auto rng = testing_support::make_rng(63);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  rc.run.methods = {"adept", "full"};
  PipelineOptions quiet;
  quiet.show_progress = false;
  run_pipeline(rc, quiet);
  const fs::path run = rc.run.out_dir;
  auto stamp = [&](const char* f) { return fs::last_write_time(run / f); };
  auto before_base = stamp("base/model/model.safetensors"), before_adept = stamp("adept/model/model.safetensors");
  std::string results = read_text_source((run / "results.json").string());
  run_pipeline(rc, quiet);
  EXPECT_EQ(stamp("base/model/model.safetensors"), before_base);
  EXPECT_EQ(stamp("adept/model/model.safetensors"), before_adept);
  // Same numbers (only the run's total seconds may differ).
  nlohmann::json a = nlohmann::json::parse(results), b = nlohmann::json::parse(read_text_source((run / "results.json").string()));
  a.erase("seconds"), b.erase("seconds");
  EXPECT_EQ(a, b);
  // A changed setting redoes the stages that depend on it, and only those.
  rc.train.lr *= 2;
  run_pipeline(rc, quiet);
  EXPECT_EQ(stamp("base/model/model.safetensors"), before_base);
  EXPECT_NE(stamp("adept/model/model.safetensors"), before_adept);
}

}  // namespace
}  // namespace adept
