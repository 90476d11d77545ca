// The training loop: gradient accumulation, global-norm clipping, AdamW with a cosine
// schedule, held-out evaluation, a progress bar, a metrics log (JSONL) and checkpoints
// from which an interrupted run continues exactly. A step whose loss or gradient is not
// finite is skipped and counted, never applied.
//
// Where the arithmetic runs is a TrainEngine: the CPU reference decoder (make_cpu_engine)
// or the CUDA backend (train.backend = "cuda", backend/cuda/cuda_train_adapter.hpp). The
// host Decoder<float> is the model's home either way: the engine reads its weights,
// trainable set and learning-rate multipliers at the start, and writes the weights back
// when asked (pull_weights) and at the end of train().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/window_sampler.hpp"
#include "dist/communicator.hpp"
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
  int64_t resumed_from = -1;  // the checkpoint's step when the run continued one
};

// One optimizer step over grad_accum micro-batches on the CPU reference. Returns the
// record (not yet logged).
StepRecord train_step(Decoder<float>& model, AdamW& optimizer, const std::vector<TokenBatch>& micro_batches,
                      const TrainConfig& config, int64_t step);

// Overwrites the trainable tensors' gradients with the gradient of `batch`'s mean loss
// (probes use this between optimizer steps). Returns the loss.
double batch_gradient(Decoder<float>& model, const TokenBatch& batch);

// Mean loss over `batches` consecutive held-out windows.
double evaluate(Decoder<float>& model, const WindowSampler& holdout, int64_t batch_size, int64_t batches);

// What the loop, evaluation and ADEPT's importance estimates need of a model.
class TrainEngine {
 public:
  virtual ~TrainEngine() = default;
  virtual std::string name() const = 0;  // "cpu" | "cuda"
  virtual StepRecord step(const std::vector<TokenBatch>& micro_batches, const TrainConfig& config, int64_t step) = 0;
  // Cross-entropy of a batch, no gradient (held-out loss; masking-out probes).
  virtual cpu::CrossEntropyResult loss(const TokenBatch& batch, const std::vector<bool>& skip_layers = {}) = 0;
  // The host's gradient slots := gradient of batch's mean loss (trainable tensors);
  // weights and optimizer state untouched.
  virtual void gradient(const TokenBatch& batch) = 0;
  virtual void pull_weights() = 0;      // engine → host model weights
  virtual void push_weights() = 0;      // host model weights → engine (a restored checkpoint)
  virtual void push_multipliers() = 0;  // host learning-rate multipliers → engine
  // AdamW's state for checkpoints: moments laid out like the host's gradient buffer, and
  // the number of updates applied.
  virtual void save_optimizer_state(std::vector<float>& first_moment, std::vector<float>& second_moment,
                                    int64_t& steps_taken) = 0;
  virtual void load_optimizer_state(const std::vector<float>& first_moment, const std::vector<float>& second_moment,
                                    int64_t steps_taken) = 0;
  // Peak device memory in MB (0 when the engine is the CPU: RSS says it there).
  virtual double peak_device_mb() const { return 0.0; }
};

// Trains `model` in place on the CPU.
std::unique_ptr<TrainEngine> make_cpu_engine(Decoder<float>& model, const AdamWConfig& adamw);
// config.backend's engine; max_tokens bounds every batch it will see (B·S) and
// max_seq_len every row. A backend this build lacks is an error saying so.
// `communicator` (data parallelism, dist/README.md): nullptr, or one of world 1, is the
// one-process engine; several ranks need the CUDA backend (the steps and the weight and
// optimizer-state copies become collective: every rank makes them at the same points).
std::unique_ptr<TrainEngine> make_train_engine(Decoder<float>& model, const TrainConfig& config, int64_t max_tokens,
                                               int64_t max_seq_len,
                                               std::shared_ptr<dist::Communicator> communicator = nullptr);
// An engine for forward passes only (held-out loss, masking-out probes): freezes every
// tensor of `model` first, so a GPU holds bf16 weights alone, no optimizer state.
std::unique_ptr<TrainEngine> make_inference_engine(Decoder<float>& model, const TrainConfig& config,
                                                   int64_t max_tokens, int64_t max_seq_len);
AdamWConfig adamw_config(const TrainConfig& config);

// Training batches: next(step, micro) draws one micro-batch. A stateful source saves
// and restores its position for checkpoints (a PackedLoader); a stateless one (windows
// that depend only on the step) leaves them empty.
struct TrainData {
  std::function<TokenBatch(int64_t step, int64_t micro)> next;
  std::function<nlohmann::json()> save_position;
  std::function<void(const nlohmann::json&)> restore_position;
};

struct CheckpointOptions {
  std::string dir;      // empty: no checkpoints
  int64_t every = 0;    // optimizer steps between checkpoints; 0: none
  bool resume = true;   // continue from dir's latest checkpoint when there is one
  // What the training is (settings, data, starting weights): a checkpoint with another
  // key is not resumed from (its run trained something else).
  std::string key;
  // State of the method around the loop (ADEPT: multipliers, importance history).
  std::function<nlohmann::json()> save_method;
  std::function<void(const nlohmann::json&)> restore_method;
};

struct TrainOptions {
  bool show_progress = true;
  std::string label = "train";  // progress bar label
  std::string metrics_path;     // JSONL, one line per step and per evaluation; empty = none
  // Called before each optimizer step (ADEPT re-estimates its learning rates here).
  std::function<void(int64_t step, TrainEngine& engine)> before_step;
  // Held-out loss of the model as the engine holds it; empty: no evaluation.
  std::function<double(TrainEngine& engine)> evaluate;
  CheckpointOptions checkpoint;
  int64_t stop_after = -1;  // for tests: return after this many steps, as if interrupted
  // Data parallelism (dist/README.md): this process's rank and the job's process count.
  // Every rank runs the same loop and makes the engine's collective calls at the same
  // points; only rank 0 writes the metrics log, the progress bar and checkpoints. Token
  // counts and tokens per second are the job's (the rank's × world): data.next gives
  // each rank its equal share of the global batch.
  int rank = 0;
  int world = 1;
};

TrainResult train(Decoder<float>& model, TrainEngine& engine, const TrainConfig& config, const TrainData& data,
                  const TrainOptions& options);

// The CPU loop over random windows (tests and small experiments).
TrainResult train(Decoder<float>& model, const TrainConfig& config, const WindowSampler& train_data,
                  const WindowSampler* holdout, const TrainOptions& options);

// A quick fingerprint of a model's weights (every 4096th value and the sizes): tells
// two starting points apart in a checkpoint key without reading a large model whole.
std::string weights_fingerprint(const ParameterStore<float>& params);

// Lines of a JSONL log written before `step` (their "step" < step, or <= step for
// evaluations), so a resumed run appends where its checkpoint left off.
void truncate_jsonl_log(const std::string& path, int64_t step);

}  // namespace adept
