// The stages of `adept run` one at a time, on Hugging Face checkpoint directories:
//   adept probe  MODEL        layer importance by the four methods (JSON, table, SVG)
//   adept expand MODEL --out  identity-initialised copies of chosen layers (HF checkpoint)
//   adept eval   MODEL        held-out perplexity on corpora, benchmark files
// (`adept train --method` is in train_command.cpp.)
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "cli/commands.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "data/content_hash.hpp"
#include "eval/benchmarks.hpp"
#include "method/expand.hpp"
#include "method/layer_importance.hpp"
#include "pipeline/evaluation.hpp"
#include "pipeline/model_files.hpp"
#include "pipeline/study_data.hpp"
#include "report/svg_plot.hpp"
#include "train/run_config.hpp"

namespace adept::cli {

namespace fs = std::filesystem;

namespace {

// Options every model command shares: the config it starts from, the tokenizer, the
// text it reads and how it batches it.
struct ModelArgs {
  std::string model;
  std::string config_path;
  std::string tokenizer;  // "": the config's data.tokenizer ("auto": the model's own)
  std::vector<std::string> data;
  std::string split;      // "": the config's split for that corpus
  std::string backend;    // "": the config's train.backend
  int64_t seq_len = 0, batch_size = 0, batches = 0;
  std::string out;
  bool quiet = false;
};

void add_model_options(CLI::App* cmd, ModelArgs& a, const std::string& data_help) {
  cmd->add_option("model", a.model, "Hugging Face checkpoint directory (config.json + safetensors)")->required();
  cmd->add_option("--config", a.config_path, "TOML run config, laid over the embedded default");
  cmd->add_option("--tokenizer", a.tokenizer,
                  "bytes | model dir | tokenizer.json | *.model (default: the model's own, as data.tokenizer = auto)");
  cmd->add_option("--data", a.data, data_help);
  cmd->add_option("--split", a.split, "Text files into documents: file | blocks | fortune");
  cmd->add_option("--backend", a.backend, "cpu | cuda (default: the config's train.backend)");
  cmd->add_option("--seq-len", a.seq_len, "Tokens per row (default: train.seq_len)");
  cmd->add_option("--batch-size", a.batch_size, "Rows per batch");
  cmd->add_option("--batches", a.batches, "Batches to use");
  cmd->add_flag("--quiet", a.quiet, "No progress bars");
}

struct Loaded {
  RunConfig rc;
  RunTokenizer tokenizer;
  HfModelConfig hf;
  std::optional<Decoder<float>> model;
};

Loaded load_model(const ModelArgs& a) {
  Loaded l;
  l.rc = load_run_config(a.config_path);
  if (!a.backend.empty()) l.rc.train.backend = a.backend;
  if (a.seq_len > 0) l.rc.train.seq_len = a.seq_len;
  validate_run_config(l.rc);
  l.model.emplace(load_hf_model(a.model, &l.hf));
  l.tokenizer = resolve_tokenizer(a.tokenizer.empty() ? l.rc.data.tokenizer : a.tokenizer, a.model);
  check_vocabulary(l.model->config().vocab_size, l.tokenizer, a.model + "/config.json");
  l.rc.train.seq_len = std::min(l.rc.train.seq_len, l.model->config().max_position_embeddings);
  return l;
}

Corpus open_files(const std::string& name, const std::vector<std::string>& files, const std::string& split,
                  const Loaded& l, const std::string& out, bool quiet) {
  return open_corpus(corpus_spec(name, files, split, l.rc.data), l.tokenizer.named, (fs::path(out) / "data").string(),
                     !quiet);
}

std::vector<TokenBatch> first_batches(const Corpus& corpus, int64_t batches, int64_t batch_size, int64_t seq_len,
                                      uint64_t seed) {
  std::vector<LoaderSource> sources;
  add_loader_sources(sources, corpus, 1.0);
  LoaderConfig c;
  c.batch_size = batch_size;
  c.seq_len = seq_len;
  c.seed = seed;
  PackedLoader loader(std::move(sources), c);
  std::vector<TokenBatch> out;
  for (int64_t i = 0; i < batches; ++i) out.push_back(loader.next_batch());
  return out;
}

// Layer importance of l.model on general probe text by each method in `methods`.
std::vector<LayerImportance> probe(Loaded& l, const ModelArgs& a, const std::vector<ImportanceMethod>& methods) {
  const std::string out = a.out.empty() ? "runs/probe" : a.out;
  Corpus corpus = open_files("probe", a.data.empty() ? l.rc.data.general : a.data,
                             a.split.empty() ? l.rc.data.general_split : a.split, l, out, a.quiet);
  const int64_t B = a.batch_size > 0 ? a.batch_size : l.rc.probe.batch_size;
  const int64_t n = a.batches > 0 ? a.batches : l.rc.probe.batches;
  std::vector<TokenBatch> batches = first_batches(corpus, n, B, l.rc.train.seq_len, 3);
  std::unique_ptr<TrainEngine> engine =
      make_inference_engine(*l.model, l.rc.train, B * l.rc.train.seq_len, l.rc.train.seq_len);
  std::vector<LayerImportance> results;
  for (ImportanceMethod m : methods)
    results.push_back(probe_layer_importance(*l.model, batches, m, [&](const TokenBatch& b, const std::vector<bool>& skip) {
      return engine->loss(b, skip);
    }));
  return results;
}

void run_probe(const ModelArgs& a, const std::string& method_arg, int64_t k) {
  Loaded l = load_model(a);
  std::vector<ImportanceMethod> methods;
  if (method_arg == "all")
    methods = {ImportanceMethod::masking_out, ImportanceMethod::cumulative_gradient, ImportanceMethod::rank_aggregation,
               ImportanceMethod::fisher};
  else
    methods = {parse_importance_method(method_arg)};
  const std::string out = a.out.empty() ? "runs/probe" : a.out;
  make_directories(out);
  std::vector<LayerImportance> results = probe(l, a, methods);

  const int64_t L = l.model->config().num_hidden_layers;
  std::string table = "| layer |";
  for (const LayerImportance& r : results) table += fmt::format(" {} |", importance_method_name(r.method));
  table += "\n|---|";
  for (size_t i = 0; i < results.size(); ++i) table += "---|";
  table += "\n";
  for (int64_t layer = 0; layer < L; ++layer) {
    table += fmt::format("| {} |", layer);
    for (const LayerImportance& r : results) table += fmt::format(" {:.3f} ({:.4g}) |", r.normalized[layer], r.score[layer]);
    table += "\n";
  }
  fmt::print("normalised importance per layer (raw score), on {} probe batches; larger = more general-critical\n\n{}",
             a.batches > 0 ? a.batches : l.rc.probe.batches, table);
  nlohmann::json j = {{"model", a.model}, {"tokenizer", l.tokenizer.name}, {"layers", L}};
  std::vector<Series> lines;
  for (const LayerImportance& r : results) {
    const char* name = importance_method_name(r.method);
    std::vector<int64_t> least = least_important_layers(r, std::min(k, L));
    j["methods"][name] = {{"base_loss", r.base_loss}, {"score", r.score}, {"normalized", r.normalized},
                          {"least_important", least}};
    Series s{name, {}, r.normalized};
    for (int64_t layer = 0; layer < L; ++layer) s.x.push_back(double(layer));
    lines.push_back(std::move(s));
    std::vector<std::string> labels;
    std::vector<bool> chosen(L, false);
    for (int64_t layer = 0; layer < L; ++layer) labels.push_back(std::to_string(layer));
    for (int64_t layer : least) chosen[layer] = true;
    write_file_atomic((fs::path(out) / fmt::format("layer_importance_{}.svg", name)).string(),
                      svg_bar_chart(fmt::format("Layer importance ({})", name), "layer", "normalised importance",
                                    labels, r.normalized, chosen));
    fmt::print("\n{}: the {} least important layers: {}", name, least.size(), fmt::join(least, ", "));
  }
  write_file_atomic((fs::path(out) / "layer_importance.svg").string(),
                    svg_line_chart("Normalised layer importance", "layer", "normalised importance", lines));
  write_file_atomic((fs::path(out) / "layer_importance.json").string(), j.dump(2) + "\n");
  fmt::print("\nwrote    {0}/layer_importance.json, {0}/layer_importance.svg, {0}/layer_importance_<method>.svg\n", out);
}

void run_expand(const ModelArgs& a, std::vector<int64_t> after, int64_t k, bool uniform, const std::string& method,
                const std::string& dtype) {
  if (a.out.empty()) fail("adept expand: --out is required (the directory of the expanded checkpoint)");
  std::string how = "as listed";
  int64_t L = 0;
  if (after.empty()) {
    Loaded l = load_model(a);
    L = l.model->config().num_hidden_layers;
    if (uniform) {
      after = uniform_expansion_layers(L, k);
      how = "uniformly (LLaMA-Pro)";
    } else {
      ModelArgs probe_args = a;
      probe_args.out = (fs::path(a.out).parent_path() / (fs::path(a.out).filename().string() + ".probe")).string();
      LayerImportance imp = probe(l, probe_args, {parse_importance_method(method)})[0];
      after = least_important_layers(imp, k);
      how = fmt::format("the {} least important by {}; normalised importance {:.2f}", k, method,
                        fmt::join(imp.normalized, " "));
    }
  }
  Expansion e = expand_checkpoint(a.model, a.out, after, dtype);
  L = int64_t(e.origin.size() - e.inserted.size());
  fmt::print("expanded {} layers -> {}: copies of layers {} ({}) inserted at {}, o_proj and down_proj zeroed\n", L,
             e.origin.size(), fmt::join(e.source_layers, ", "), how, fmt::join(e.inserted, ", "));
  fmt::print("wrote    {} (Hugging Face checkpoint, expansion.json)\n", a.out);
}

struct EvalFiles {
  std::vector<std::string> mc, qa;
  int64_t shots = 0, max_new_tokens = 64;
  bool held_out_only = false;
};

void run_eval(const ModelArgs& a, const EvalFiles& f) {
  Loaded l = load_model(a);
  if (a.data.empty() && f.mc.empty() && f.qa.empty()) fail("adept eval: nothing to evaluate (give --data, --mc or --qa)");
  const std::string out = a.out.empty() ? "runs/eval" : a.out;
  make_directories(out);
  const int64_t B = a.batch_size > 0 ? a.batch_size : l.rc.eval.batch_size;
  const int64_t n = a.batches > 0 ? a.batches : 1 << 30;  // default: every batch
  const int64_t mc = f.mc.empty() ? 0 : benchmark_row_tokens(l.rc.train.backend, l.model->config(), l.rc.train.seq_len);
  std::unique_ptr<TrainEngine> engine = make_inference_engine(
      *l.model, l.rc.train, std::max(B * l.rc.train.seq_len, mc), std::max(l.rc.train.seq_len, mc));
  nlohmann::json j = {{"model", a.model}, {"tokenizer", l.tokenizer.name}};
  if (!a.data.empty()) fmt::print("| data | scored tokens | loss | perplexity |\n|---|---|---|---|\n");
  for (size_t i = 0; i < a.data.size(); ++i) {
    Corpus c = open_files(fmt::format("eval{}", i), {a.data[i]}, a.split.empty() ? "blocks" : a.split, l, out, a.quiet);
    LoaderConfig lc;
    lc.batch_size = B;
    lc.seq_len = l.rc.train.seq_len;
    lc.holdout_fraction = l.rc.data.holdout_fraction;
    lc.split_seed = l.rc.data.split_seed;
    HeldOutCorpus h = held_out_corpus(c, lc, /*every_document=*/!f.held_out_only);
    int64_t scored = 0;
    double loss = held_out_loss(h, n, [&](const TokenBatch& b) { return engine->loss(b); }, &scored);
    fmt::print("| {} | {} | {:.4f} | {:.3f} |\n", a.data[i], scored, loss, std::exp(loss));
    j["perplexity"][a.data[i]] = {{"scored_tokens", scored}, {"loss", loss}, {"ppl", std::exp(loss)}};
  }
  const Tokenizer& tok = *l.tokenizer.named.tokenizer;
  EncodeFn encode = [&](const std::string& text) { return tok.encode(text); };
  DecodeFn decode = [&](const std::vector<int32_t>& ids) { return tok.decode(ids); };
  auto split = [&](auto items, const std::string& path) {
    if (int64_t(items.size()) <= f.shots) fail("{}: {} items, but --shots {} leaves none to evaluate", path, items.size(), f.shots);
    using Items = decltype(items);
    return std::pair{Items(items.begin() + f.shots, items.end()), Items(items.begin(), items.begin() + f.shots)};
  };
  if (!f.mc.empty() || !f.qa.empty()) fmt::print("\n| benchmark | items | score |\n|---|---|---|\n");
  for (const std::string& path : f.mc) {
    auto [items, examples] = split(load_multiple_choice_jsonl(path), path);
    ContinuationScoreFn score =
        mc > 0 ? continuation_score([&](const TokenBatch& b) { return engine->loss(b); }, mc) : ContinuationScoreFn{};
    MultipleChoiceResult r = evaluate_multiple_choice(*l.model, items, examples, int(f.shots), encode, score);
    fmt::print("| {} | {} | acc {:.1f}%, acc_norm {:.1f}% |\n", path, r.items, 100 * r.acc, 100 * r.acc_norm);
    j["multiple_choice"][path] = {{"items", r.items}, {"acc", r.acc}, {"acc_norm", r.acc_norm}, {"shots", f.shots}};
  }
  for (const std::string& path : f.qa) {
    auto [items, examples] = split(load_generation_jsonl(path), path);
    ExactMatchResult r =
        evaluate_exact_match(*l.model, items, examples, int(f.shots), f.max_new_tokens, encode, decode, tok.eos_id());
    fmt::print("| {} | {} | exact match {:.1f}% |\n", path, r.items, 100 * r.exact_match);
    j["exact_match"][path] = {{"items", r.items}, {"exact_match", r.exact_match}, {"shots", f.shots}};
  }
  write_file_atomic((fs::path(out) / "eval.json").string(), j.dump(2) + "\n");
  fmt::print("wrote    {}/eval.json\n", out);
}

}  // namespace

void add_model_commands(CLI::App& app) {
  {
    auto a = std::make_shared<ModelArgs>();
    auto method = std::make_shared<std::string>("all");
    auto k = std::make_shared<int64_t>(2);
    CLI::App* cmd = app.add_subcommand(
        "probe", "Layer importance of a model on general probe text (masking out, cumulative gradient, rank "
                 "aggregation, Fisher): JSON, a table and SVG plots of normalised importance per layer");
    add_model_options(cmd, *a, "General-domain probe text: text / *.jsonl files or prepared dataset dirs (default: "
                               "the config's data.general)");
    cmd->add_option("--method", *method, "all | masking_out | cumulative_gradient | rank_aggregation | fisher")
        ->capture_default_str();
    cmd->add_option("--least", *k, "How many least important layers to name")->capture_default_str();
    cmd->add_option("--out", a->out, "Output directory (default runs/probe)");
    cmd->callback([a, method, k] { run_probe(*a, *method, *k); });
  }
  {
    auto a = std::make_shared<ModelArgs>();
    auto after = std::make_shared<std::vector<int64_t>>();
    auto k = std::make_shared<int64_t>(2);
    auto uniform = std::make_shared<bool>(false);
    auto method = std::make_shared<std::string>("masking_out");
    auto dtype = std::make_shared<std::string>("auto");
    CLI::App* cmd = app.add_subcommand(
        "expand", "Insert identity-initialised copies after chosen layers (o_proj and down_proj zeroed, so the "
                  "model computes the same function) and write the deeper model as an HF checkpoint");
    add_model_options(cmd, *a, "Probe text for choosing the least important layers (default: data.general)");
    cmd->add_option("--out", a->out, "Directory of the expanded checkpoint")->required();
    cmd->add_option("--after", *after, "Original layers to copy (e.g. --after 3 7); default: probe and take the "
                                       "--layers least important")
        ->delimiter(',');
    cmd->add_option("--layers", *k, "k: how many layers to insert")->capture_default_str();
    cmd->add_flag("--uniform", *uniform, "LLaMA-Pro: one copy after every L/k-th layer, no probe");
    cmd->add_option("--method", *method, "Importance method of the probe")->capture_default_str();
    cmd->add_option("--dtype", *dtype, "Stored dtype: auto (the input's) | float32 | bfloat16 | float16")
        ->capture_default_str();
    cmd->callback([a, after, k, uniform, method, dtype] { run_expand(*a, *after, *k, *uniform, *method, *dtype); });
  }
  {
    auto a = std::make_shared<ModelArgs>();
    auto f = std::make_shared<EvalFiles>();
    CLI::App* cmd = app.add_subcommand(
        "eval", "Perplexity of a model on text corpora, multiple-choice accuracy and exact match on benchmark files");
    add_model_options(cmd, *a, "Text / *.jsonl files or prepared dataset dirs; perplexity of each");
    cmd->add_flag("--held-out", f->held_out_only,
                  "Only the documents `adept run` holds out (data.holdout_fraction, data.split_seed), not all");
    cmd->add_option("--mc", f->mc, "Multiple-choice JSONL files ({question, choices, answer})");
    cmd->add_option("--qa", f->qa, "Generation JSONL files ({question, answer}), GSM8K-style exact match");
    cmd->add_option("--shots", f->shots, "k-shot: the first k items of each file are the examples")
        ->capture_default_str();
    cmd->add_option("--max-new-tokens", f->max_new_tokens, "Greedy decoding limit for --qa")->capture_default_str();
    cmd->add_option("--out", a->out, "Output directory: eval.json and the prepared data (default runs/eval)");
    cmd->callback([a, f] { run_eval(*a, *f); });
  }
}

}  // namespace adept::cli
