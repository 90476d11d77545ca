// The training loop: gradient accumulation, global-norm clipping, AdamW with a cosine
// schedule, held-out evaluation, a progress bar, and a metrics log (JSONL). A step whose
// loss or gradient is not finite is skipped and counted, never applied.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/window_sampler.hpp"
#include "model/decoder.hpp"
#include "optim/adamw.hpp"
#include "train/run_config.hpp"

namespace adept {

struct StepRecord {
  int64_t step = 0;
  double loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double tokens_per_second = 0.0;
  bool skipped = false;
};

struct EvalRecord {
  int64_t step = 0;
  double loss = 0.0;
};

struct TrainResult {
  std::vector<StepRecord> steps;
  std::vector<EvalRecord> evals;
  int64_t tokens = 0;
  int64_t skipped_steps = 0;
  double seconds = 0.0;
};

// One optimizer step over grad_accum micro-batches. Returns the record (not yet logged).
StepRecord train_step(Decoder<float>& model, AdamW& optimizer, const std::vector<TokenBatch>& micro_batches,
                      const TrainConfig& config, int64_t step);

// Overwrites the trainable tensors' gradients with the gradient of `batch`'s mean loss
// (probes use this between optimizer steps). Returns the loss.
double batch_gradient(Decoder<float>& model, const TokenBatch& batch);

// Mean loss over `batches` consecutive held-out windows.
double evaluate(Decoder<float>& model, const WindowSampler& holdout, int64_t batch_size, int64_t batches);

struct TrainOptions {
  bool show_progress = true;
  std::string label = "train";  // progress bar label
  std::string metrics_path;     // JSONL, one line per step and per evaluation; empty = none
  // Called before each optimizer step (ADEPT re-estimates its learning rates here).
  std::function<void(int64_t step)> before_step;
};

TrainResult train(Decoder<float>& model, const TrainConfig& config, const WindowSampler& train_data,
                  const WindowSampler* holdout, const TrainOptions& options);

}  // namespace adept
