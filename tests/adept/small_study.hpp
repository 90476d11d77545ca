// A study small enough for a unit test: random-word corpora written into a test's
// directory and a run config over them (3 layers of width 32, a few steps of 16 tokens),
// shared by the tests of resuming and of data-parallel training.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "train/run_config.hpp"

namespace adept::testing_study {

// Random "words" in blank-line separated paragraphs: documents of varied lengths.
inline std::string random_paragraphs(std::mt19937_64& rng, int paragraphs) {
  std::string text;
  std::uniform_int_distribution<int> words(3, 40), letters(1, 8), letter('a', 'z');
  for (int p = 0; p < paragraphs; ++p) {
    for (int w = words(rng); w > 0; --w) {
      for (int l = letters(rng); l > 0; --l) text += char(letter(rng));
      text += ' ';
    }
    text += "\n\n";
  }
  return text;
}

struct SmallStudy {
  int paragraphs = 60;  // per corpus
  int64_t layers = 3;
  int64_t steps = 7, batch_size = 2;
  int64_t every = 3;  // evaluation and checkpoint period
};

// General and domain corpora in `dir`, a quarter of general replay (two sources, so a
// loader position covers both), every stage small; the output folder is dir/run.
inline RunConfig small_study_config(const std::filesystem::path& dir, std::mt19937_64& rng, SmallStudy s = {}) {
  RunConfig rc = load_run_config("");
  std::ofstream(dir / "general.txt") << random_paragraphs(rng, s.paragraphs);
  std::ofstream(dir / "domain.txt") << random_paragraphs(rng, s.paragraphs);
  rc.data.general = {(dir / "general.txt").string()};
  rc.data.domain = {(dir / "domain.txt").string()};
  rc.data.general_split = rc.data.domain_split = "blocks";
  rc.data.holdout_fraction = 0.1;
  rc.data.replay = 0.25;
  rc.run.out_dir = (dir / "run").string();
  rc.model.num_hidden_layers = s.layers;
  rc.model.hidden_size = 32;
  rc.model.intermediate_size = 48;
  for (TrainConfig* t : {&rc.pretrain, &rc.train}) {
    t->steps = s.steps, t->seq_len = 16, t->batch_size = s.batch_size, t->eval_every = s.every;
    t->eval_batches = 1, t->warmup_steps = 1, t->checkpoint_every = s.every, t->seed = rng();
  }
  rc.expand.layers = 1;
  rc.probe.batches = 1;
  rc.eval.batches = 1;
  return rc;
}

}  // namespace adept::testing_study
