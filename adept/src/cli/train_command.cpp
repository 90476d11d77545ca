// `adept train [config.toml]`: train a decoder on a text corpus (default: the embedded
// tiny run), with a progress bar, held-out loss, a metrics log and a summary.
#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/atomic_file.hpp"
#include "core/embedded.hpp"
#include "model/decoder.hpp"
#include "train/report.hpp"
#include "train/run_config.hpp"
#include "train/trainer.hpp"

namespace adept::cli {

namespace {

struct TrainArgs {
  std::string config_path;
  int64_t steps = 0;
  std::string out_dir;
  bool quiet = false;
};

// Byte-level tokens: the embedded default needs no tokenizer file.
std::vector<int32_t> byte_tokens(const std::string& text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

void run_train(const TrainArgs& args) {
  RunConfig rc = load_run_config(args.config_path);
  if (args.steps > 0) rc.train.steps = args.steps;
  if (!args.out_dir.empty()) rc.train.out_dir = args.out_dir;

  std::vector<int32_t> stream = byte_tokens(read_text_source(rc.data.train));
  size_t holdout_len = size_t(double(stream.size()) * rc.data.holdout_fraction);
  std::vector<int32_t> holdout_stream(stream.end() - int64_t(holdout_len), stream.end());
  stream.resize(stream.size() - holdout_len);
  WindowSampler train_data(std::move(stream), rc.train.seq_len, rc.train.seed);
  std::optional<WindowSampler> holdout;
  if (holdout_len > size_t(rc.train.seq_len)) holdout.emplace(std::move(holdout_stream), rc.train.seq_len, rc.train.seed);

  Decoder<float> model(rc.model);
  model.init_random(rc.train.seed, rc.init_std);
  const ModelConfig& m = model.config();
  fmt::print("config   {}\n", rc.source);
  fmt::print("model    {} | {} layers, hidden {}, heads {}/{} (q/kv), head_dim {}, mlp {}, vocab {} | {:.2f}M params\n",
             m.model_type, m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.num_key_value_heads,
             m.head_dim, m.intermediate_size, m.vocab_size, double(model.params().total_numel()) / 1e6);
  fmt::print("data     {} | {} train tokens, {} held-out tokens ({})\n", rc.data.train, train_data.stream_length(),
             holdout_len, rc.data.tokenizer);
  fmt::print("train    {} steps x {} sequences x {} tokens (x{} accumulation), lr {} cosine, backend {}\n",
             rc.train.steps, rc.train.batch_size, rc.train.seq_len, rc.train.grad_accum, rc.train.lr, rc.train.backend);
  std::fflush(stdout);

  make_directories(rc.train.out_dir);
  TrainOptions options;
  options.show_progress = !args.quiet;
  options.metrics_path = rc.train.out_dir + "/metrics.jsonl";
  TrainResult result = train(model, rc.train, train_data, holdout ? &*holdout : nullptr, options);

  fmt::print("\n{}", loss_curve_summary(result));
  nlohmann::json summary = train_result_json(result);
  summary["config"] = rc.source;
  summary["parameters"] = model.params().total_numel();
  write_file_atomic(rc.train.out_dir + "/summary.json", summary.dump(2) + "\n");
  fmt::print("wrote    {0}/metrics.jsonl, {0}/summary.json\n", rc.train.out_dir);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train a decoder on a text corpus (no config: the embedded tiny run)");
  cmd->add_option("config", args->config_path, "TOML run config, laid over the embedded default (configs/tiny.toml)");
  cmd->add_option("--steps", args->steps, "Override train.steps");
  cmd->add_option("--out", args->out_dir, "Override train.out_dir");
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
