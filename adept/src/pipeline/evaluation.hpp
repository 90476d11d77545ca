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

// Held-out losses through `loss` (an engine's, so a GPU can run them). Multiple choice
// through `loss` too when mc_max_len > 0 (rows of up to that many tokens: a GPU engine
// planned for them), else on the CPU decoder `model`, as generation always is.
Scores evaluate_scores(Decoder<float>& model, const BatchLossFn& loss, const StudyData& data, const EvalConfig& eval,
                       const Benchmarks& benchmarks, const Tokenizer& tokenizer, int64_t mc_max_len = 0);

// How long a multiple-choice row an engine of `backend` should take: 0 on the CPU (the
// decoder scores benchmarks itself, up to max_position_embeddings), else up to 2048
// tokens (at least seq_len, at most max_position_embeddings).
int64_t benchmark_row_tokens(const std::string& backend, const ModelConfig& model, int64_t seq_len);

// A ContinuationScoreFn over a batch loss (an engine's).
ContinuationScoreFn continuation_score(const BatchLossFn& loss, int64_t max_len);

nlohmann::json scores_json(const Scores& s);
Scores scores_from_json(const nlohmann::json& j);

}  // namespace adept
