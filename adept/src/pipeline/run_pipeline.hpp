// `adept run`: the whole ADEPT study in one command. Base model (pretrained from scratch
// for the embedded default) → held-out evaluation → layer-importance probe → for each
// method (adept, full, llama-pro, freeze): expand / select, continual pretraining on the
// domain corpus with the same token budget, evaluation → a report (markdown table, SVG
// plots, JSON) in the run folder.
#pragma once

#include <string>

#include "train/run_config.hpp"

namespace adept {

struct PipelineOptions {
  bool show_progress = true;
};

// Returns the path of the written report (report.md).
std::string run_pipeline(const RunConfig& config, const PipelineOptions& options);

}  // namespace adept
