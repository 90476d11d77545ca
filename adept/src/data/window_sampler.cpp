#include "data/window_sampler.hpp"

#include <random>

#include "core/error.hpp"

namespace adept {

WindowSampler::WindowSampler(std::vector<int32_t> stream, int64_t seq_len, uint64_t seed)
    : stream_(std::move(stream)), seq_len_(seq_len), seed_(seed) {
  if (int64_t(stream_.size()) < seq_len_ + 1)
    fail("the token stream has {} tokens, fewer than seq_len + 1 = {}", stream_.size(), seq_len_ + 1);
}

TokenBatch WindowSampler::random_batch(int64_t batch_size, int64_t step, int64_t micro) const {
  // SplitMix-style mixing of (seed, step, micro) into an independent stream per batch.
  uint64_t key = seed_ ^ (uint64_t(step) * 0x9E3779B97F4A7C15ull) ^ (uint64_t(micro) * 0xBF58476D1CE4E5B9ull);
  std::mt19937_64 rng(key);
  std::uniform_int_distribution<int64_t> start(0, int64_t(stream_.size()) - seq_len_ - 1);
  TokenBatch b;
  b.B = batch_size;
  b.S = seq_len_;
  b.tokens.resize(batch_size * seq_len_);
  b.targets.resize(batch_size * seq_len_);
  for (int64_t r = 0; r < batch_size; ++r) {
    int64_t s0 = start(rng);
    for (int64_t i = 0; i < seq_len_; ++i) {
      b.tokens[r * seq_len_ + i] = stream_[s0 + i];
      b.targets[r * seq_len_ + i] = stream_[s0 + i + 1];
    }
  }
  return b;
}

TokenBatch WindowSampler::sequential_batch(int64_t batch_size, int64_t k) const {
  const int64_t windows = (int64_t(stream_.size()) - 1) / seq_len_;
  TokenBatch b;
  b.B = batch_size;
  b.S = seq_len_;
  b.tokens.resize(batch_size * seq_len_);
  b.targets.resize(batch_size * seq_len_);
  for (int64_t r = 0; r < batch_size; ++r) {
    int64_t s0 = ((k * batch_size + r) % windows) * seq_len_;
    for (int64_t i = 0; i < seq_len_; ++i) {
      b.tokens[r * seq_len_ + i] = stream_[s0 + i];
      b.targets[r * seq_len_ + i] = stream_[s0 + i + 1];
    }
  }
  return b;
}

}  // namespace adept
