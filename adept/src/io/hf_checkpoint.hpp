// A Hugging Face model directory as a whole: config.json + model.safetensors (or shards
// + index) + the tokenizer files. Loading checks every tensor against the layout the
// config implies (io/hf_tensor_names.hpp); saving refuses a tensor set transformers
// could not load, and writes config.json last so that a directory with a config.json
// is a complete checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "io/dtype.hpp"
#include "io/hf_config.hpp"
#include "io/hf_tensor_names.hpp"
#include "io/safetensors_writer.hpp"

namespace adept {

struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};
using TensorMap = std::map<std::string, HostTensor>;

struct HfCheckpoint {
  HfModelConfig config;
  TensorMap tensors;  // exactly expected_tensors(config.model), as float32
};

// Reads dir/config.json and every tensor the config expects, converted to float32.
// Errors name the file and tensor: a missing or unexpected tensor, or
// "<file>: tensor 'model.layers.3.self_attn.k_proj.weight' has shape [64, 128], config.json expects [32, 128]".
// A stored lm_head.weight of a tied model and rotary inv_freq buffers are ignored.
HfCheckpoint load_checkpoint(const std::string& dir);

// The same checks, but each tensor is converted straight into the buffer that
// destination(spec) returns (spec.shape's element count), e.g. a parameter store.
void read_checkpoint_tensors(const std::string& dir, const ModelConfig& config,
                             const std::function<std::span<float>(const TensorSpec&)>& destination);

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;
};

// Writes dir/model.safetensors (or shards of at most max_shard_bytes with an index) in
// `dtype`, copies the tokenizer files found in tokenizer_source_dir ("" for none), and
// writes config.json with torch_dtype = dtype. The tensors must be exactly
// expected_tensors(config.model) with those shapes.
void save_checkpoint(const std::string& dir, const HfModelConfig& config, std::span<const TensorRef> tensors,
                     const std::string& tokenizer_source_dir, DType dtype,
                     uint64_t max_shard_bytes = kDefaultMaxShardBytes);
void save_checkpoint(const std::string& dir, const HfModelConfig& config, const TensorMap& tensors,
                     const std::string& tokenizer_source_dir, DType dtype,
                     uint64_t max_shard_bytes = kDefaultMaxShardBytes);

// The files save_checkpoint copies from a tokenizer source directory, when present.
const std::vector<std::string>& tokenizer_file_names();

}  // namespace adept
