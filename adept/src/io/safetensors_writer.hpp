// Writing safetensors files and sharded checkpoints as transformers lays them out.
// Each file is written atomically (io/atomic_writer.hpp); float32 values are converted
// to the stored dtype in chunks while streaming, so no second copy of a model is made.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "io/dtype.hpp"

namespace adept {

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;  // product(shape) elements
  DType dtype = DType::F32;       // as stored in the file
};

// One file; __metadata__ defaults to {"format": "pt"}, which transformers expects.
void write_safetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// transformers' save_pretrained default shard size ("5GB").
inline constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000;

// Writes dir/model.safetensors when everything fits in one shard, else
// dir/model-0000i-of-0000n.safetensors plus model.safetensors.index.json. A shard
// holds whole tensors, so a tensor larger than max_shard_bytes gets a shard of its own.
// Checkpoint files of another layout left in dir by an earlier save are removed
// afterwards, so that transformers cannot pick a stale one. Returns the files written.
std::vector<std::string> write_safetensors_checkpoint(const std::string& dir, std::span<const TensorToWrite> tensors,
                                                      uint64_t max_shard_bytes = kDefaultMaxShardBytes);

}  // namespace adept
