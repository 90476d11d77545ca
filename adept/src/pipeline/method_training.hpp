// One method of the study on a base model: the model it trains (ADEPT and LLaMA-Pro:
// expanded, only the inserted layers trainable; full: everything; freeze: chosen
// original layers; the ablations adept-uniform and adept-one-lr: see known_methods()), continual pretraining on the domain corpus (plus general replay when
// configured) with resumable checkpoints, and for ADEPT the decoupled learning rates
// re-estimated on general probe batches and logged as JSONL.
#pragma once

#include <string>
#include <vector>

#include "method/layer_importance.hpp"
#include "pipeline/study_data.hpp"
#include "report/svg_plot.hpp"
#include "train/trainer.hpp"

namespace adept {

struct MethodModel {
  Decoder<float> model;
  std::string trained;               // what trains, in words
  std::vector<int64_t> expanded_after;  // original layers copied (adept, llama-pro)
};

// The method's model from `base`, trainable set chosen. ADEPT needs `importance` unless
// expand.after lists the layers.
MethodModel prepare_method_model(const std::string& method, const Decoder<float>& base,
                                 const LayerImportance* importance, const RunConfig& rc);

struct MethodTraining {
  std::string name, trained;
  int64_t trainable = 0, total = 0;
  TrainResult train;
  double peak_memory_mb = 0;
  std::string memory_kind;  // "RSS" (CPU) or "GPU"
  std::vector<Series> multipliers;  // ADEPT: each unit's multiplier over the steps
};

// Trains `m` in place. Files in dir: metrics.jsonl, lr_multipliers.jsonl (ADEPT),
// checkpoints/ (train.checkpoint_every; resumed from when present and rc.run.resume).
// `communicator` of several ranks (dist/README.md): this rank's part of a data-parallel
// job (train.backend = "cuda"; rank 0 alone writes the logs and checkpoints).
MethodTraining train_method(const std::string& method, MethodModel& m, const StudyData& data, const RunConfig& rc,
                            const std::string& dir, bool show_progress, int64_t stop_after = -1,
                            std::shared_ptr<dist::Communicator> communicator = nullptr);

double peak_rss_mb();

nlohmann::json method_training_json(const MethodTraining& t);
MethodTraining method_training_from_json(const nlohmann::json& j);

}  // namespace adept
