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
#include <string>
#include <vector>

#include "model/config.hpp"

namespace adept {

struct DataConfig {
  std::string train = "embedded:data/tiny/corpus.txt";  // `adept train`'s corpus
  std::vector<std::string> general;                      // general-domain text files
  std::vector<std::string> domain;                       // target-domain text files
  std::string tokenizer = "bytes";
  double holdout_fraction = 0.05;
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
  std::string out_dir = "runs/tiny";
};

struct PipelineConfig {
  std::vector<std::string> methods = {"adept", "full", "llama-pro"};
  std::string base;  // HF checkpoint directory; empty: pretrain from scratch
  std::string out_dir = "runs/adept-tiny";
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
};

// Loads the embedded default, then `path` over it (empty path: the default alone).
RunConfig load_run_config(const std::string& path);

}  // namespace adept
