#include "pipeline/evaluation.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace adept {

namespace {

template <typename Item>
std::pair<std::vector<Item>, std::vector<Item>> split_shots(const std::vector<Item>& items, int64_t shots) {
  return {std::vector<Item>(items.begin() + shots, items.end()), std::vector<Item>(items.begin(), items.begin() + shots)};
}

}  // namespace

Benchmarks load_benchmarks(const EvalConfig& e) {
  Benchmarks b;
  auto check = [&](size_t n, const std::string& path) {
    if (int64_t(n) <= e.shots) fail("{}: {} items, but eval.shots = {} leaves none to evaluate", path, n, e.shots);
  };
  if (!e.general_mc.empty()) b.general_mc = load_multiple_choice_jsonl(e.general_mc), check(b.general_mc.size(), e.general_mc);
  if (!e.domain_mc.empty()) b.domain_mc = load_multiple_choice_jsonl(e.domain_mc), check(b.domain_mc.size(), e.domain_mc);
  if (!e.domain_qa.empty()) b.domain_qa = load_generation_jsonl(e.domain_qa), check(b.domain_qa.size(), e.domain_qa);
  return b;
}

int64_t benchmark_row_tokens(const std::string& backend, const ModelConfig& model, int64_t seq_len) {
  if (backend == "cpu") return 0;
  return std::min(model.max_position_embeddings, std::max<int64_t>(seq_len, 2048));
}

ContinuationScoreFn continuation_score(const BatchLossFn& loss, int64_t max_len) {
  return [loss, max_len](const std::vector<int32_t>& context, const std::vector<int32_t>& continuation) {
    return -loss(continuation_batch(context, continuation, max_len)).loss_sum;
  };
}

Scores evaluate_scores(Decoder<float>& model, const BatchLossFn& loss, const StudyData& data, const EvalConfig& eval,
                       const Benchmarks& bench, const Tokenizer& tokenizer, int64_t mc_max_len) {
  Scores s;
  s.general = held_out_loss(data.general_holdout, eval.batches, loss);
  s.domain = held_out_loss(data.domain_holdout, eval.batches, loss);
  EncodeFn encode = [&](const std::string& text) { return tokenizer.encode(text); };
  DecodeFn decode = [&](const std::vector<int32_t>& ids) { return tokenizer.decode(ids); };
  const int shots = int(eval.shots);
  ContinuationScoreFn score = mc_max_len > 0 ? continuation_score(loss, mc_max_len) : ContinuationScoreFn{};
  if (!bench.general_mc.empty()) {
    auto [items, examples] = split_shots(bench.general_mc, shots);
    s.general_mc = evaluate_multiple_choice(model, items, examples, shots, encode, score).acc;
  }
  if (!bench.domain_mc.empty()) {
    auto [items, examples] = split_shots(bench.domain_mc, shots);
    s.domain_mc = evaluate_multiple_choice(model, items, examples, shots, encode, score).acc;
  }
  if (!bench.domain_qa.empty()) {
    auto [items, examples] = split_shots(bench.domain_qa, shots);
    s.domain_qa = evaluate_exact_match(model, items, examples, shots, eval.max_new_tokens, encode, decode,
                                       tokenizer.eos_id())
                      .exact_match;
  }
  return s;
}

nlohmann::json scores_json(const Scores& s) {
  auto value = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
  nlohmann::json j = {{"general_loss", value(s.general)}, {"domain_loss", value(s.domain)}};
  if (std::isfinite(s.general)) j["general_ppl"] = std::exp(s.general);
  if (std::isfinite(s.domain)) j["domain_ppl"] = std::exp(s.domain);
  if (std::isfinite(s.general_mc)) j["general_mc_acc"] = s.general_mc;
  if (std::isfinite(s.domain_mc)) j["domain_mc_acc"] = s.domain_mc;
  if (std::isfinite(s.domain_qa)) j["domain_qa_exact_match"] = s.domain_qa;
  return j;
}

Scores scores_from_json(const nlohmann::json& j) {
  auto get = [&](const char* key) {
    return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
  };
  Scores s;
  s.general = get("general_loss");
  s.domain = get("domain_loss");
  s.general_mc = get("general_mc_acc");
  s.domain_mc = get("domain_mc_acc");
  s.domain_qa = get("domain_qa_exact_match");
  return s;
}

}  // namespace adept
