#include "io/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.hpp"

namespace adept {

namespace {

using json = nlohmann::json;

// safetensors itself refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

bool to_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = uint64_t(v.get<int64_t>());
    return true;
  }
  return false;
}

SafetensorsTensor parse_tensor_entry(const std::string& file, const std::string& name, const json& entry,
                                     uint64_t data_size) {
  auto bad = [&](const std::string& what) { fail("{}: tensor '{}': {}", file, name, what); };
  if (!entry.is_object()) bad("entry must be a JSON object with dtype, shape and data_offsets");
  SafetensorsTensor t;
  t.name = name;

  auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) bad("missing string field 'dtype'");
  auto parsed = parse_dtype(dtype->get<std::string>());
  if (!parsed) bad(fmt::format("dtype '{}' is not supported (supported: BF16, F16, F32)", dtype->get<std::string>()));
  t.dtype = *parsed;

  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) bad("missing list field 'shape'");
  // Element count with overflow checks: a hostile header must not wrap it around.
  uint64_t numel = 1;
  for (const json& d : *shape) {
    uint64_t dim;
    if (!to_u64(d, &dim) || dim > uint64_t(INT64_MAX)) bad(fmt::format("shape {} must hold non-negative integers", shape->dump()));
    if (dim != 0 && numel > UINT64_MAX / dim) bad(fmt::format("shape {} overflows", shape->dump()));
    numel *= dim;
    t.shape.push_back(int64_t(dim));
  }

  auto offsets = entry.find("data_offsets");
  uint64_t begin, end;
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 || !to_u64((*offsets)[0], &begin) ||
      !to_u64((*offsets)[1], &end))
    bad("'data_offsets' must be two non-negative integers [begin, end]");
  if (begin > end) bad(fmt::format("data_offsets [{}, {}) has begin after end", begin, end));
  if (end > data_size)
    bad(fmt::format("data range [{}, {}) exceeds the data section ({} bytes)", begin, end, data_size));
  t.begin = begin;
  t.end = end;

  size_t elem = dtype_size(t.dtype);
  if (numel > UINT64_MAX / elem || numel * elem != end - begin)
    bad(fmt::format("shape {} of {} needs {} bytes, but data range [{}, {}) holds {}", shape_string(t.shape),
                    dtype_name(t.dtype), numel > UINT64_MAX / elem ? std::string("more than 2^64")
                                                                   : std::to_string(numel * elem),
                    begin, end, end - begin));
  return t;
}

}  // namespace

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsHeader parse_safetensors_header(const std::string& file, std::span<const std::byte> bytes) {
  if (bytes.size() < 8)
    fail("{}: file is {} bytes, too short for the 8-byte header length of a safetensors file", file, bytes.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian, as the host (checked in dtype.cpp)
  if (header_len > bytes.size() - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes): truncated or not a safetensors file", file,
         header_len, bytes.size());
  if (header_len > kMaxHeaderBytes) fail("{}: header length {} exceeds the {}-byte limit", file, header_len, kMaxHeaderBytes);

  SafetensorsHeader h;
  h.data_offset = 8 + header_len;
  h.data_size = bytes.size() - h.data_offset;

  const char* text = reinterpret_cast<const char*>(bytes.data() + 8);
  // The parser callback sees each top-level key: a name given twice would otherwise
  // silently keep one of the two entries.
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && duplicate.empty()) {
      std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, text + header_len, on_event);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON ({})", file, e.what());
  }
  if (!duplicate.empty()) fail("{}: tensor '{}' appears twice in the header", file, duplicate);
  if (!header.is_object()) fail("{}: header must be a JSON object, got {}", file, header.type_name());

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) fail("{}: __metadata__ must be an object of strings", file);
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) fail("{}: __metadata__ field '{}' must be a string", file, m.key());
        h.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_tensor_entry(file, it.key(), *it, h.data_size));
  }

  std::sort(h.tensors.begin(), h.tensors.end(), [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Empty tensors occupy no bytes and cannot overlap anything.
  const SafetensorsTensor* prev = nullptr;
  for (const SafetensorsTensor& t : h.tensors) {
    if (t.begin == t.end) continue;
    if (prev && t.begin < prev->end)
      fail("{}: tensor '{}': data range [{}, {}) overlaps tensor '{}' [{}, {})", file, t.name, t.begin, t.end,
           prev->name, prev->begin, prev->end);
    prev = &t;
  }
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : file_(path), header_(parse_safetensors_header(path, file_.bytes())) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) by_name_[header_.tensors[i].name] = i;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

const SafetensorsTensor& SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  if (!t) fail("{}: no tensor named '{}'", path(), name);
  return *t;
}

std::span<const std::byte> SafetensorsFile::raw(const SafetensorsTensor& t) const {
  return file_.bytes().subspan(header_.data_offset + t.begin, t.end - t.begin);
}

void SafetensorsFile::read_f32(const SafetensorsTensor& t, std::span<float> out) const {
  if (int64_t(out.size()) != t.numel())
    fail("{}: tensor '{}' has {} elements, the destination {}", path(), t.name, t.numel(), out.size());
  convert_to_f32(t.dtype, raw(t).data(), out.data(), out.size());
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsTensor& t = tensor(name);
  std::vector<float> out(size_t(t.numel()));
  read_f32(t, out);
  return out;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::path single = fs::path(dir) / "model.safetensors";
  fs::path index = fs::path(dir) / "model.safetensors.index.json";
  auto add_file = [&](const fs::path& p) -> SafetensorsFile& {
    files_.push_back(std::make_unique<SafetensorsFile>(p.string()));
    SafetensorsFile& f = *files_.back();
    for (const SafetensorsTensor& t : f.tensors()) {
      auto [it, inserted] = entries_.emplace(t.name, Entry{&f, &t});
      if (!inserted) fail("{}: tensor '{}' is also in {}", f.path(), t.name, it->second.file->path());
    }
    return f;
  };

  if (fs::exists(single)) {
    source_ = single.string();
    add_file(single);
    return;
  }
  if (!fs::exists(index)) fail("{}: no model.safetensors or model.safetensors.index.json", dir);
  source_ = index.string();

  std::ifstream in(index);
  if (!in) fail("{}: cannot open", source_);
  std::stringstream text;
  text << in.rdbuf();
  json j;
  try {
    j = json::parse(text.str());
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", source_, e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail("{}: field 'weight_map' must be an object of tensor name -> shard file", source_);

  std::map<std::string, SafetensorsFile*> shards;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it->is_string()) fail("{}: weight_map['{}'] must be a file name", source_, it.key());
    std::string shard = it->get<std::string>();
    // A shard is a plain file beside the index; a path could reach outside the model.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
      fail("{}: weight_map['{}'] = '{}' must be a file name in the same directory", source_, it.key(), shard);
    if (!shards.count(shard)) shards[shard] = &add_file(fs::path(dir) / shard);
  }
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    SafetensorsFile* f = shards[it->get<std::string>()];
    if (!f->find(it.key()))
      fail("{}: tensor '{}' is listed for {}, which has no such tensor", source_, it.key(), f->path());
  }
}

const SafetensorsCheckpoint::Entry* SafetensorsCheckpoint::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const SafetensorsCheckpoint::Entry& SafetensorsCheckpoint::tensor(const std::string& name) const {
  const Entry* e = find(name);
  if (!e) fail("{}: no tensor named '{}'", source_, name);
  return *e;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

void SafetensorsCheckpoint::read_f32(const std::string& name, std::span<float> out) const {
  const Entry& e = tensor(name);
  e.file->read_f32(*e.tensor, out);
}

}  // namespace adept
