// The run config file: laid over the embedded default, typos refused with the file and
// key named, and the sections the user's file set remembered (a run can then say which
// of them it does not use, e.g. [model] when run.base names a checkpoint).
#include <gtest/gtest.h>

#include <fstream>

#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "train/run_config.hpp"

namespace adept {
namespace {

using testing_support::TempDir;

std::string write(const TempDir& dir, const std::string& text) {
  std::string path = (dir.path / "run.toml").string();
  std::ofstream(path) << text;
  return path;
}

TEST(RunConfig, TheEmbeddedDefaultAloneHasNoUserSections) {
  RunConfig rc = load_run_config("");
  EXPECT_TRUE(rc.user_sections.empty());
  EXPECT_EQ(rc.model.num_hidden_layers, 6);
}

TEST(RunConfig, AUserFileChangesOnlyWhatItNamesAndItsSectionsAreRemembered) {
  TempDir dir(1);
  RunConfig rc = load_run_config(write(dir, "[model]\nnum_hidden_layers = 4\n[train]\nsteps = 7\n"));
  EXPECT_EQ(rc.model.num_hidden_layers, 4);
  EXPECT_EQ(rc.train.steps, 7);
  EXPECT_EQ(rc.model.hidden_size, load_run_config("").model.hidden_size);  // untouched keys keep the default
  EXPECT_EQ(rc.user_sections, (std::set<std::string>{"model", "train"}));
}

TEST(RunConfig, AnUnknownKeyIsAnErrorNamingTheFileAndKey) {
  TempDir dir(2);
  const std::string path = write(dir, "[train]\nstepz = 7\n");
  try {
    load_run_config(path);
    FAIL() << "a typo must not pass";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("stepz"), std::string::npos) << e.what();
  }
}

// The CUDA backend's switches: graphs on and recomputation off unless the file says so,
// and a non-boolean value refused with the key named.
TEST(RunConfig, CudaGraphsAndRecomputeAreReadFromTrain) {
  TempDir dir(3);
  const RunConfig defaults = load_run_config("");
  EXPECT_TRUE(defaults.train.cuda_graphs);
  EXPECT_FALSE(defaults.train.recompute);
  RunConfig rc = load_run_config(write(dir, "[train]\ncuda_graphs = false\nrecompute = true\n"));
  EXPECT_FALSE(rc.train.cuda_graphs);
  EXPECT_TRUE(rc.train.recompute);
  try {
    load_run_config(write(dir, "[train]\ncuda_graphs = 3\n"));
    FAIL() << "a number for a boolean key must not pass";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda_graphs"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace adept
