#include "dist/shard_plan.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace adept::dist {

namespace {
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
}  // namespace

ShardPlan plan_shards(const std::vector<int64_t>& unit_numel, const ShardPlanConfig& config) {
  if (config.world < 1) fail("shard plan: world size {} < 1", config.world);
  if (config.align < 1) fail("shard plan: alignment {} < 1", config.align);
  if (config.bucket_numel < 1) fail("shard plan: bucket size {} < 1", config.bucket_numel);
  for (size_t u = 0; u < unit_numel.size(); ++u)
    if (unit_numel[u] < 0) fail("shard plan: unit {} has {} elements", u, unit_numel[u]);
  ShardPlan p;
  p.world = config.world;
  p.align = config.align;
  p.unit_numel = unit_numel;
  const int U = int(unit_numel.size());
  p.unit_offset.assign(U, 0);
  p.unit_bucket.assign(U, 0);

  // Buckets from the top unit down, in the order backward finishes them.
  int64_t filled = 0;
  for (int u = U - 1; u >= 0; --u) {
    if (p.buckets.empty() || filled >= config.bucket_numel) {
      Bucket b;
      b.first_unit = b.last_unit = u;
      b.slice_count = config.world;
      p.buckets.push_back(b);
      filled = 0;
    }
    p.buckets.back().first_unit = u;
    p.unit_bucket[u] = int(p.buckets.size()) - 1;
    filled += round_up(unit_numel[u], config.align);
  }

  // The flat layout runs the other way (forward order): bucket by bucket from the
  // embedding up, each padded to world equal, aligned slices.
  int64_t at = 0, shard_at = 0;
  for (int k = int(p.buckets.size()) - 1; k >= 0; --k) {
    Bucket& b = p.buckets[k];
    b.offset = at;
    for (int u = b.first_unit; u <= b.last_unit; ++u) {
      p.unit_offset[u] = at;
      at += round_up(unit_numel[u], config.align);
    }
    b.numel = at - b.offset;
    b.slice = round_up((b.numel + config.world - 1) / config.world, config.align);
    b.shard_offset = shard_at;
    shard_at += b.slice;
    at = b.offset + b.slice * config.world;
  }
  p.total_numel = at;
  p.shard_numel = shard_at;
  return p;
}

int ShardPlan::owner(int64_t flat) const {
  for (const Bucket& b : buckets)
    if (b.slice > 0 && flat >= b.offset && flat < b.offset + b.padded()) return int((flat - b.offset) / b.slice);
  fail("shard plan: element {} lies in no bucket", flat);
}

int64_t ShardPlan::shard_index(int64_t flat) const {
  for (const Bucket& b : buckets)
    if (b.slice > 0 && flat >= b.offset && flat < b.offset + b.padded()) return b.shard_offset + (flat - b.offset) % b.slice;
  fail("shard plan: element {} lies in no bucket", flat);
}

std::vector<OwnedPiece> owned_pieces(const ShardPlan& plan, const std::vector<TensorRange>& tensors, int rank) {
  if (rank < 0 || rank >= plan.world) fail("shard plan: rank {} outside world {}", rank, plan.world);
  std::vector<OwnedPiece> out;
  for (const Bucket& b : plan.buckets) {
    if (b.slice == 0) continue;
    const int64_t lo = plan.slice_begin(int(&b - plan.buckets.data()), rank), hi = lo + b.slice;
    for (size_t t = 0; t < tensors.size(); ++t) {
      const int64_t a = std::max(lo, tensors[t].offset), e = std::min(hi, tensors[t].offset + tensors[t].numel);
      if (a >= e) continue;
      out.push_back({int(t), a - tensors[t].offset, e - tensors[t].offset, b.shard_offset + (a - lo)});
    }
  }
  std::sort(out.begin(), out.end(), [](const OwnedPiece& x, const OwnedPiece& y) { return x.shard_offset < y.shard_offset; });
  return out;
}

std::vector<OwnedPiece> split_into_chunks(const std::vector<OwnedPiece>& pieces, int64_t chunk) {
  if (chunk < 1) fail("shard plan: chunk size {} < 1", chunk);
  std::vector<OwnedPiece> out;
  for (const OwnedPiece& p : pieces)
    for (int64_t b = p.begin; b < p.end; b += chunk)
      out.push_back({p.tensor, b, std::min(p.end, b + chunk), p.shard_offset + (b - p.begin)});
  return out;
}

std::vector<float> shard_from_host(const std::vector<OwnedPiece>& pieces, const std::vector<int64_t>& host_offset,
                                   const float* host, int64_t shard_numel) {
  std::vector<float> shard(size_t(std::max<int64_t>(shard_numel, 0)), 0.0f);
  for (const OwnedPiece& p : pieces) {
    if (p.tensor < 0 || size_t(p.tensor) >= host_offset.size()) fail("shard plan: piece of tensor {} has no host offset", p.tensor);
    if (p.shard_offset < 0 || p.shard_offset + (p.end - p.begin) > shard_numel)
      fail("shard plan: piece at {} + {} outside a shard of {}", p.shard_offset, p.end - p.begin, shard_numel);
    std::copy(host + host_offset[size_t(p.tensor)] + p.begin, host + host_offset[size_t(p.tensor)] + p.end,
              shard.begin() + p.shard_offset);
  }
  return shard;
}

}  // namespace adept::dist
