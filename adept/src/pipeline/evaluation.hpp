// What a study measures of a model: held-out loss on general text (forgetting) and on
// domain text (gain), and the optional benchmark files (multiple choice, exact match).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/benchmarks.hpp"
#include "io/tokenizer.hpp"
#include "pipeline/study_data.hpp"
#include "train/run_config.hpp"

namespace adept {

struct Scores {
  double general = NAN, domain = NAN;        // held-out loss per token
  double general_mc = NAN, domain_mc = NAN;  // multiple-choice accuracy
  double domain_qa = NAN;                    // exact match
};

// Benchmark items of [eval]'s files (checked: more items than shots).
struct Benchmarks {
  std::vector<MultipleChoiceItem> general_mc, domain_mc;
  std::vector<GenerationItem> domain_qa;
  bool empty() const { return general_mc.empty() && domain_mc.empty() && domain_qa.empty(); }
};
Benchmarks load_benchmarks(const EvalConfig& eval);

// Held-out losses through `loss` (an engine's, so a GPU can run them); benchmarks on
// the CPU decoder `model`.
Scores evaluate_scores(Decoder<float>& model, const BatchLossFn& loss, const StudyData& data, const EvalConfig& eval,
                       const Benchmarks& benchmarks, const Tokenizer& tokenizer);

nlohmann::json scores_json(const Scores& s);
Scores scores_from_json(const nlohmann::json& j);

}  // namespace adept
