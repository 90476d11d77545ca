#include "dist/sharded_loader.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace adept::dist {

TokenBatch slice_rows(const TokenBatch& batch, int64_t begin, int64_t end) {
  if (begin < 0 || end > batch.B || begin >= end)
    fail("slice_rows: rows [{}, {}) of a batch of {} rows", begin, end, batch.B);
  TokenBatch out;
  out.B = end - begin;
  out.S = batch.S;
  const int64_t lo = begin * batch.S, hi = end * batch.S;
  out.tokens.assign(batch.tokens.begin() + lo, batch.tokens.begin() + hi);
  out.targets.assign(batch.targets.begin() + lo, batch.targets.begin() + hi);
  if (!batch.documents.empty()) {
    // Every row start is a document boundary, so lo and hi are among the offsets.
    for (int32_t d : batch.documents)
      if (d >= lo && d <= hi) out.documents.push_back(int32_t(d - lo));
    if (out.documents.empty() || out.documents.front() != 0 || out.documents.back() != hi - lo)
      fail("slice_rows: the batch's documents do not start at every row");
  }
  return out;
}

RowRange rank_rows(int64_t rows, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) fail("rank_rows: rank {} of {}", rank, world);
  if (rows < 0) fail("rank_rows: {} rows", rows);
  return {rows * rank / world, rows * (rank + 1) / world};
}

std::vector<TokenBatch> rank_pieces(const TokenBatch& batch, int rank, int world, int64_t max_rows) {
  if (max_rows < 1) fail("rank_pieces: pieces of {} rows", max_rows);
  const RowRange r = rank_rows(batch.B, rank, world);
  std::vector<TokenBatch> out;
  for (int64_t b = r.begin; b < r.end; b += max_rows) out.push_back(slice_rows(batch, b, std::min(r.end, b + max_rows)));
  return out;
}

int64_t most_pieces(int64_t rows, int world, int64_t max_rows) {
  if (world < 1 || max_rows < 1) fail("most_pieces: world {}, pieces of {} rows", world, max_rows);
  const int64_t most_rows = (rows + world - 1) / world;
  return (most_rows + max_rows - 1) / max_rows;
}

ShardedLoader::ShardedLoader(std::vector<LoaderSource> sources, const LoaderConfig& config, int rank, int world)
    : loader_(std::move(sources), config), rank_(rank), world_(world) {
  if (world < 1 || rank < 0 || rank >= world) fail("sharded loader: rank {} of {}", rank, world);
  if (config.batch_size % world != 0)
    fail("the global batch of {} rows does not split evenly over {} ranks; make batch_size a multiple of {}",
         config.batch_size, world, world);
  local_rows_ = config.batch_size / world;
}

TokenBatch ShardedLoader::next_batch(std::vector<int32_t>* row_sources) {
  std::vector<int32_t> sources;
  TokenBatch global = loader_.next_batch(row_sources ? &sources : nullptr);
  if (world_ == 1) {
    if (row_sources) *row_sources = std::move(sources);
    return global;
  }
  const int64_t begin = rank_ * local_rows_, end = begin + local_rows_;
  if (row_sources) row_sources->assign(sources.begin() + begin, sources.begin() + end);
  return slice_rows(global, begin, end);
}

}  // namespace adept::dist
