// A training batch as the data side hands it over: B rows of S tokens, next-token
// targets (kIgnoreIndex where nothing is to be predicted) and, for packed rows, the
// document boundaries.
#pragma once

#include <cstdint>
#include <vector>

namespace adept {

struct TokenBatch {
  int64_t B = 0, S = 0;
  std::vector<int32_t> tokens, targets;  // [B][S]
  // Offsets of the documents packed into the B·S tokens (cu_seqlens: 0 = d0 < d1 < ...
  // = B·S, every row start among them), as adept::Batch::documents takes them. Empty:
  // each row is one document.
  std::vector<int32_t> documents;
};

}  // namespace adept
