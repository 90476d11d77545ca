#include "pipeline/model_files.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <vector>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "io/hf_checkpoint.hpp"

namespace adept {

namespace fs = std::filesystem;

Decoder<float> load_hf_model(const std::string& dir, HfModelConfig* hf) {
  if (!fs::is_directory(dir)) fail("{}: no such model directory (an HF checkpoint with config.json)", dir);
  fs::path config_path = fs::path(dir) / "config.json";
  if (!fs::exists(config_path)) fail("{}: no config.json (not a Hugging Face checkpoint directory)", dir);
  HfModelConfig cfg = read_hf_config(config_path.string());
  Decoder<float> model(cfg.model);
  ParameterStore<float>& P = model.params();
  read_checkpoint_tensors(dir, cfg.model, [&](const TensorSpec& spec) {
    int i = P.index(spec.name);
    return std::span<float>(P.value(i), size_t(P.info(i).numel));
  });
  if (hf) *hf = std::move(cfg);
  return model;
}

void save_hf_model(const std::string& dir, const Decoder<float>& model, const HfModelConfig& like,
                   const std::string& tokenizer, DType dtype) {
  HfModelConfig cfg = like;
  cfg.model = model.config();
  const ParameterStore<float>& P = model.params();
  std::vector<TensorRef> tensors;
  for (const TensorSpec& spec : expected_tensors(cfg.model)) {
    int i = P.index(spec.name);
    tensors.push_back({spec.name, spec.shape, {P.value(i), size_t(P.info(i).numel)}});
  }
  // A stale config.json would mark a half-written directory complete.
  if (fs::exists(fs::path(dir) / "config.json")) fs::remove(fs::path(dir) / "config.json");
  if (tokenizer == "bytes") {
    make_directories(dir);
    write_file_atomic((fs::path(dir) / "adept.json").string(), "{\"tokenizer\": \"bytes\"}\n");
  }
  save_checkpoint(dir, cfg, tensors, tokenizer == "bytes" ? "" : tokenizer, dtype);
}

std::string tokenizer_of_model_dir(const std::string& dir) {
  for (const std::string& name : tokenizer_file_names())
    if (fs::exists(fs::path(dir) / name)) return dir;
  return fs::exists(fs::path(dir) / "adept.json") ? "bytes" : "";
}

DType resolve_save_dtype(const std::string& setting, const HfModelConfig& base) {
  std::string name = setting == "auto" ? (base.torch_dtype.empty() ? "float32" : base.torch_dtype) : setting;
  std::optional<DType> d = parse_torch_dtype(name);
  if (!d) fail("run.save_dtype: '{}' is not a dtype a checkpoint can hold (float32, bfloat16, float16)", name);
  return *d;
}

Expansion expand_checkpoint(const std::string& in, const std::string& out, const std::vector<int64_t>& after,
                            const std::string& dtype) {
  if (fs::absolute(out).lexically_normal() == fs::absolute(in).lexically_normal())
    fail("{}: the expanded model cannot overwrite the model it is made from; choose another directory", out);
  HfModelConfig hf;
  Decoder<float> model = load_hf_model(in, &hf);
  Expansion e;
  Decoder<float> expanded = expand_layers(model, after, &e);
  save_hf_model(out, expanded, hf, tokenizer_of_model_dir(in), resolve_save_dtype(dtype, hf));
  nlohmann::json j = {{"source_model", in}, {"copied_layers", e.source_layers}, {"inserted", e.inserted},
                      {"origin", e.origin}};
  write_file_atomic((fs::path(out) / "expansion.json").string(), j.dump(2) + "\n");
  return e;
}

bool hf_model_exists(const std::string& dir) { return fs::exists(fs::path(dir) / "config.json"); }

}  // namespace adept
