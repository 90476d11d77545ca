#include "train/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace adept {

namespace {

// Mean loss of each of `buckets` equal slices of the run, drawn as block characters.
std::string sparkline(const std::vector<StepRecord>& steps, int buckets) {
  static const char* const blocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  std::vector<double> means;
  for (int b = 0; b < buckets; ++b) {
    size_t lo = steps.size() * b / buckets, hi = steps.size() * (b + 1) / buckets;
    double sum = 0;
    int n = 0;
    for (size_t i = lo; i < hi; ++i)
      if (std::isfinite(steps[i].loss)) sum += steps[i].loss, ++n;
    if (n) means.push_back(sum / n);
  }
  if (means.empty()) return "";
  auto [mn, mx] = std::minmax_element(means.begin(), means.end());
  std::string s;
  for (double m : means) {
    int level = *mx > *mn ? int(std::lround(7.0 * (m - *mn) / (*mx - *mn))) : 0;
    s += blocks[level];
  }
  return s;
}

double mean_loss(const std::vector<StepRecord>& steps, size_t lo, size_t hi) {
  double sum = 0;
  int n = 0;
  for (size_t i = lo; i < hi && i < steps.size(); ++i)
    if (std::isfinite(steps[i].loss)) sum += steps[i].loss, ++n;
  return n ? sum / n : NAN;
}

}  // namespace

std::string loss_curve_summary(const TrainResult& r) {
  std::string out;
  size_t n = r.steps.size(), tenth = std::max<size_t>(1, n / 10);
  out += fmt::format("loss curve  {}  (first 10%: {:.3f} -> last 10%: {:.3f})\n", sparkline(r.steps, 40),
                     mean_loss(r.steps, 0, tenth), mean_loss(r.steps, n - tenth, n));
  if (!r.evals.empty()) {
    out += "held-out loss:";
    for (const EvalRecord& e : r.evals) out += fmt::format("  step {}: {:.3f}", e.step, e.loss);
    out += "\n";
  }
  out += fmt::format("{} steps, {} tokens in {:.1f} s ({:.0f} tokens/s), {} skipped (non-finite)\n", n, r.tokens,
                     r.seconds, r.seconds > 0 ? double(r.tokens) / r.seconds : 0.0, r.skipped_steps);
  return out;
}

nlohmann::json train_result_json(const TrainResult& r) {
  nlohmann::json j;
  size_t n = r.steps.size(), tenth = std::max<size_t>(1, n / 10);
  j["steps"] = n;
  j["tokens"] = r.tokens;
  j["seconds"] = r.seconds;
  j["tokens_per_second"] = r.seconds > 0 ? double(r.tokens) / r.seconds : 0.0;
  j["skipped_steps"] = r.skipped_steps;
  j["train_loss_first_10pct"] = mean_loss(r.steps, 0, tenth);
  j["train_loss_last_10pct"] = mean_loss(r.steps, n - tenth, n);
  for (const EvalRecord& e : r.evals) j["heldout_loss"].push_back({{"step", e.step}, {"loss", e.loss}});
  return j;
}

}  // namespace adept
