// The config file of a run (TOML). A user's file is laid over the embedded default
// (configs/tiny.toml), so it names only what it changes; unknown keys are errors, so a
// typo never passes silently.
//   [run]       what `adept run` does: methods to compare, base model, output folder
//   [model]     architecture, when the base model is trained from scratch
//   [data]      corpora and tokenizer
//   [pretrain]  training of the base from scratch on the general corpus (no base given)
//   [train]     continual pretraining on the domain corpus (same budget for every method)
//   [probe]     layer importance on general probe data
//   [expand]    how many / which layers ADEPT and LLaMA-Pro insert
//   [adept]     decoupled tuning: re-estimation period, probe size, granularity
//   [freeze]    which original layers the `freeze` baseline trains
//   [eval]      held-out evaluation
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace adept {

// A corpus entry is a text file, a JSONL file (*.jsonl, the document in text_field), an
// embedded file ("embedded:<name>") or a directory prepared by `adept data prepare`.
// Files are prepared into <out_dir>/data/ and reused while unchanged.
struct DataConfig {
  std::vector<std::string> train = {"embedded:data/tiny/corpus.txt"};  // `adept train`'s corpus
  std::vector<std::string> general;  // general domain: pretraining, probes, forgetting
  std::vector<std::string> domain;   // target domain: continual pretraining, gain
  // "auto": the base checkpoint's tokenizer when run.base is set, else "bytes"; or a
  // model directory, a tokenizer.json, a SentencePiece *.model.
  std::string tokenizer = "auto";
  std::string general_split = "blocks";  // text files into documents: file | blocks | fortune
  std::string domain_split = "blocks";
  std::string train_split = "blocks";
  std::string text_field = "text";       // JSONL files
  // JSONL files as instruction pairs: "general", "domain", "train" (the corpora whose
  // *.jsonl files hold prompt / response fields; the prompt is not trained on).
  std::vector<std::string> instruct;
  std::string prompt_field = "prompt";
  std::string response_field = "response";
  std::string instruct_template = "User: {prompt}\nAssistant: {response}";
  double holdout_fraction = 0.05;        // of each dataset's documents, held out for evaluation
  uint64_t split_seed = 0;               // which documents are held out
  double replay = 0.0;                   // share of continual-pretraining rows drawn from the general corpus
};

struct TrainConfig {
  std::string backend = "cpu";
  int64_t seq_len = 64;
  int64_t batch_size = 8;
  int64_t grad_accum = 1;
  int64_t steps = 300;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 20;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;
  uint64_t seed = 1234;
  int64_t eval_every = 50;
  int64_t eval_batches = 8;
  int64_t checkpoint_every = 0;  // optimizer steps between resumable checkpoints; 0: none
  std::string out_dir = "runs/tiny";
  // Data parallelism over several GPUs (dist/README.md): 1 shards the optimizer state
  // (ZeRO-1), 2 the gradients too (ZeRO-2: less memory, more communication with
  // grad_accum > 1). One process ignores it; results agree within bf16 noise either way.
  int64_t zero_stage = 1;
  // CUDA backend: replay a micro-batch's forward + backward from a CUDA graph when its
  // shape and document layout recur (false: every launch eager, for debugging), and
  // recompute RMSNorm outputs and the SwiGLU activation in backward (less memory).
  bool cuda_graphs = true;
  bool recompute = false;
};

struct PipelineConfig {
  std::vector<std::string> methods = {"adept", "full", "llama-pro"};
  std::string base;  // HF checkpoint directory; empty: pretrain from scratch
  std::string out_dir = "runs/adept-tiny";
  // dtype of the HF checkpoints written (base, each method's model): "auto" keeps the
  // base checkpoint's torch_dtype (float32 for a base trained from scratch).
  std::string save_dtype = "auto";
  bool resume = true;  // reuse finished stages and continue interrupted training
};

struct ProbeConfig {
  std::string method = "masking_out";
  int64_t batches = 8;
  int64_t batch_size = 4;
};

struct ExpandConfig {
  int64_t layers = 1;               // k: how many layers to insert
  std::vector<int64_t> after;       // explicit list of original layers (overrides k)
};

struct AdeptConfig {
  int64_t reestimate_every = 50;
  int64_t probe_batches = 2;
  int64_t probe_batch_size = 2;
  std::string granularity = "tensor";
  bool inverted = false;
  bool decoupled = true;  // false: ADEPT expansion with one LR (ablation)
};

struct FreezeConfig {
  std::vector<int64_t> layers;  // original layers the `freeze` baseline trains; empty: the top k
};

struct EvalConfig {
  int64_t batches = 8;      // held-out perplexity: windows per corpus
  int64_t batch_size = 4;
  // Optional benchmark files (JSONL; see eval/benchmarks.hpp). Empty: not run.
  std::string general_mc;   // multiple choice, general domain (MMLU-style)
  std::string domain_mc;    // multiple choice, target domain (MedQA-style)
  std::string domain_qa;    // generated answers scored by exact match (GSM8K-style)
  int64_t shots = 0;        // k-shot: the first k items of each file are the examples
  int64_t max_new_tokens = 64;
};

struct RunConfig {
  PipelineConfig run;
  ModelConfig model;
  double init_std = 0.02;
  DataConfig data;
  TrainConfig pretrain;
  TrainConfig train;
  ProbeConfig probe;
  ExpandConfig expand;
  AdeptConfig adept;
  FreezeConfig freeze;
  EvalConfig eval;
  std::string source;  // where it was read from, for messages
  // Sections the user's file sets (not the embedded default's), so that a section that
  // has no effect in this run (e.g. [model] when run.base is given) can be said so.
  std::set<std::string> user_sections;
};

// Loads the embedded default, then `path` over it (empty path: the default alone).
RunConfig load_run_config(const std::string& path);

// Checks the values (called by load_run_config; call again after overriding fields).
void validate_run_config(const RunConfig& config);

// Data parallelism (one process per GPU, dist/README.md) over `world` processes needs
// train.backend = "cuda" and a train.batch_size (the global batch) that divides evenly
// by world. World 1 passes always. Throws adept::Error naming the field.
void validate_data_parallel(const RunConfig& config, int world);

// The settings of a training that shape its result (not out_dir, checkpoint_every), as
// text for stage and checkpoint keys.
std::string describe_training(const TrainConfig& config);

// The methods a study compares: adept, full, llama-pro, freeze, and the two ablations of
// the paper: adept-uniform (LLaMA-Pro's uniform expansion with ADEPT's decoupled
// learning rates) and adept-one-lr (ADEPT's expansion with one learning rate).
const std::vector<std::string>& known_methods();
bool is_known_method(const std::string& name);

// Whether this build has the CUDA backend.
bool cuda_backend_available();

}  // namespace adept
