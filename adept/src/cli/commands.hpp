// The subcommands of the `adept` CLI. Each registers its options on the app and runs
// when selected; errors are thrown as adept::Error and printed by main.
#pragma once

#include <CLI/CLI.hpp>

namespace adept::cli {

void add_train_command(CLI::App& app);
void add_config_command(CLI::App& app);
void add_run_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_model_commands(CLI::App& app);  // probe, expand, eval

}  // namespace adept::cli
