#include "train/run_config.hpp"

#include <toml++/toml.h>

#include <set>

#include "core/embedded.hpp"
#include "core/error.hpp"

namespace adept {

namespace {

constexpr const char* kDefaultConfig = "configs/tiny.toml";

// Reads typed values out of one TOML table, remembering which keys were consumed so
// that any other key can be reported as unknown.
class TableReader {
 public:
  TableReader(const toml::table& root, std::string section, std::string source)
      : source_(std::move(source)), section_(std::move(section)) {
    if (const toml::node* node = root.get(section_)) {
      table_ = node->as_table();
      if (!table_) fail("{}: [{}] must be a table", source_, section_);
    }
  }

  template <typename T>
  void read(const char* key, T& out) {
    used_.insert(key);
    if (!table_) return;
    const toml::node* node = table_->get(key);
    if (!node) return;
    if constexpr (std::is_same_v<T, bool>) {
      if (auto v = node->value<bool>()) return void(out = *v);
    } else if constexpr (std::is_integral_v<T>) {
      if (auto v = node->value<int64_t>()) {
        if constexpr (std::is_unsigned_v<T>)
          if (*v < 0) fail("{}: {}.{} must not be negative, got {}", source_, section_, key, *v);
        return void(out = T(*v));
      }
    } else if constexpr (std::is_floating_point_v<T>) {
      if (auto v = node->value<double>()) return void(out = T(*v));
    } else {
      if (auto v = node->value<std::string>()) return void(out = *v);
    }
    fail("{}: {}.{} has the wrong type (expected {})", source_, section_, key, type_name<T>());
  }

  // Call after all reads: any key not read is a mistake in the file.
  void reject_unknown_keys() const {
    if (!table_) return;
    for (const auto& [key, value] : *table_)
      if (!used_.count(std::string(key.str())))
        fail("{}: unknown key {}.{}", source_, section_, std::string(key.str()));
  }

 private:
  template <typename T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "a boolean";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else return "a string";
  }

  std::string source_, section_;
  const toml::table* table_ = nullptr;
  std::set<std::string> used_;
};

void apply(const toml::table& root, const std::string& source, RunConfig& c) {
  for (const auto& [key, value] : root) {
    std::string k(key.str());
    if (k != "model" && k != "data" && k != "train") fail("{}: unknown section [{}]", source, k);
  }
  TableReader model(root, "model", source);
  ModelConfig& m = c.model;
  model.read("model_type", m.model_type);
  model.read("vocab_size", m.vocab_size);
  model.read("hidden_size", m.hidden_size);
  model.read("intermediate_size", m.intermediate_size);
  model.read("num_hidden_layers", m.num_hidden_layers);
  model.read("num_attention_heads", m.num_attention_heads);
  model.read("num_key_value_heads", m.num_key_value_heads);
  model.read("head_dim", m.head_dim);
  model.read("max_position_embeddings", m.max_position_embeddings);
  model.read("rms_norm_eps", m.rms_norm_eps);
  model.read("rope_theta", m.rope_theta);
  model.read("tie_word_embeddings", m.tie_word_embeddings);
  model.read("attention_bias", m.attention_bias);
  model.read("init_std", c.init_std);
  model.reject_unknown_keys();

  TableReader data(root, "data", source);
  data.read("train", c.data.train);
  data.read("tokenizer", c.data.tokenizer);
  data.read("holdout_fraction", c.data.holdout_fraction);
  data.reject_unknown_keys();

  TableReader train(root, "train", source);
  TrainConfig& t = c.train;
  train.read("backend", t.backend);
  train.read("seq_len", t.seq_len);
  train.read("batch_size", t.batch_size);
  train.read("grad_accum", t.grad_accum);
  train.read("steps", t.steps);
  train.read("lr", t.lr);
  train.read("min_lr_ratio", t.min_lr_ratio);
  train.read("warmup_steps", t.warmup_steps);
  train.read("weight_decay", t.weight_decay);
  train.read("beta1", t.beta1);
  train.read("beta2", t.beta2);
  train.read("eps", t.eps);
  train.read("grad_clip", t.grad_clip);
  train.read("seed", t.seed);
  train.read("eval_every", t.eval_every);
  train.read("eval_batches", t.eval_batches);
  train.read("out_dir", t.out_dir);
  train.reject_unknown_keys();
}

toml::table parse(const std::string& text, const std::string& source) {
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    fail("{}:{}:{}: {}", source, where.line, where.column, e.description());
  }
}

void validate(const RunConfig& c) {
  const std::string& s = c.source;
  const TrainConfig& t = c.train;
  auto positive = [&](const char* key, double v) {
    if (!(v > 0)) fail("{}: train.{} must be positive, got {}", s, key, v);
  };
  positive("seq_len", double(t.seq_len));
  positive("batch_size", double(t.batch_size));
  positive("grad_accum", double(t.grad_accum));
  positive("steps", double(t.steps));
  positive("lr", t.lr);
  positive("eval_batches", double(t.eval_batches));
  if (t.warmup_steps < 0) fail("{}: train.warmup_steps must not be negative, got {}", s, t.warmup_steps);
  if (t.min_lr_ratio < 0 || t.min_lr_ratio > 1) fail("{}: train.min_lr_ratio must be in [0, 1], got {}", s, t.min_lr_ratio);
  if (t.beta1 < 0 || t.beta1 >= 1) fail("{}: train.beta1 must be in [0, 1), got {}", s, t.beta1);
  if (t.beta2 < 0 || t.beta2 >= 1) fail("{}: train.beta2 must be in [0, 1), got {}", s, t.beta2);
  if (t.backend != "cpu") fail("{}: train.backend '{}' is not available (available: cpu)", s, t.backend);
  if (c.data.tokenizer != "bytes") fail("{}: data.tokenizer '{}' is not supported (supported: bytes)", s, c.data.tokenizer);
  if (c.data.holdout_fraction < 0 || c.data.holdout_fraction >= 1)
    fail("{}: data.holdout_fraction must be in [0, 1), got {}", s, c.data.holdout_fraction);
  if (c.model.vocab_size < 256) fail("{}: model.vocab_size must be at least 256 for the byte tokenizer, got {}", s, c.model.vocab_size);
  if (t.seq_len > c.model.max_position_embeddings)
    fail("{}: train.seq_len ({}) exceeds model.max_position_embeddings ({})", s, t.seq_len, c.model.max_position_embeddings);
}

}  // namespace

RunConfig load_run_config(const std::string& path) {
  RunConfig c;
  auto defaults = embedded_file(kDefaultConfig);
  if (!defaults) fail("the embedded default config {} is missing from this build", kDefaultConfig);
  apply(parse(std::string(*defaults), kDefaultConfig), kDefaultConfig, c);
  c.source = kDefaultConfig;
  if (!path.empty()) {
    std::string text = read_text_source(path);
    apply(parse(text, path), path, c);
    c.source = path;
  }
  try {
    c.model.finalize_and_validate();
  } catch (const Error& e) {
    fail("{}: [model] {}", c.source, e.what());
  }
  validate(c);
  return c;
}

}  // namespace adept
