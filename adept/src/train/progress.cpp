#include "train/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace adept {

ProgressBar::ProgressBar(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), tty_(isatty(fileno(stderr))), start_(std::chrono::steady_clock::now()) {}

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressBar::update(int64_t done, const std::string& status) {
  double elapsed = elapsed_seconds();
  double eta = done > 0 ? elapsed * double(total_ - done) / double(done) : 0.0;
  if (tty_) {
    constexpr int width = 30;
    int filled = total_ > 0 ? int(width * done / total_) : width;
    std::string bar(filled, '=');
    if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
    fmt::print(stderr, "\r{} [{}] {}/{} {} | {:.0f}s, eta {:.0f}s\033[K", label_, bar, done, total_, status, elapsed,
               eta);
    std::fflush(stderr);
    return;
  }
  int64_t decile = total_ > 0 ? 10 * done / total_ : 10;
  if (decile != last_decile_) {
    last_decile_ = decile;
    fmt::print(stderr, "{} {}/{} ({}%) {} | {:.0f}s, eta {:.0f}s\n", label_, done, total_, decile * 10, status,
               elapsed, eta);
  }
}

void ProgressBar::finish(const std::string& status) {
  if (tty_) {
    update(total_, status);
    fmt::print(stderr, "\n");
  } else if (last_decile_ != 10) {
    update(total_, status);
  }
}

}  // namespace adept
