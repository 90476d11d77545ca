// ZeRO's arithmetic: shards cover the trainable state exactly once, slices are aligned
// and equal on every rank, frozen tensors take no part, buckets follow the order in
// which backward finishes the layers, one rank is the single-GPU layout, and optimizer
// state saved from N ranks loads on M.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "common/random.hpp"
#include "dist/shard_plan.hpp"

namespace adept::dist {
namespace {

using testing_support::make_rng;

// A decoder-like model: units embed, L layers of a few tensors, the head; some tensors
// frozen (no state). Returns unit sizes (64-aligned groups, as CudaDecoder lays them
// out) and each trainable tensor's unit and offset inside it.
struct Model {
  std::vector<int64_t> unit_numel;
  struct T {
    int unit;
    int64_t in_unit, numel;
  };
  std::vector<T> tensors;  // trainable only
  int64_t frozen_numel = 0;
};

Model random_model(std::mt19937_64& rng, int L) {
  Model m;
  auto unit = [&](int u, int n_tensors) {
    int64_t at = 0;
    for (int i = 0; i < n_tensors; ++i) {
      const int64_t numel = 1 + int64_t(rng() % 5000);
      if (rng() % 4 == 0) {  // frozen: no fp32 state at all
        m.frozen_numel += numel;
        continue;
      }
      at = (at + 63) / 64 * 64;
      m.tensors.push_back({u, at, numel});
      at += numel;
    }
    m.unit_numel.push_back((at + 63) / 64 * 64);
  };
  unit(0, 1);
  for (int l = 0; l < L; ++l) unit(1 + l, 1 + int(rng() % 6));
  unit(L + 1, 2);
  return m;
}

std::vector<TensorRange> ranges(const Model& m, const ShardPlan& p) {
  std::vector<TensorRange> r;
  for (const Model::T& t : m.tensors) r.push_back({p.unit_offset[t.unit] + t.in_unit, t.numel});
  return r;
}

TEST(DistShardPlan, EveryTrainableElementIsOwnedByExactlyOneRank) {
  auto rng = make_rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    Model m = random_model(rng, 1 + int(rng() % 6));
    ShardPlanConfig cfg;
    cfg.world = 1 + int(rng() % 5);
    cfg.bucket_numel = 1 + int64_t(rng() % 20000);
    ShardPlan p = plan_shards(m.unit_numel, cfg);
    std::vector<TensorRange> tr = ranges(m, p);
    std::vector<std::vector<int>> owners(tr.size());
    for (size_t t = 0; t < tr.size(); ++t) owners[t].assign(size_t(tr[t].numel), 0);
    for (int r = 0; r < cfg.world; ++r) {
      std::vector<bool> shard_used(size_t(p.shard_numel), false);
      for (const OwnedPiece& piece : owned_pieces(p, tr, r)) {
        for (int64_t j = piece.begin; j < piece.end; ++j) {
          ++owners[piece.tensor][j];
          const int64_t flat = tr[piece.tensor].offset + j;
          ASSERT_EQ(p.owner(flat), r);
          ASSERT_EQ(p.shard_index(flat), piece.shard_offset + (j - piece.begin));
          ASSERT_LT(piece.shard_offset + (j - piece.begin), p.shard_numel);
          ASSERT_FALSE(shard_used[piece.shard_offset + (j - piece.begin)]) << "two elements share a shard slot";
          shard_used[piece.shard_offset + (j - piece.begin)] = true;
        }
      }
    }
    for (size_t t = 0; t < tr.size(); ++t)
      for (int c : owners[t]) ASSERT_EQ(c, 1) << "tensor " << t << " world " << cfg.world;
  }
}

TEST(DistShardPlan, SlicesAreAlignedAndEqualOnEveryRank) {
  auto rng = make_rng(12);
  for (int trial = 0; trial < 20; ++trial) {
    Model m = random_model(rng, 1 + int(rng() % 8));
    ShardPlanConfig cfg;
    cfg.world = 1 + int(rng() % 8);
    cfg.align = int64_t(1) << (rng() % 8);
    cfg.bucket_numel = 1 + int64_t(rng() % 30000);
    ShardPlan p = plan_shards(m.unit_numel, cfg);
    int64_t covered = 0;
    for (const Bucket& b : p.buckets) {
      EXPECT_EQ(b.offset % cfg.align, 0);
      EXPECT_EQ(b.slice % cfg.align, 0);
      EXPECT_EQ(b.shard_offset % cfg.align, 0);
      EXPECT_GE(b.slice * cfg.world, b.numel);
      // Balanced: padding is less than one aligned slice step per rank.
      EXPECT_LT(b.slice * cfg.world - b.numel, cfg.world * cfg.align);
      covered += b.padded();
    }
    EXPECT_EQ(covered, p.total_numel) << "buckets tile the flat state with no gap";
    // Every rank's shard holds the same number of elements (NCCL's reduce-scatter needs it).
    int64_t slices = 0;
    for (const Bucket& b : p.buckets) slices += b.slice;
    EXPECT_EQ(slices, p.shard_numel);
  }
}

TEST(DistShardPlan, FrozenTensorsHaveNoState) {
  auto rng = make_rng(13);
  Model m = random_model(rng, 4);
  while (m.frozen_numel == 0) m = random_model(rng, 4);  // at least one frozen tensor
  ShardPlan p = plan_shards(m.unit_numel, {2, 64, 1000});
  int64_t trainable = 0;
  for (const Model::T& t : m.tensors) trainable += t.numel;
  // The flat state is the trainable elements plus alignment padding, never the frozen ones.
  EXPECT_LE(p.total_numel, trainable + int64_t(m.tensors.size()) * 64 + int64_t(p.buckets.size()) * 2 * 64);
  // A model with every tensor frozen communicates nothing.
  ShardPlan none = plan_shards({0, 0, 0, 0}, {2, 64, 1000});
  EXPECT_EQ(none.total_numel, 0);
  EXPECT_EQ(none.shard_numel, 0);
  for (const Bucket& b : none.buckets) EXPECT_EQ(b.slice, 0);
}

TEST(DistShardPlan, BucketsFollowBackwardsLayerOrder) {
  auto rng = make_rng(14);
  Model m = random_model(rng, 7);
  ShardPlan p = plan_shards(m.unit_numel, {2, 64, 3000});
  const int U = int(m.unit_numel.size());
  ASSERT_FALSE(p.buckets.empty());
  EXPECT_EQ(p.buckets.front().last_unit, U - 1) << "the head's bucket is reduced first";
  EXPECT_EQ(p.buckets.back().first_unit, 0) << "the embedding's bucket is reduced last";
  for (size_t k = 0; k < p.buckets.size(); ++k) {
    EXPECT_LE(p.buckets[k].first_unit, p.buckets[k].last_unit);
    if (k + 1 < p.buckets.size()) {
      EXPECT_EQ(p.buckets[k + 1].last_unit + 1, p.buckets[k].first_unit) << "contiguous runs of units, top down";
      // Later buckets lie lower in the flat state, right below (a bucket of frozen units
      // only is empty and takes no room).
      EXPECT_EQ(p.buckets[k + 1].offset + p.buckets[k + 1].padded(), p.buckets[k].offset);
    }
    for (int u = p.buckets[k].first_unit; u <= p.buckets[k].last_unit; ++u) EXPECT_EQ(p.unit_bucket[u], int(k));
  }
  // A target of one element: one unit with state per bucket (units without state,
  // all frozen, ride along with the unit below them).
  ShardPlan each = plan_shards(m.unit_numel, {2, 64, 1});
  for (const Bucket& b : each.buckets) {
    int with_state = 0;
    for (int u = b.first_unit; u <= b.last_unit; ++u) with_state += m.unit_numel[u] > 0;
    EXPECT_LE(with_state, 1);
  }
}

TEST(DistShardPlan, WorldOneIsTheSingleGpuLayout) {
  auto rng = make_rng(15);
  Model m = random_model(rng, 5);
  ShardPlan p = plan_shards(m.unit_numel, {1, 64, 2000});
  int64_t at = 0;
  for (size_t u = 0; u < m.unit_numel.size(); ++u) {
    EXPECT_EQ(p.unit_offset[u], at) << "unit " << u;
    at += m.unit_numel[u];
  }
  EXPECT_EQ(p.total_numel, at);
  EXPECT_EQ(p.shard_numel, at);
  std::vector<TensorRange> tr = ranges(m, p);
  for (const OwnedPiece& piece : owned_pieces(p, tr, 0)) {
    EXPECT_EQ(piece.begin, 0);
    EXPECT_EQ(piece.end, tr[piece.tensor].numel) << "one rank owns whole tensors";
    EXPECT_EQ(piece.shard_offset, tr[piece.tensor].offset) << "at their single-GPU offsets";
  }
}

TEST(DistShardPlan, ChunksCoverThePiecesAndStayWithinTheChunkSize) {
  auto rng = make_rng(16);
  Model m = random_model(rng, 3);
  ShardPlan p = plan_shards(m.unit_numel, {3, 64, 4000});
  std::vector<TensorRange> tr = ranges(m, p);
  for (int r = 0; r < 3; ++r) {
    std::vector<OwnedPiece> pieces = owned_pieces(p, tr, r);
    std::vector<OwnedPiece> chunks = split_into_chunks(pieces, 777);
    int64_t a = 0, b = 0;
    for (const OwnedPiece& x : pieces) a += x.end - x.begin;
    for (const OwnedPiece& x : chunks) {
      EXPECT_LE(x.end - x.begin, 777);
      EXPECT_GT(x.end - x.begin, 0);
      b += x.end - x.begin;
    }
    EXPECT_EQ(a, b);
  }
}

// Every rank's shard of a host-layout state, gathered back the way the all-gather lays
// it out (slice r of each bucket from rank r), as host layout again.
std::vector<float> gather_to_host(const ShardPlan& p, const std::vector<TensorRange>& tr,
                                  const std::vector<int64_t>& host_offset, const std::vector<std::vector<float>>& shards,
                                  size_t host_size) {
  std::vector<float> host(host_size, -1.0f);
  for (size_t t = 0; t < tr.size(); ++t)
    for (int64_t j = 0; j < tr[t].numel; ++j) {
      const int64_t flat = tr[t].offset + j;
      host[size_t(host_offset[t] + j)] = shards[size_t(p.owner(flat))][size_t(p.shard_index(flat))];
    }
  return host;
}

TEST(DistShardPlan, OptimizerStateSavedFromNRanksLoadsOnMRanks) {
  auto rng = make_rng(17);
  for (int trial = 0; trial < 20; ++trial) {
    Model m = random_model(rng, 1 + int(rng() % 6));
    // The host layout: trainable tensors back to back, in another order than the flat one.
    std::vector<int64_t> host_offset(m.tensors.size());
    int64_t host_size = 0;
    for (size_t t = m.tensors.size(); t-- > 0;) host_offset[t] = host_size, host_size += m.tensors[t].numel;
    std::vector<float> saved(static_cast<size_t>(host_size));
    for (float& x : saved) x = float(rng() % 100000) / 7.0f;
    std::vector<float> state = saved;
    // N ranks load it, gather it for the next checkpoint; then M ranks do the same.
    for (int world : {1 + int(rng() % 5), 1 + int(rng() % 5), 1}) {
      ShardPlanConfig cfg;
      cfg.world = world;
      cfg.bucket_numel = 1 + int64_t(rng() % 20000);
      ShardPlan p = plan_shards(m.unit_numel, cfg);
      std::vector<TensorRange> tr = ranges(m, p);
      std::vector<std::vector<float>> shards;
      for (int r = 0; r < world; ++r) {
        shards.push_back(shard_from_host(owned_pieces(p, tr, r), host_offset, state.data(), p.shard_numel));
        ASSERT_EQ(shards.back().size(), size_t(p.shard_numel));
      }
      state = gather_to_host(p, tr, host_offset, shards, size_t(host_size));
      ASSERT_EQ(state, saved) << "world " << world << ", trial " << trial;
    }
  }
}

}  // namespace
}  // namespace adept::dist
