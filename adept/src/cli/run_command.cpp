// `adept run [config.toml]`: probe → expand → train → evaluate for ADEPT and the chosen
// baselines, ending with the report table (no config: the embedded tiny study).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "dist/launch_env.hpp"
#include "pipeline/run_pipeline.hpp"
#include "train/run_config.hpp"

namespace adept::cli {

void add_run_command(CLI::App& app) {
  struct Args {
    std::string config_path, out_dir, base, backend;
    std::vector<std::string> methods;
    int64_t steps = 0, pretrain_steps = 0;
    bool quiet = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "run", "The full study: base model, layer-importance probe, ADEPT and baselines, evaluation, report");
  cmd->add_option("config", args->config_path, "TOML run config, laid over the embedded default (configs/tiny.toml)");
  cmd->add_option("--methods", args->methods, "Override run.methods (adept, full, llama-pro, freeze, adept-uniform, adept-one-lr)")->delimiter(',');
  cmd->add_option("--steps", args->steps, "Override train.steps (continual pretraining)");
  cmd->add_option("--pretrain-steps", args->pretrain_steps, "Override pretrain.steps");
  cmd->add_option("--out", args->out_dir, "Override run.out_dir");
  cmd->add_option("--base", args->base, "Override run.base: an HF checkpoint directory to adapt");
  cmd->add_option("--backend", args->backend, "Override pretrain.backend and train.backend: cpu | cuda");
  cmd->add_flag("--quiet", args->quiet, "No progress bars");
  cmd->callback([args] {
    // The study trains several models one after another; data parallelism (one process
    // per GPU) is wired into `adept train` only.
    const dist::LaunchEnv env = dist::read_launch_env();
    if (env.distributed())
      throw adept::Error(fmt::format(
          "adept run: started as {} processes ({}), but the multi-method study runs in one process; run one "
          "`adept train --method M --base DIR` per method under the launcher instead",
          env.world, env.launcher));
    RunConfig rc = load_run_config(args->config_path);
    if (!args->methods.empty()) rc.run.methods = args->methods;
    if (args->steps > 0) rc.train.steps = args->steps;
    if (args->pretrain_steps > 0) rc.pretrain.steps = args->pretrain_steps;
    if (!args->out_dir.empty()) rc.run.out_dir = args->out_dir;
    if (!args->base.empty()) rc.run.base = args->base;
    if (!args->backend.empty()) rc.pretrain.backend = rc.train.backend = args->backend;
    for (const std::string& m : rc.run.methods)
      if (!is_known_method(m))
        throw adept::Error(fmt::format("--methods: '{}' is unknown (known: {})", m, fmt::join(known_methods(), ", ")));
    validate_run_config(rc);
    PipelineOptions options;
    options.show_progress = !args->quiet;
    std::string report = run_pipeline(rc, options);
    fmt::print("wrote    {} (with results.json, loss_curves.svg, layer_importance.svg, *.metrics.jsonl)\n", report);
  });
}

}  // namespace adept::cli
