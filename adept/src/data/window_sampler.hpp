// Training windows cut from one token stream: each sample is seq_len + 1 consecutive
// tokens (inputs and next-token targets). The windows of step s depend only on the seed
// and s, so a resumed run draws exactly the batches it would have drawn.
#pragma once

#include <cstdint>
#include <vector>

#include "data/token_batch.hpp"

namespace adept {

class WindowSampler {
 public:
  WindowSampler(std::vector<int32_t> stream, int64_t seq_len, uint64_t seed);

  int64_t stream_length() const { return int64_t(stream_.size()); }
  // B random windows for (step, micro-batch).
  TokenBatch random_batch(int64_t batch_size, int64_t step, int64_t micro) const;
  // The k-th of the consecutive, non-overlapping windows (for held-out evaluation);
  // wraps around the stream.
  TokenBatch sequential_batch(int64_t batch_size, int64_t k) const;

 private:
  std::vector<int32_t> stream_;
  int64_t seq_len_;
  uint64_t seed_;
};

}  // namespace adept
