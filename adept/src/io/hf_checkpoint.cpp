#include "io/hf_checkpoint.hpp"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"

namespace adept {

namespace {

namespace fs = std::filesystem;

bool ignorable(const std::string& name, const ModelConfig& cfg) {
  if (name == "lm_head.weight" && cfg.tie_word_embeddings) return true;  // some tied checkpoints store it anyway
  return name.ends_with(".rotary_emb.inv_freq");                          // a buffer older transformers saved
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("{}: cannot open", p.string());
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Every expected tensor present with its shape, nothing else: the checkpoint's layout
// is the config's. Returns the entries in expected order.
std::vector<std::pair<TensorSpec, const SafetensorsCheckpoint::Entry*>> match_layout(const SafetensorsCheckpoint& ckpt,
                                                                                     const ModelConfig& cfg,
                                                                                     const std::string& config_name) {
  std::vector<TensorSpec> specs = expected_tensors(cfg);
  std::set<std::string> expected;
  std::vector<std::pair<TensorSpec, const SafetensorsCheckpoint::Entry*>> out;
  for (TensorSpec& spec : specs) {
    expected.insert(spec.name);
    const SafetensorsCheckpoint::Entry* e = ckpt.find(spec.name);
    if (!e)
      fail("{}: tensor '{}' is missing ({} expects shape {} for model_type {})", ckpt.source(), spec.name, config_name,
           shape_string(spec.shape), cfg.model_type);
    if (e->tensor->shape != spec.shape)
      fail("{}: tensor '{}' has shape {}, {} expects {}", e->file->path(), spec.name, shape_string(e->tensor->shape),
           config_name, shape_string(spec.shape));
    out.emplace_back(std::move(spec), e);
  }
  for (const std::string& name : ckpt.names()) {
    if (expected.count(name)) continue;
    if (ignorable(name, cfg)) {
      spdlog::debug("{}: ignoring tensor '{}'", ckpt.source(), name);
      continue;
    }
    fail("{}: unexpected tensor '{}' (not part of a {} model with {} layers as {} describes it)",
         ckpt.tensor(name).file->path(), name, cfg.model_type, cfg.num_hidden_layers, config_name);
  }
  return out;
}

void check_tensors_for_save(const std::string& dir, const ModelConfig& cfg, std::span<const TensorRef> tensors,
                            std::vector<TensorToWrite>& ordered, DType dtype) {
  std::map<std::string, const TensorRef*> by_name;
  for (const TensorRef& t : tensors)
    if (!by_name.emplace(t.name, &t).second) fail("{}: tensor '{}' given twice", dir, t.name);
  for (const TensorSpec& spec : expected_tensors(cfg)) {
    auto it = by_name.find(spec.name);
    if (it == by_name.end())
      fail("{}: cannot save: tensor '{}' (shape {}) is missing for this {} config", dir, spec.name,
           shape_string(spec.shape), cfg.model_type);
    const TensorRef& t = *it->second;
    if (t.shape != spec.shape)
      fail("{}: cannot save: tensor '{}' has shape {}, the config expects {}", dir, t.name, shape_string(t.shape),
           shape_string(spec.shape));
    ordered.push_back({t.name, t.shape, t.values, dtype});
    by_name.erase(it);
  }
  if (!by_name.empty())
    fail("{}: cannot save: tensor '{}' is not part of a {} model with {} layers", dir, by_name.begin()->first,
         cfg.model_type, cfg.num_hidden_layers);
}

}  // namespace

const std::vector<std::string>& tokenizer_file_names() {
  static const std::vector<std::string> names = {
      "tokenizer.json", "tokenizer.model",    "tokenizer_config.json", "special_tokens_map.json",
      "added_tokens.json", "vocab.json",      "merges.txt",            "generation_config.json"};
  return names;
}

void read_checkpoint_tensors(const std::string& dir, const ModelConfig& config,
                             const std::function<std::span<float>(const TensorSpec&)>& destination) {
  SafetensorsCheckpoint ckpt(dir);
  for (const auto& [spec, entry] : match_layout(ckpt, config, (fs::path(dir) / "config.json").string()))
    entry->file->read_f32(*entry->tensor, destination(spec));
}

HfCheckpoint load_checkpoint(const std::string& dir) {
  HfCheckpoint out;
  std::string config_path = (fs::path(dir) / "config.json").string();
  out.config = read_hf_config(config_path);
  SafetensorsCheckpoint ckpt(dir);
  for (const auto& [spec, entry] : match_layout(ckpt, out.config.model, config_path)) {
    HostTensor& t = out.tensors[spec.name];
    t.shape = spec.shape;
    t.values.resize(size_t(entry->tensor->numel()));
    entry->file->read_f32(*entry->tensor, t.values);
  }
  return out;
}

void save_checkpoint(const std::string& dir, const HfModelConfig& config, std::span<const TensorRef> tensors,
                     const std::string& tokenizer_source_dir, DType dtype, uint64_t max_shard_bytes) {
  HfModelConfig cfg = config;
  cfg.torch_dtype = std::string(dtype_torch_name(dtype));
  try {
    cfg.model.finalize_and_validate();
    hf_config_json(cfg);  // refuses what config.json cannot express before anything is written
  } catch (const Error& e) {
    fail("{}: cannot save: {}", dir, e.what());
  }
  std::vector<TensorToWrite> ordered;
  check_tensors_for_save(dir, cfg.model, tensors, ordered, dtype);

  std::vector<fs::path> tokenizer_files;
  if (!tokenizer_source_dir.empty()) {
    for (const std::string& name : tokenizer_file_names())
      if (fs::exists(fs::path(tokenizer_source_dir) / name)) tokenizer_files.push_back(fs::path(tokenizer_source_dir) / name);
    if (tokenizer_files.empty())
      fail("{}: no tokenizer files (tokenizer.json, tokenizer.model, ...) to copy", tokenizer_source_dir);
  }

  make_directories(dir);
  write_safetensors_checkpoint(dir, ordered, max_shard_bytes);
  std::error_code ec;
  for (const fs::path& src : tokenizer_files) {
    fs::path dst = fs::path(dir) / src.filename();
    if (fs::exists(dst) && fs::equivalent(src, dst, ec)) continue;  // saving over the source model
    write_file_atomic(dst.string(), read_file(src));
  }
  write_hf_config((fs::path(dir) / "config.json").string(), cfg);
}

void save_checkpoint(const std::string& dir, const HfModelConfig& config, const TensorMap& tensors,
                     const std::string& tokenizer_source_dir, DType dtype, uint64_t max_shard_bytes) {
  std::vector<TensorRef> refs;
  refs.reserve(tensors.size());
  for (const auto& [name, t] : tensors) refs.push_back({name, t.shape, t.values});
  save_checkpoint(dir, config, refs, tokenizer_source_dir, dtype, max_shard_bytes);
}

}  // namespace adept
