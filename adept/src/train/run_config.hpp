// The config file of a run (TOML): [model], [data], [train]. A user's file is laid over
// the embedded default (configs/tiny.toml), so it names only what it changes; unknown
// keys are errors, so a typo never passes silently.
#pragma once

#include <cstdint>
#include <string>

#include "model/config.hpp"

namespace adept {

struct DataConfig {
  std::string train = "embedded:data/tiny/corpus.txt";
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

struct RunConfig {
  ModelConfig model;
  double init_std = 0.02;
  DataConfig data;
  TrainConfig train;
  std::string source;  // where it was read from, for messages
};

// Loads the embedded default, then `path` over it (empty path: the default alone).
RunConfig load_run_config(const std::string& path);

}  // namespace adept
