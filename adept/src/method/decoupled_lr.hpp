// Stage 2 of ADEPT: adaptive unit-wise decoupled tuning. Each unit of the trainable
// (inserted) layers gets a learning-rate multiplier from its importance for the GENERAL
// domain, re-estimated during training:
//   I(U) = mean over U's elements of |W| ⊙ mean over probe batches of |∂L/∂W|
//   m(U) = 2 · (I_max − I(U)) / (I_max − I_min)        (m ∈ [0, 2]; range 0: m = 1)
// Norm units are normalised against the range over ALL units, the others against the
// range over non-norm units (as the reference code does). Inverted (probe data from the
// target domain): m(U) = 2 · (I(U) − I_min) / (I_max − I_min).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/window_sampler.hpp"
#include "model/decoder.hpp"

namespace adept {

enum class UnitGranularity {
  tensor,  // one unit per parameter tensor (the reference)
  row,     // one unit per output row of each matrix (neurons); norms stay whole tensors
};

UnitGranularity parse_unit_granularity(const std::string& name);

struct UnitEstimate {
  int tensor = -1;     // index in the ParameterStore
  int64_t row = -1;    // -1: the whole tensor
  bool is_norm = false;
  double importance = 0.0;
  double multiplier = 1.0;
};

// Writes the gradient of a batch's mean loss into model.params()'s gradient slots (the
// CPU reference's batch_gradient by default; a GPU engine computes it on the device).
using GradientFn = std::function<void(const TokenBatch& batch)>;

// Importance of every unit of the trainable tensors on `probe` batches, with |W| from
// the host weights. Leaves the model's gradients (and of course its weights and any
// optimizer) exactly as they were.
std::vector<UnitEstimate> estimate_unit_importance(Decoder<float>& model, const std::vector<TokenBatch>& probe,
                                                   UnitGranularity granularity, const GradientFn& gradient = {});

// Fills each unit's multiplier from the importances (the formula above).
void compute_lr_multipliers(std::vector<UnitEstimate>& units, bool inverted);

// Writes the multipliers into the store (tensor multipliers, or per-row multipliers).
void apply_lr_multipliers(ParameterStore<float>& params, const std::vector<UnitEstimate>& units);

}  // namespace adept
