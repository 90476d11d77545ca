// The run scripts/dp_check.sh's `cli` stage trains, set up the way run_train
// (cli/train_command.cpp) sets it up before building an engine: its cli.toml, the
// tokenizer, the embedded corpus, loader settings and the held-out corpus. Shared by the
// CPU-side check of what `adept train` hands an engine (tests/adept/train_backend_parity_test.cpp)
// and the device-side parity of the two engines (tests/gpu/train_engine_parity_test.cpp).
#pragma once

#include <filesystem>
#include <fstream>
#include <memory>
#include <utility>
#include <vector>

#include "data/corpus.hpp"
#include "data/packed_loader.hpp"
#include "model/decoder.hpp"
#include "pipeline/study_data.hpp"
#include "train/run_config.hpp"

namespace adept::cli_shape_study {

// scripts/dp_check.sh's cli.toml (tests set train.backend per engine where they need to).
constexpr const char* kCliToml = R"([data]
general_split = "blocks"
[train]
backend = "cpu"
steps = 600
batch_size = 8
eval_every = 200
eval_batches = 4
checkpoint_every = 0
)";

struct CliRun {
  RunConfig rc;
  RunTokenizer tokenizer;
  Corpus corpus;
  LoaderConfig lc;
  HeldOutCorpus holdout;

  explicit CliRun(const std::filesystem::path& dir) {
    const std::filesystem::path toml = dir / "cli.toml";
    std::ofstream(toml) << kCliToml;
    rc = load_run_config(toml.string());
    tokenizer = resolve_tokenizer(rc.data.tokenizer, "");
    corpus = open_corpus(corpus_spec("train", rc.data.train, rc.data.train_split, rc.data), tokenizer.named,
                         (dir / "data").string(), false);
    lc = loader_config(rc.train);
    holdout = held_out_corpus(corpus, lc);
  }
  LoaderConfig loader_config(const TrainConfig& tc) const {
    LoaderConfig l;
    l.batch_size = tc.batch_size;
    l.seq_len = tc.seq_len;
    l.seed = tc.seed;
    l.holdout_fraction = rc.data.holdout_fraction;
    l.split_seed = rc.data.split_seed;
    return l;
  }
  PackedLoader loader(const TrainConfig& tc) const {
    std::vector<LoaderSource> sources;
    add_loader_sources(sources, corpus, 1.0);
    return PackedLoader(std::move(sources), loader_config(tc));
  }
  // The CLI's starting weights (fp32, from the run's seed and init_std).
  std::unique_ptr<Decoder<float>> model() const {
    auto m = std::make_unique<Decoder<float>>(rc.model);
    m->init_random(rc.train.seed, rc.init_std);
    return m;
  }
};

}  // namespace adept::cli_shape_study
