#include "method/layer_importance.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "data/packed_loader.hpp"
#include "train/trainer.hpp"

namespace adept {

ImportanceMethod parse_importance_method(const std::string& name) {
  if (name == "masking_out" || name == "masking-out") return ImportanceMethod::masking_out;
  if (name == "cumulative_gradient" || name == "gradient") return ImportanceMethod::cumulative_gradient;
  if (name == "rank_aggregation" || name == "rank") return ImportanceMethod::rank_aggregation;
  if (name == "fisher") return ImportanceMethod::fisher;
  fail("importance method '{}' is unknown (known: masking_out, cumulative_gradient, rank_aggregation, fisher)", name);
}

const char* importance_method_name(ImportanceMethod method) {
  switch (method) {
    case ImportanceMethod::masking_out: return "masking_out";
    case ImportanceMethod::cumulative_gradient: return "cumulative_gradient";
    case ImportanceMethod::rank_aggregation: return "rank_aggregation";
    case ImportanceMethod::fisher: return "fisher";
  }
  return "?";
}

namespace {

double probe_loss(Decoder<float>& model, const std::vector<TokenBatch>& probe, const std::vector<bool>& skip,
                  const ProbeLossFn& loss) {
  double sum = 0.0;
  int64_t count = 0;
  ForwardOptions fo;
  fo.skip_layers = skip;
  for (const TokenBatch& b : probe) {
    cpu::CrossEntropyResult r = loss ? loss(b, skip) : model.forward(batch_view(b), fo);
    sum += r.loss_sum;
    count += r.count;
  }
  return count ? sum / double(count) : 0.0;
}

// Per-tensor scores of every layer tensor: Σ over batches of Σ f(W, ∂L_batch/∂W), where
// ∂L_batch is the gradient of the batch's mean loss. All tensors are made trainable for
// the duration and the store's trainable flags and gradients are restored afterwards.
template <typename F>
std::vector<double> tensor_gradient_scores(Decoder<float>& model, const std::vector<TokenBatch>& probe, F f) {
  ParameterStore<float>& P = model.params();
  std::vector<bool> was_trainable(P.size());
  for (int i = 0; i < P.size(); ++i) was_trainable[i] = P.info(i).trainable, P.set_trainable(i, true);
  std::vector<float> saved_grads = P.gradients();
  std::vector<int64_t> saved_offsets(P.size());
  for (int i = 0; i < P.size(); ++i) saved_offsets[i] = P.info(i).grad_offset;
  P.allocate_gradients();

  std::vector<double> score(P.size(), 0.0);
  for (const TokenBatch& b : probe) {
    batch_gradient(model, b);
    for (int i = 0; i < P.size(); ++i) {
      const float* w = P.value(i);
      const float* g = P.grad(i);
      double s = 0.0;
      for (int64_t j = 0; j < P.info(i).numel; ++j) s += f(double(w[j]), double(g[j]));
      score[i] += s;
    }
  }
  for (int i = 0; i < P.size(); ++i) P.set_trainable(i, was_trainable[i]);
  P.allocate_gradients();
  // Put the caller's gradients back where they were.
  for (int i = 0; i < P.size(); ++i)
    if (P.grad(i) && saved_offsets[i] >= 0)
      std::copy_n(saved_grads.data() + saved_offsets[i], P.info(i).numel, P.grad(i));
  return score;
}

// Layer l's tensors with their kind (the name after "model.layers.<l>.").
std::vector<std::pair<std::string, int>> layer_tensors(const Decoder<float>& model, int64_t l) {
  std::vector<std::pair<std::string, int>> out;
  std::string prefix = "model.layers." + std::to_string(l) + ".";
  const ParameterStore<float>& P = model.params();
  for (int i = 0; i < P.size(); ++i)
    if (P.info(i).name.rfind(prefix, 0) == 0) out.emplace_back(P.info(i).name.substr(prefix.size()), i);
  return out;
}

}  // namespace

LayerImportance probe_layer_importance(Decoder<float>& model, const std::vector<TokenBatch>& probe,
                                       ImportanceMethod method, const ProbeLossFn& loss) {
  if (probe.empty()) fail("layer importance needs at least one probe batch");
  const int64_t L = model.config().num_hidden_layers;
  LayerImportance r;
  r.method = method;
  r.base_loss = probe_loss(model, probe, {}, loss);
  r.score.assign(L, 0.0);

  if (method == ImportanceMethod::masking_out) {
    for (int64_t l = 0; l < L; ++l) {
      std::vector<bool> skip(L, false);
      skip[l] = true;
      r.score[l] = probe_loss(model, probe, skip, loss) - r.base_loss;
    }
  } else {
    std::vector<double> tensor_score =
        method == ImportanceMethod::fisher
            ? tensor_gradient_scores(model, probe, [](double, double g) { return g * g; })
            : tensor_gradient_scores(model, probe, [](double w, double g) { return std::abs(w * g); });
    if (method == ImportanceMethod::rank_aggregation) {
      // For each tensor kind, rank the layers by that tensor's score (rank 0 = highest
      // score); a layer's score is 1 − its mean normalised rank, so the layer that most
      // kinds rank first scores 1.
      std::map<std::string, std::vector<std::pair<double, int64_t>>> by_kind;
      for (int64_t l = 0; l < L; ++l)
        for (auto& [kind, i] : layer_tensors(model, l)) by_kind[kind].emplace_back(tensor_score[i], l);
      std::vector<double> rank_sum(L, 0.0);
      std::vector<int> kinds(L, 0);
      for (auto& [kind, entries] : by_kind) {
        std::sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.first > b.first; });
        for (size_t pos = 0; pos < entries.size(); ++pos) {
          double normalized_rank = entries.size() > 1 ? double(pos) / double(entries.size() - 1) : 0.0;
          rank_sum[entries[pos].second] += normalized_rank;  // 0 = most important
          kinds[entries[pos].second] += 1;
        }
      }
      for (int64_t l = 0; l < L; ++l) r.score[l] = 1.0 - (kinds[l] ? rank_sum[l] / kinds[l] : 1.0);
    } else {
      for (int64_t l = 0; l < L; ++l)
        for (auto& [kind, i] : layer_tensors(model, l)) r.score[l] += tensor_score[i];
      if (method == ImportanceMethod::cumulative_gradient) {
        // Relative to the top layer, as the reference normalises it (its division by the
        // sample count cancels in this ratio).
        double top = *std::max_element(r.score.begin(), r.score.end());
        for (double& s : r.score) s = top > 0 ? s / top : 0.0;
      }
    }
  }
  auto [mn, mx] = std::minmax_element(r.score.begin(), r.score.end());
  r.normalized.resize(L);
  for (int64_t l = 0; l < L; ++l) r.normalized[l] = *mx > *mn ? (r.score[l] - *mn) / (*mx - *mn) : 0.0;
  return r;
}

std::vector<int64_t> least_important_layers(const LayerImportance& importance, int64_t k) {
  const int64_t L = int64_t(importance.score.size());
  if (k < 0 || k > L) fail("cannot choose {} layers to expand out of {}", k, L);
  std::vector<int64_t> order(L);
  std::iota(order.begin(), order.end(), 0);
  // Stable: equal scores keep the lower layer first, so the choice is reproducible.
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return importance.score[a] < importance.score[b]; });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace adept
