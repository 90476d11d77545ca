// Reading safetensors files (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON {"name": {"dtype", "shape",
// "data_offsets": [begin, end)}, "__metadata__": {...}}, then the data section that the
// offsets index. Every field is validated before any tensor is touched, and every
// error names the file and the tensor at fault.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/dtype.hpp"
#include "io/mapped_file.hpp"

namespace adept {

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<SafetensorsTensor> tensors;  // in data-section order
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length
  uint64_t data_size = 0;
};

// Parses and validates the header of a whole safetensors file held in `file`.
// `file_name` is only used in messages. Never reads past file.size().
SafetensorsHeader parse_safetensors_header(const std::string& file_name, std::span<const std::byte> file);

// Formats a shape as "[2, 3]" for messages.
std::string shape_string(std::span<const int64_t> shape);

// One memory-mapped safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsTensor>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafetensorsTensor* find(const std::string& name) const;
  const SafetensorsTensor& tensor(const std::string& name) const;  // throws naming file and tensor

  std::span<const std::byte> raw(const SafetensorsTensor& t) const;
  // Converts to float32; out.size() must equal t.numel().
  void read_f32(const SafetensorsTensor& t, std::span<float> out) const;
  std::vector<float> read_f32(const std::string& name) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> by_name_;
};

// A checkpoint directory as transformers saves it: model.safetensors, or shards
// listed by model.safetensors.index.json ({"weight_map": {tensor: shard file}}).
// model.safetensors wins when both exist, as in transformers.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::string& dir);

  struct Entry {
    const SafetensorsFile* file;
    const SafetensorsTensor* tensor;
  };
  const Entry* find(const std::string& name) const;
  const Entry& tensor(const std::string& name) const;  // throws naming the checkpoint and tensor
  std::vector<std::string> names() const;              // sorted
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::string& source() const { return source_; }  // the file or index it was opened from
  void read_f32(const std::string& name, std::span<float> out) const;

 private:
  std::string source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
};

}  // namespace adept
