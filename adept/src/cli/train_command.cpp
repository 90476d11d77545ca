// `adept train [config.toml]`: train a decoder from scratch on data.train (default: the
// embedded tiny run), with a progress bar, held-out loss, a metrics log, resumable
// checkpoints and the trained model written as a Hugging Face checkpoint.
// `adept train --method adept|full|llama-pro|freeze --base DIR`: one method of the study
// on a Hugging Face checkpoint: continual pretraining on the domain corpus.
// Both run data parallel when a launcher (mpirun, srun, torchrun-style variables)
// starts one process per GPU: see Launch below and dist/README.md. scripts/dp_check.sh's
// `cli` stage runs both under 2 processes (first run on 2x H200, 2026-11-30).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <optional>

#include "cli/commands.hpp"
#include "core/atomic_file.hpp"
#include "core/embedded.hpp"
#include "dist/communicator.hpp"
#include "dist/launch_env.hpp"
#include "dist/sharded_loader.hpp"
#include "model/decoder.hpp"
#include "method/layer_importance.hpp"
#include "pipeline/method_training.hpp"
#include "pipeline/model_files.hpp"
#include "pipeline/study_data.hpp"
#include "train/report.hpp"
#include "train/run_config.hpp"
#include "train/trainer.hpp"

namespace adept::cli {

namespace fs = std::filesystem;

namespace {

struct TrainArgs {
  std::string config_path;
  int64_t steps = 0;
  int64_t zero_stage = 0;  // 0: the config's
  std::string out_dir;
  bool quiet = false;
  std::string method, base, backend;
  std::vector<std::string> data, general;
  std::vector<int64_t> after;
};

// Data parallelism (dist/README.md): one process per GPU, started by mpirun, srun or a
// torchrun-style environment. With no launcher variables the world is 1, there is no
// communicator and every call below takes the one-process path, unchanged.
struct Launch {
  dist::LaunchEnv env;
  std::shared_ptr<dist::Communicator> communicator;  // nullptr: one process
  bool lead() const { return env.rank == 0; }        // prints and writes
  void barrier() const {
    if (communicator) communicator->barrier();
  }
};

// Reads the launcher's variables and, for several processes, checks the config and
// joins the job (make_communicator makes this rank's GPU current, so it must come before
// any other CUDA call).
Launch join_launch(const RunConfig& rc, const dist::LaunchEnv& env) {
  Launch l;
  l.env = env;
  validate_data_parallel(rc, env.world);
  if (env.distributed()) l.communicator = dist::make_communicator(env);
  return l;
}

// Files every rank reads but one should write (the tokenized corpora): rank 0 makes
// them, then the others open what it made.
template <class Open>
auto lead_first(const Launch& l, Open&& open) -> decltype(open()) {
  if (!l.communicator) return open();
  std::optional<decltype(open())> made;
  if (l.lead()) made.emplace(open());
  l.barrier();
  if (!l.lead()) made.emplace(open());
  return std::move(*made);
}

// Rank 0's values on every rank (a probe run on each GPU could differ in the last bits,
// and the layers it picks must agree).
void share_from_lead(const Launch& l, std::vector<double>& values) {
  if (!l.communicator) return;
  if (!l.lead()) std::fill(values.begin(), values.end(), 0.0);
  l.communicator->all_reduce_host(values.data(), values.size(), dist::ReduceOp::sum);
}

// One method on an HF checkpoint: the stage `adept run` runs for each method.
void run_method(const TrainArgs& args) {
  const dist::LaunchEnv env = dist::read_launch_env();
  RunConfig rc = load_run_config(args.config_path);
  if (args.base.empty() && rc.run.base.empty()) fail("adept train --method {}: --base (an HF checkpoint) is required", args.method);
  if (!args.base.empty()) rc.run.base = args.base;
  if (!args.data.empty()) rc.data.domain = args.data;
  if (!args.general.empty()) rc.data.general = args.general;
  if (!args.after.empty()) rc.expand.after = args.after;
  if (!args.backend.empty()) rc.train.backend = args.backend;
  if (args.steps > 0) rc.train.steps = args.steps;
  if (args.zero_stage > 0) rc.train.zero_stage = args.zero_stage;
  if (!args.out_dir.empty()) rc.train.out_dir = args.out_dir;
  validate_run_config(rc);
  const Launch launch = join_launch(rc, env);
  const bool show = !args.quiet && launch.lead();
  const fs::path out = rc.train.out_dir;
  make_directories(out.string());
  StudyData data = lead_first(launch, [&] { return open_study_data(rc, out.string(), show); });
  HfModelConfig hf;
  Decoder<float> base = load_hf_model(rc.run.base, &hf);
  check_vocabulary(base.config().vocab_size, data.tokenizer, rc.run.base + "/config.json");
  if (rc.train.seq_len > base.config().max_position_embeddings)
    fail("{}: train.seq_len ({}) exceeds max_position_embeddings ({}) of {}/config.json", rc.source, rc.train.seq_len,
         base.config().max_position_embeddings, rc.run.base);

  std::optional<LayerImportance> importance;
  if ((args.method == "adept" || args.method == "adept-one-lr") && rc.expand.after.empty()) {
    std::vector<TokenBatch> probe = probe_batches(data, rc.train.seq_len, rc.probe.batches, rc.probe.batch_size, 3);
    std::unique_ptr<TrainEngine> engine =
        make_inference_engine(base, rc.train, rc.probe.batch_size * rc.train.seq_len, rc.train.seq_len);
    importance = probe_layer_importance(base, probe, parse_importance_method(rc.probe.method),
                                        [&](const TokenBatch& b, const std::vector<bool>& skip) { return engine->loss(b, skip); });
    share_from_lead(launch, importance->score);
    share_from_lead(launch, importance->normalized);
    if (launch.lead())
      fmt::print("probe    {} importance per layer: {:.2f}\n", rc.probe.method, fmt::join(importance->normalized, " "));
  }
  MethodModel m = prepare_method_model(args.method, base, importance ? &*importance : nullptr, rc);
  if (launch.lead())
    fmt::print("method   {}: {} ({:.1f}% of {:.2f}M parameters train), {} steps x {} x {} tokens on {}, backend {}\n",
               args.method, m.trained, 100.0 * double(m.model.params().trainable_numel()) / double(m.model.params().total_numel()),
               double(m.model.params().total_numel()) / 1e6, rc.train.steps, rc.train.batch_size, rc.train.seq_len,
               fmt::join(rc.data.domain, ", "), rc.train.backend);
  if (launch.lead() && launch.env.distributed())
    fmt::print("launch   {} processes ({}), global batch {} = {} per GPU, ZeRO-{}\n", launch.env.world,
               launch.env.launcher, rc.train.batch_size, rc.train.batch_size / launch.env.world, rc.train.zero_stage);
  std::fflush(stdout);
  MethodTraining t = train_method(args.method, m, data, rc, out.string(), show, -1, launch.communicator);
  if (!launch.lead()) return launch.barrier();
  fmt::print("\n{}", loss_curve_summary(t.train));
  save_hf_model((out / "model").string(), m.model, hf, data.tokenizer.checkpoint_source(),
                resolve_save_dtype(rc.run.save_dtype, hf));
  fs::remove_all(out / "checkpoints");
  nlohmann::json summary = method_training_json(t);
  summary.erase("steps");
  summary["train"] = train_result_json(t.train);
  summary["base"] = rc.run.base;
  write_file_atomic((out / "summary.json").string(), summary.dump(2) + "\n");
  fmt::print("wrote    {0}/model (Hugging Face checkpoint, {1} layers), {0}/metrics.jsonl, {0}/summary.json{2}\n",
             out.string(), m.model.config().num_hidden_layers,
             args.method == "adept" || args.method == "adept-uniform" ? fmt::format(", {}/lr_multipliers.jsonl", out.string()) : "");
  std::fflush(stdout);
  launch.barrier();
}

void run_train(const TrainArgs& args) {
  if (!args.method.empty()) return run_method(args);
  const dist::LaunchEnv env = dist::read_launch_env();
  RunConfig rc = load_run_config(args.config_path);
  if (args.steps > 0) rc.train.steps = args.steps;
  if (args.zero_stage > 0) rc.train.zero_stage = args.zero_stage;
  if (!args.backend.empty()) rc.train.backend = args.backend;
  if (!args.backend.empty() || args.zero_stage > 0) validate_run_config(rc);
  if (!args.out_dir.empty()) rc.train.out_dir = args.out_dir;
  const Launch launch = join_launch(rc, env);
  const bool lead = launch.lead();
  const fs::path out = rc.train.out_dir;
  make_directories(out.string());

  RunTokenizer tokenizer = resolve_tokenizer(rc.data.tokenizer, "");
  check_vocabulary(rc.model.vocab_size, tokenizer, rc.source + ": [model] vocab_size");
  Corpus corpus = lead_first(launch, [&] {
    return open_corpus(corpus_spec("train", rc.data.train, rc.data.train_split, rc.data), tokenizer.named,
                       (out / "data").string(), !args.quiet && lead);
  });
  LoaderConfig lc;
  lc.batch_size = rc.train.batch_size;
  lc.seq_len = rc.train.seq_len;
  lc.seed = rc.train.seed;
  lc.holdout_fraction = rc.data.holdout_fraction;
  lc.split_seed = rc.data.split_seed;
  std::vector<LoaderSource> sources;
  add_loader_sources(sources, corpus, 1.0);
  // lc.batch_size is the global batch: data parallel, each rank trains on its share of
  // the rows (ShardedLoader) and holds the whole held-out set; the engine evaluates each
  // held-out batch's rows shared out over the ranks and sums the losses.
  std::optional<PackedLoader> loader;
  std::optional<dist::ShardedLoader> sharded;
  if (launch.env.distributed()) sharded.emplace(std::move(sources), lc, launch.env.rank, launch.env.world);
  else loader.emplace(std::move(sources), lc);
  HeldOutCorpus holdout = held_out_corpus(corpus, lc);

  Decoder<float> model(rc.model);
  model.init_random(rc.train.seed, rc.init_std);
  const ModelConfig& m = model.config();
  if (lead) {
    fmt::print("config   {}\n", rc.source);
    fmt::print("model    {} | {} layers, hidden {}, heads {}/{} (q/kv), head_dim {}, mlp {}, vocab {} | {:.2f}M params\n",
               m.model_type, m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.num_key_value_heads,
               m.head_dim, m.intermediate_size, m.vocab_size, double(model.params().total_numel()) / 1e6);
    fmt::print("data     {} | {} documents, {} tokens, {} held out (tokenizer {})\n", fmt::join(rc.data.train, ", "),
               corpus.documents, corpus.tokens, holdout.tokens, tokenizer.name);
    fmt::print("train    {} steps x {} sequences x {} tokens (x{} accumulation), lr {} cosine, backend {}\n",
               rc.train.steps, rc.train.batch_size, rc.train.seq_len, rc.train.grad_accum, rc.train.lr, rc.train.backend);
    if (launch.env.distributed())
      fmt::print("launch   {} processes ({}), global batch {} = {} per GPU, ZeRO-{}\n", launch.env.world,
                 launch.env.launcher, rc.train.batch_size, rc.train.batch_size / launch.env.world, rc.train.zero_stage);
  }
  std::fflush(stdout);

  std::unique_ptr<TrainEngine> engine =
      make_train_engine(model, rc.train, rc.train.batch_size * rc.train.seq_len, rc.train.seq_len, launch.communicator);
  TrainOptions options;
  options.show_progress = !args.quiet;
  options.rank = launch.env.rank;
  options.world = launch.env.world;
  options.metrics_path = (out / "metrics.jsonl").string();
  if (!holdout.empty())
    options.evaluate = [&](TrainEngine& e) {
      return held_out_loss(holdout, rc.train.eval_batches, [&](const TokenBatch& b) { return e.loss(b); });
    };
  options.checkpoint.dir = (out / "checkpoints").string();
  options.checkpoint.every = rc.train.checkpoint_every;
  options.checkpoint.resume = rc.run.resume;
  options.checkpoint.key = weights_fingerprint(model.params()) + "|" + describe_training(rc.train) + "|" +
                           corpus.fingerprint + fmt::format("|{}|{}", rc.data.holdout_fraction, rc.data.split_seed);
  TrainResult result =
      train(model, *engine, rc.train, sharded ? loader_train_data(*sharded) : loader_train_data(*loader), options);
  if (!lead) return launch.barrier();  // the weights are rank 0's to write

  fmt::print("\n{}", loss_curve_summary(result));
  HfModelConfig hf(rc.model);
  save_hf_model((out / "model").string(), model, hf, tokenizer.checkpoint_source(), DType::F32);
  fs::remove_all(out / "checkpoints");
  nlohmann::json summary = train_result_json(result);
  summary["config"] = rc.source;
  summary["parameters"] = model.params().total_numel();
  write_file_atomic((out / "summary.json").string(), summary.dump(2) + "\n");
  fmt::print("wrote    {0}/metrics.jsonl, {0}/summary.json, {0}/model (Hugging Face checkpoint)\n", out.string());
  std::fflush(stdout);
  launch.barrier();
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Train a decoder from scratch on data.train (no config: the embedded tiny run), or with --method one "
               "method of the study on an HF checkpoint (--base) and the domain corpus");
  cmd->add_option("config", args->config_path, "TOML run config, laid over the embedded default (configs/tiny.toml)");
  cmd->add_option("--method", args->method, "adept | full | llama-pro | freeze | adept-uniform | adept-one-lr (continual pretraining of --base)")
      ->check(CLI::IsMember(known_methods()));
  cmd->add_option("--base", args->base, "HF checkpoint directory to adapt (overrides run.base)");
  cmd->add_option("--data", args->data, "Domain corpus: text / *.jsonl files or prepared dirs (overrides data.domain)");
  cmd->add_option("--general", args->general,
                  "General corpus: ADEPT's probe data and the forgetting measure (overrides data.general)");
  cmd->add_option("--after", args->after, "Layers to copy (adept; overrides expand.after, skips the probe)")
      ->delimiter(',');
  cmd->add_option("--backend", args->backend, "cpu | cuda (overrides train.backend)");
  cmd->add_option("--steps", args->steps, "Override train.steps");
  cmd->add_option("--zero-stage", args->zero_stage,
                  "Data parallel over several GPUs: 1 shards the optimizer state, 2 the gradients too "
                  "(overrides train.zero_stage)")
      ->check(CLI::Range(1, 2));
  cmd->add_option("--out", args->out_dir, "Override train.out_dir (model/, metrics.jsonl, summary.json)");
  cmd->add_flag("--quiet", args->quiet, "No progress bar");
  cmd->callback([args] { run_train(*args); });
}

void add_config_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("config", "Print the embedded default config, or check a config file");
  cmd->add_option("config", *path, "A config file to validate (laid over the default)");
  cmd->callback([path] {
    if (path->empty()) {
      fmt::print("{}", *embedded_file("configs/tiny.toml"));
      return;
    }
    RunConfig rc = load_run_config(*path);
    fmt::print("{}: valid ({} layers, hidden {}, {} steps)\n", *path, rc.model.num_hidden_layers, rc.model.hidden_size,
               rc.train.steps);
  });
}

}  // namespace adept::cli
