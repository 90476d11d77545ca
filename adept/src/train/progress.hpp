// A terminal progress bar: redrawn in place on a TTY, a plain line every tenth of the
// run otherwise (logs, CI), so output stays readable in both.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace adept {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total);
  // `status` is appended after the bar (loss, lr, tokens/s...).
  void update(int64_t done, const std::string& status);
  void finish(const std::string& status);
  double elapsed_seconds() const;

 private:
  std::string label_;
  int64_t total_;
  bool tty_;
  int64_t last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace adept
