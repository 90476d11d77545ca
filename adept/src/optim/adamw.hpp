// AdamW (Loshchilov & Hutter: decoupled weight decay, bias-corrected moments) over a
// ParameterStore. State exists only for trainable tensors (it mirrors the gradient
// buffer's layout). The effective learning rate of an element is
//   lr · tensor multiplier · row multiplier (when the tensor has per-row multipliers),
// which is how ADEPT's unit-wise decoupled learning rates are applied.
#pragma once

#include <cstdint>
#include <vector>

#include "model/parameters.hpp"

namespace adept {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW {
 public:
  explicit AdamW(AdamWConfig config) : config_(config) {}

  // One update with learning rate `lr` (the schedule's value for this step).
  void step(ParameterStore<float>& params, double lr);

  int64_t steps_taken() const { return t_; }
  const AdamWConfig& config() const { return config_; }
  // Moments, laid out like params.gradients(); exposed for checkpoints.
  std::vector<float>& first_moment() { return m_; }
  std::vector<float>& second_moment() { return v_; }
  void set_steps_taken(int64_t t) { t_ = t; }

 private:
  AdamWConfig config_;
  std::vector<float> m_, v_;
  int64_t t_ = 0;
};

// Scales all gradients so that their global L2 norm is at most max_norm (when
// max_norm > 0). Returns the norm before clipping; a non-finite norm is returned
// as is and nothing is scaled, so the caller can skip the step.
double clip_gradient_norm(ParameterStore<float>& params, double max_norm);

// Linear warmup over warmup_steps, then cosine decay from lr to lr·min_ratio at
// total_steps. step counts from 0.
double cosine_schedule(int64_t step, int64_t warmup_steps, int64_t total_steps, double lr, double min_ratio);

}  // namespace adept
