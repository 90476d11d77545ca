// ZeRO's arithmetic, with no GPU in sight: how the trainable fp32 state (master
// weights, AdamW moments, gradients) is cut into reduce-scatter buckets and rank shards.
//
// The state is a flat array of units in forward order: unit 0 the embedding, units
// 1..L the layers, unit L+1 the final norm and the head; a unit's numel counts its
// trainable tensors only (frozen tensors have no fp32 state and never communicate).
// Backward finishes the units in reverse order, so a bucket is a run of consecutive
// units taken from the top down, closed once it holds bucket_numel elements: buckets[0]
// holds the head, the last bucket the embedding, and bucket k can be reduce-scattered
// as soon as backward has finished its lowest unit, while backward goes on below it.
//
// Each bucket is padded to world·slice elements (slice a multiple of align) and rank r
// owns slice r of every bucket: flat [offset + r·slice, offset + (r+1)·slice). A
// rank's shard is its slices of all buckets, stored contiguously (shard_offset), so
// every rank owns exactly shard_numel elements (the padding, < world·align per bucket,
// is zero and stays zero). With world 1 nothing is padded beyond align and the layout
// is the single-GPU one, element for element.
#pragma once

#include <cstdint>
#include <vector>

namespace adept::dist {

struct ShardPlanConfig {
  int world = 1;
  int64_t align = 64;               // elements (64 fp32 = 256 bytes: NCCL's and the kernels' alignment)
  int64_t bucket_numel = 32 << 20;  // target elements per bucket (128 MiB of fp32)
};

struct Bucket {
  int first_unit = 0, last_unit = 0;  // units first..last (flat order); ready when backward finished first_unit
  int64_t offset = 0;                 // flat start
  int64_t numel = 0;                  // the units' (aligned) elements
  int64_t slice = 0;                  // elements per rank; world·slice >= numel
  int64_t shard_offset = 0;           // this bucket's slice in every rank's shard
  int64_t padded() const { return slice * slice_count; }
  int64_t slice_count = 1;            // = world
};

struct ShardPlan {
  int world = 1;
  int64_t align = 64;
  std::vector<int64_t> unit_offset;  // flat start of each unit
  std::vector<int64_t> unit_numel;   // as given
  std::vector<int> unit_bucket;      // index into buckets
  std::vector<Bucket> buckets;       // reduction order: buckets[0] holds the last unit
  int64_t total_numel = 0;           // flat state, padding included
  int64_t shard_numel = 0;           // each rank's shard

  int64_t slice_begin(int bucket, int rank) const { return buckets[bucket].offset + rank * buckets[bucket].slice; }
  // Which rank owns flat element i, and where in that rank's shard it lives (i must lie
  // in some bucket's padded range).
  int owner(int64_t flat) const;
  int64_t shard_index(int64_t flat) const;
};

// Throws adept::Error on world < 1, align < 1, bucket_numel < 1 or a negative unit.
ShardPlan plan_shards(const std::vector<int64_t>& unit_numel, const ShardPlanConfig& config);

// A trainable tensor's extent in the flat state (the plan's layout).
struct TensorRange {
  int64_t offset = 0, numel = 0;
};

// Elements [begin, end) of tensor `tensor`, held at shard_offset of the owning rank's shard.
struct OwnedPiece {
  int tensor = 0;
  int64_t begin = 0, end = 0;
  int64_t shard_offset = 0;
};

// The pieces of `tensors` rank `rank` owns, in flat order. Over all ranks they cover
// every element of every tensor exactly once.
std::vector<OwnedPiece> owned_pieces(const ShardPlan& plan, const std::vector<TensorRange>& tensors, int rank);
// The same pieces cut into AdamW chunks of at most `chunk` elements (one CUDA block each).
std::vector<OwnedPiece> split_into_chunks(const std::vector<OwnedPiece>& pieces, int64_t chunk);

// Checkpoints hold fp32 state (AdamW's moments) in the host layout, which no world size
// shapes: tensor t's element j at host_offset[t] + j. A rank's shard of it (`pieces` are
// that rank's, shard_numel elements, padding zero) is what the rank loads on resume, on
// any number of ranks; gathering every rank's shard back (ShardPlan::owner /
// shard_index) gives the host layout again.
std::vector<float> shard_from_host(const std::vector<OwnedPiece>& pieces, const std::vector<int64_t>& host_offset,
                                   const float* host, int64_t shard_numel);

}  // namespace adept::dist
