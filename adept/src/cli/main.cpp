// adept: domain-adaptive continual pretraining of Llama / Qwen decoders.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <exception>

#include "cli/commands.hpp"
#include "core/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"adept — adapt pretrained LLMs to new domains without forgetting (ADEPT, full CPT, LLaMA-Pro)",
               "adept"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "adept 0.1.0");
  adept::cli::add_run_command(app);
  adept::cli::add_train_command(app);
  adept::cli::add_config_command(app);
  adept::cli::add_data_command(app);
  adept::cli::add_model_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const adept::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
