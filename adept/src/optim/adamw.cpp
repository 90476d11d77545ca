#include "optim/adamw.hpp"

#include <cmath>
#include <numbers>

namespace adept {

void AdamW::step(ParameterStore<float>& params, double lr) {
  if (m_.size() != params.gradients().size()) {
    if (t_ != 0) fail("AdamW state ({} values) does not match the trainable parameters ({})", m_.size(),
                      params.gradients().size());
    m_.assign(params.gradients().size(), 0.0f);
    v_.assign(params.gradients().size(), 0.0f);
  }
  ++t_;
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double c1 = 1.0 - std::pow(b1, double(t_)), c2 = 1.0 - std::pow(b2, double(t_));
  for (int i = 0; i < params.size(); ++i) {
    const ParameterInfo& p = params.info(i);
    float* g = params.grad(i);
    if (!g) continue;  // frozen: no state, no update
    float* w = params.value(i);
    float* m = m_.data() + p.grad_offset;
    float* v = v_.data() + p.grad_offset;
    const double tensor_lr = lr * p.lr_multiplier;
    const double wd = p.weight_decay ? config_.weight_decay : 0.0;
    const int64_t rows = p.row_multiplier.empty() ? 1 : p.shape[0];
    const int64_t row_len = p.numel / rows;
#pragma omp parallel for
    for (int64_t r = 0; r < rows; ++r) {
      const double row_lr = p.row_multiplier.empty() ? tensor_lr : tensor_lr * p.row_multiplier[r];
      for (int64_t j = r * row_len; j < (r + 1) * row_len; ++j) {
        double gj = g[j];
        double mj = b1 * m[j] + (1.0 - b1) * gj;
        double vj = b2 * v[j] + (1.0 - b2) * gj * gj;
        m[j] = float(mj);
        v[j] = float(vj);
        double update = (mj / c1) / (std::sqrt(vj / c2) + config_.eps);
        w[j] = float(double(w[j]) * (1.0 - row_lr * wd) - row_lr * update);
      }
    }
  }
}

double clip_gradient_norm(ParameterStore<float>& params, double max_norm) {
  std::vector<float>& g = params.gradients();
  double ss = 0.0;
  const int64_t n = int64_t(g.size());
#pragma omp parallel for reduction(+ : ss)
  for (int64_t i = 0; i < n; ++i) ss += double(g[i]) * double(g[i]);
  double norm = std::sqrt(ss);
  if (!std::isfinite(norm) || max_norm <= 0 || norm <= max_norm) return norm;
  const float scale = float(max_norm / norm);
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) g[i] *= scale;
  return norm;
}

double cosine_schedule(int64_t step, int64_t warmup_steps, int64_t total_steps, double lr, double min_ratio) {
  if (step < warmup_steps) return lr * double(step + 1) / double(warmup_steps);
  if (total_steps <= warmup_steps) return lr;
  double progress = std::min(1.0, double(step - warmup_steps) / double(total_steps - warmup_steps));
  return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace adept
