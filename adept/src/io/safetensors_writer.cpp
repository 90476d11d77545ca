#include "io/safetensors_writer.hpp"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "io/atomic_writer.hpp"
#include "io/safetensors.hpp"

namespace adept {

namespace {

uint64_t stored_bytes(const TensorToWrite& t) { return uint64_t(t.values.size()) * dtype_size(t.dtype); }

void check_tensors(const std::string& path, std::span<const TensorToWrite> tensors) {
  std::set<std::string_view> names;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") fail("{}: invalid tensor name '{}'", path, t.name);
    if (!names.insert(t.name).second) fail("{}: tensor '{}' given twice", path, t.name);
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail("{}: tensor '{}': negative dimension in shape {}", path, t.name, shape_string(t.shape));
      numel *= d;
    }
    if (uint64_t(numel) != t.values.size())
      fail("{}: tensor '{}': shape {} has {} elements, {} values given", path, t.name, shape_string(t.shape), numel,
           t.values.size());
  }
}

}  // namespace

void write_safetensors(const std::string& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata) {
  check_tensors(path, tensors);
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    uint64_t n = stored_bytes(t);
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  // Pads with spaces so that the data section starts 8-byte aligned, as safetensors does.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t len = text.size();

  AtomicFileWriter out(path);
  out.write(&len, 8);
  out.write(text.data(), text.size());
  constexpr size_t kChunk = 1 << 20;  // elements converted per write
  std::vector<std::byte> buffer;
  for (const TensorToWrite& t : tensors) {
    if (t.dtype == DType::F32) {
      out.write(t.values.data(), t.values.size_bytes());
      continue;
    }
    for (size_t i = 0; i < t.values.size(); i += kChunk) {
      size_t n = std::min(kChunk, t.values.size() - i);
      buffer.resize(n * dtype_size(t.dtype));
      convert_from_f32(t.dtype, t.values.data() + i, buffer.data(), n);
      out.write(buffer.data(), buffer.size());
    }
  }
  out.commit();
}

std::vector<std::string> write_safetensors_checkpoint(const std::string& dir, std::span<const TensorToWrite> tensors,
                                                      uint64_t max_shard_bytes) {
  namespace fs = std::filesystem;
  check_tensors(dir, tensors);
  make_directories(dir);

  // Greedy, in the given order, as transformers' shard_checkpoint does.
  std::vector<std::vector<TensorToWrite>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const TensorToWrite& t : tensors) {
    uint64_t n = stored_bytes(t);
    if (!shards.back().empty() && shard_bytes + n > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(t);
    shard_bytes += n;
    total_bytes += n;
  }

  std::vector<std::string> written;
  if (shards.size() == 1) {
    written.push_back("model.safetensors");
    write_safetensors((fs::path(dir) / written.back()).string(), shards[0]);
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
      write_safetensors((fs::path(dir) / name).string(), shards[s]);
      for (const TensorToWrite& t : shards[s]) weight_map[t.name] = name;
      written.push_back(name);
    }
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    written.push_back("model.safetensors.index.json");
    write_file_atomic((fs::path(dir) / written.back()).string(), index.dump(2) + "\n");
  }

  // Remove what an earlier save of another layout left: transformers reads
  // model.safetensors before the index, so a stale one would win.
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    bool ours = std::find(written.begin(), written.end(), name) != written.end();
    bool checkpoint_file = name == "model.safetensors" || name == "model.safetensors.index.json" ||
                           (name.starts_with("model-") && name.ends_with(".safetensors"));
    if (checkpoint_file && !ours) fs::remove(e.path(), ec);
  }
  return written;
}

}  // namespace adept
