// Stage 0 of ADEPT: how much each decoder layer matters for general competence,
// measured on general-domain probe batches by the four methods of the paper.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/window_sampler.hpp"
#include "model/decoder.hpp"

namespace adept {

enum class ImportanceMethod {
  masking_out,          // loss rise when the layer is skipped (the paper's best; default)
  cumulative_gradient,  // Σ |W ⊙ ∂L/∂W| over the layer, per sample
  rank_aggregation,     // 1 − mean normalised rank of the layer across tensor kinds
  fisher,               // diagonal Fisher: Σ (∂L/∂W)² over the layer
};

ImportanceMethod parse_importance_method(const std::string& name);  // throws naming it
const char* importance_method_name(ImportanceMethod method);

struct LayerImportance {
  ImportanceMethod method = ImportanceMethod::masking_out;
  double base_loss = 0.0;           // probe loss of the intact model
  std::vector<double> score;        // raw score per layer (larger = more general-critical)
  std::vector<double> normalized;   // (s − min) / (max − min), as the reference plots it
};

// The loss of a batch with some layers skipped (masking out runs it L + 1 times per
// batch; a GPU engine may supply it). Default: model.forward on the CPU.
using ProbeLossFn = std::function<cpu::CrossEntropyResult(const TokenBatch& batch, const std::vector<bool>& skip)>;

// Never modifies the model's weights: masking out skips the layer in the forward pass,
// and the gradient methods use a scratch copy of the gradient buffer state.
LayerImportance probe_layer_importance(Decoder<float>& model, const std::vector<TokenBatch>& probe,
                                       ImportanceMethod method, const ProbeLossFn& loss = {});

// Indices of the k layers with the lowest score, ascending by index.
std::vector<int64_t> least_important_layers(const LayerImportance& importance, int64_t k);

}  // namespace adept
