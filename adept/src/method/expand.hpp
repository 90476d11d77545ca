// Stage 1 of ADEPT (and LLaMA-Pro's block expansion): insert identity-initialised copies
// of chosen layers. A copy starts as a clone of its source layer with the two output
// projections (attention o_proj, MLP down_proj) zeroed, so the new block adds exactly
// zero to the residual stream and the expanded model computes the same function.
#pragma once

#include <cstdint>
#include <vector>

#include "model/decoder.hpp"

namespace adept {

struct Expansion {
  std::vector<int64_t> source_layers;  // original layers that were copied (ascending)
  std::vector<int64_t> inserted;       // indices of the copies in the expanded model
  std::vector<int64_t> origin;         // for every expanded layer, its original layer
};

// LLaMA-Pro: k groups of L/k layers, one copy after the last layer of each group.
std::vector<int64_t> uniform_expansion_layers(int64_t num_layers, int64_t k);

// Inserts a copy directly after each layer in `after_layers` (original indices).
Decoder<float> expand_layers(const Decoder<float>& model, const std::vector<int64_t>& after_layers,
                             Expansion* expansion);

// Makes exactly the tensors of `layers` trainable (all else frozen: no gradient, no
// optimizer state) and lays out the gradient buffer anew.
void train_only_layers(Decoder<float>& model, const std::vector<int64_t>& layers);

}  // namespace adept
