#include "method/decoupled_lr.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "train/trainer.hpp"

namespace adept {

UnitGranularity parse_unit_granularity(const std::string& name) {
  if (name == "tensor") return UnitGranularity::tensor;
  if (name == "row") return UnitGranularity::row;
  fail("unit granularity '{}' is unknown (known: tensor, row)", name);
}

namespace {
bool is_norm_tensor(const std::string& name) { return name.find("norm") != std::string::npos; }
}  // namespace

std::vector<UnitEstimate> estimate_unit_importance(Decoder<float>& model, const std::vector<TokenBatch>& probe,
                                                   UnitGranularity granularity, const GradientFn& gradient) {
  if (probe.empty()) fail("unit importance needs at least one probe batch");
  ParameterStore<float>& P = model.params();
  std::vector<float> saved = P.gradients();
  std::vector<double> mean_abs_grad(saved.size(), 0.0);
  for (const TokenBatch& b : probe) {
    if (gradient) gradient(b);
    else batch_gradient(model, b);
    const std::vector<float>& g = P.gradients();
    for (size_t j = 0; j < g.size(); ++j) mean_abs_grad[j] += std::abs(double(g[j])) / double(probe.size());
  }
  P.gradients() = std::move(saved);

  std::vector<UnitEstimate> units;
  for (int i = 0; i < P.size(); ++i) {
    const ParameterInfo& p = P.info(i);
    if (p.grad_offset < 0) continue;
    const float* w = P.value(i);
    const double* g = mean_abs_grad.data() + p.grad_offset;
    bool norm = is_norm_tensor(p.name);
    bool per_row = granularity == UnitGranularity::row && !norm;
    int64_t rows = per_row ? p.shape[0] : 1, len = p.numel / rows;
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0.0;
      for (int64_t j = r * len; j < (r + 1) * len; ++j) s += std::abs(double(w[j])) * g[j];
      units.push_back(UnitEstimate{i, per_row ? r : -1, norm, s / double(len), 1.0});
    }
  }
  return units;
}

void compute_lr_multipliers(std::vector<UnitEstimate>& units, bool inverted) {
  const double inf = std::numeric_limits<double>::infinity();
  double all_min = inf, all_max = -inf, matrix_min = inf, matrix_max = -inf;
  for (const UnitEstimate& u : units) {
    all_min = std::min(all_min, u.importance), all_max = std::max(all_max, u.importance);
    if (!u.is_norm) matrix_min = std::min(matrix_min, u.importance), matrix_max = std::max(matrix_max, u.importance);
  }
  for (UnitEstimate& u : units) {
    double lo = u.is_norm ? all_min : matrix_min, hi = u.is_norm ? all_max : matrix_max;
    if (!(hi > lo)) {
      u.multiplier = 1.0;
      continue;
    }
    u.multiplier = inverted ? 2.0 * (u.importance - lo) / (hi - lo) : 2.0 * (hi - u.importance) / (hi - lo);
  }
}

void apply_lr_multipliers(ParameterStore<float>& params, const std::vector<UnitEstimate>& units) {
  for (const UnitEstimate& u : units) {
    ParameterInfo& p = params.info(u.tensor);
    if (u.row < 0) {
      p.lr_multiplier = float(u.multiplier);
      p.row_multiplier.clear();
    } else {
      p.lr_multiplier = 1.0f;
      if (int64_t(p.row_multiplier.size()) != p.shape[0]) p.row_multiplier.assign(p.shape[0], 1.0f);
      p.row_multiplier[u.row] = float(u.multiplier);
    }
  }
}

}  // namespace adept
