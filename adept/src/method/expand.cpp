#include "method/expand.hpp"

#include <algorithm>
#include <set>

namespace adept {

std::vector<int64_t> uniform_expansion_layers(int64_t num_layers, int64_t k) {
  if (k <= 0 || k > num_layers) fail("cannot expand {} layers uniformly into {} groups", num_layers, k);
  std::vector<int64_t> after;
  for (int64_t g = 0; g < k; ++g) after.push_back((g + 1) * num_layers / k - 1);
  return after;
}

Decoder<float> expand_layers(const Decoder<float>& model, const std::vector<int64_t>& after_layers,
                             Expansion* expansion) {
  const int64_t L = model.config().num_hidden_layers;
  std::set<int64_t> chosen;
  for (int64_t l : after_layers) {
    if (l < 0 || l >= L) fail("layer {} cannot be expanded: the model has layers 0..{}", l, L - 1);
    if (!chosen.insert(l).second) fail("layer {} is listed twice for expansion", l);
  }
  Expansion e;
  e.source_layers.assign(chosen.begin(), chosen.end());
  for (int64_t l = 0; l < L; ++l) {
    e.origin.push_back(l);
    if (chosen.count(l)) {
      e.inserted.push_back(int64_t(e.origin.size()));
      e.origin.push_back(l);
    }
  }
  ModelConfig config = model.config();
  config.num_hidden_layers = int64_t(e.origin.size());
  Decoder<float> expanded(config);

  const ParameterStore<float>& src = model.params();
  ParameterStore<float>& dst = expanded.params();
  auto copy = [&](int to, int from) {
    if (dst.info(to).numel != src.info(from).numel)
      fail("internal: size mismatch copying {} to {}", src.info(from).name, dst.info(to).name);
    std::copy_n(src.value(from), src.info(from).numel, dst.value(to));
  };
  copy(expanded.embed_index(), model.embed_index());
  copy(expanded.final_norm_index(), model.final_norm_index());
  if (!config.tie_word_embeddings) copy(expanded.lm_head_index(), model.lm_head_index());
  std::set<int64_t> inserted(e.inserted.begin(), e.inserted.end());
  for (int64_t n = 0; n < config.num_hidden_layers; ++n) {
    std::vector<int> to = layer_tensor_indices(expanded.layer(n));
    std::vector<int> from = layer_tensor_indices(model.layer(e.origin[n]));
    for (size_t t = 0; t < to.size(); ++t) copy(to[t], from[t]);
    if (inserted.count(n)) {
      const LayerParams& p = expanded.layer(n);
      for (int i : {p.o, p.o_bias, p.down})
        if (i >= 0) std::fill_n(dst.value(i), dst.info(i).numel, 0.0f);
    }
  }
  if (expansion) *expansion = std::move(e);
  return expanded;
}

void train_only_layers(Decoder<float>& model, const std::vector<int64_t>& layers) {
  ParameterStore<float>& P = model.params();
  for (int i = 0; i < P.size(); ++i) P.set_trainable(i, false);
  for (int64_t l : layers) {
    if (l < 0 || l >= model.config().num_hidden_layers)
      fail("layer {} cannot be trained: the model has layers 0..{}", l, model.config().num_hidden_layers - 1);
    for (int i : layer_tensor_indices(model.layer(l))) P.set_trainable(i, true);
  }
  P.allocate_gradients();
}

}  // namespace adept
