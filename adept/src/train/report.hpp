// The end-of-run summary a user reads in the terminal: the loss curve as a sparkline,
// held-out losses, throughput; and the same as JSON for tools.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "train/trainer.hpp"

namespace adept {

std::string loss_curve_summary(const TrainResult& result);
nlohmann::json train_result_json(const TrainResult& result);

}  // namespace adept
