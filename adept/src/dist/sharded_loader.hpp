// Rank r's share of every global batch, over an unmodified PackedLoader.
//
// Every rank runs the same loader at the global batch size (B_global rows) and keeps
// rows [r·B_global/world, (r+1)·B_global/world) of each batch, documents included. So
// the union over ranks is, row for row, the batch one process draws at the same global
// batch size, and the loader's position (LoaderState) is the global one: a checkpoint
// written on N GPUs resumes on M. Packing the rows another rank keeps costs each rank
// a little CPU (a memcpy of tokens per row), never a different order.
#pragma once

#include <cstdint>
#include <vector>

#include "data/packed_loader.hpp"

namespace adept::dist {

// Rows [begin, end) of `batch` as a batch of their own (documents re-based).
TokenBatch slice_rows(const TokenBatch& batch, int64_t begin, int64_t end);

// A batch every rank holds whole and the ranks share (held-out loss, a gradient for
// ADEPT's importance estimates): rank r takes rows [rows·r/world, rows·(r+1)/world),
// contiguous, the ranks' counts differing by at most one (a rank may have none).
struct RowRange {
  int64_t begin = 0, end = 0;
};
RowRange rank_rows(int64_t rows, int rank, int world);
// Rank `rank`'s rows of `batch` in pieces of at most max_rows rows (none when it has no
// rows); the sum over ranks and pieces of a per-row quantity is the whole batch's.
std::vector<TokenBatch> rank_pieces(const TokenBatch& batch, int rank, int world, int64_t max_rows);
// How many pieces the rank with the most rows has: what every rank runs when each piece
// is collective (an idle rank runs a piece that counts no target).
int64_t most_pieces(int64_t rows, int world, int64_t max_rows);

class ShardedLoader {
 public:
  // config.batch_size is the global batch; it must divide evenly by world.
  ShardedLoader(std::vector<LoaderSource> sources, const LoaderConfig& config, int rank, int world);

  TokenBatch next_batch(std::vector<int32_t>* row_sources = nullptr);  // this rank's B_global/world rows

  int rank() const { return rank_; }
  int world() const { return world_; }
  int64_t local_batch_size() const { return local_rows_; }
  const LoaderState& state() const { return loader_.state(); }  // identical on every rank
  void restore(const LoaderState& state) { loader_.restore(state); }
  const PackedLoader& loader() const { return loader_; }

 private:
  PackedLoader loader_;
  int rank_, world_;
  int64_t local_rows_;
};

}  // namespace adept::dist
