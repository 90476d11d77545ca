#include "train/run_config.hpp"

#include <fmt/ranges.h>

#include <algorithm>

#include "core/embedded.hpp"
#include "core/error.hpp"
#include "core/toml_table_reader.hpp"

namespace adept {

namespace {

constexpr const char* kDefaultConfig = "configs/tiny.toml";

void read_train(const toml::table& root, const char* section, const std::string& source, TrainConfig& t) {
  TomlTableReader r(root, section, source);
  r.read("backend", t.backend);
  r.read("seq_len", t.seq_len);
  r.read("batch_size", t.batch_size);
  r.read("grad_accum", t.grad_accum);
  r.read("steps", t.steps);
  r.read("lr", t.lr);
  r.read("min_lr_ratio", t.min_lr_ratio);
  r.read("warmup_steps", t.warmup_steps);
  r.read("weight_decay", t.weight_decay);
  r.read("beta1", t.beta1);
  r.read("beta2", t.beta2);
  r.read("eps", t.eps);
  r.read("grad_clip", t.grad_clip);
  r.read("seed", t.seed);
  r.read("eval_every", t.eval_every);
  r.read("eval_batches", t.eval_batches);
  r.read("checkpoint_every", t.checkpoint_every);
  r.read("out_dir", t.out_dir);
  r.read("zero_stage", t.zero_stage);
  r.read("cuda_graphs", t.cuda_graphs);
  r.read("recompute", t.recompute);
  r.reject_unknown_keys();
}

void apply(const toml::table& root, const std::string& source, RunConfig& c) {
  static const std::set<std::string> sections = {"run",   "model",  "data",  "pretrain", "train",
                                                 "probe", "expand", "adept", "freeze",   "eval"};
  for (const auto& [key, value] : root)
    if (!sections.count(std::string(key.str()))) fail("{}: unknown section [{}]", source, std::string(key.str()));

  TomlTableReader run(root, "run", source);
  run.read("methods", c.run.methods);
  run.read("base", c.run.base);
  run.read("out_dir", c.run.out_dir);
  run.read("save_dtype", c.run.save_dtype);
  run.read("resume", c.run.resume);
  run.reject_unknown_keys();

  TomlTableReader model(root, "model", source);
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

  TomlTableReader data(root, "data", source);
  data.read("train", c.data.train);
  data.read("general", c.data.general);
  data.read("domain", c.data.domain);
  data.read("tokenizer", c.data.tokenizer);
  data.read("general_split", c.data.general_split);
  data.read("domain_split", c.data.domain_split);
  data.read("train_split", c.data.train_split);
  data.read("text_field", c.data.text_field);
  data.read("instruct", c.data.instruct);
  data.read("prompt_field", c.data.prompt_field);
  data.read("response_field", c.data.response_field);
  data.read("instruct_template", c.data.instruct_template);
  data.read("holdout_fraction", c.data.holdout_fraction);
  data.read("split_seed", c.data.split_seed);
  data.read("replay", c.data.replay);
  data.reject_unknown_keys();

  read_train(root, "pretrain", source, c.pretrain);
  read_train(root, "train", source, c.train);

  TomlTableReader probe(root, "probe", source);
  probe.read("method", c.probe.method);
  probe.read("batches", c.probe.batches);
  probe.read("batch_size", c.probe.batch_size);
  probe.reject_unknown_keys();

  TomlTableReader expand(root, "expand", source);
  expand.read("layers", c.expand.layers);
  expand.read("after", c.expand.after);
  expand.reject_unknown_keys();

  TomlTableReader adept(root, "adept", source);
  adept.read("reestimate_every", c.adept.reestimate_every);
  adept.read("probe_batches", c.adept.probe_batches);
  adept.read("probe_batch_size", c.adept.probe_batch_size);
  adept.read("granularity", c.adept.granularity);
  adept.read("inverted", c.adept.inverted);
  adept.read("decoupled", c.adept.decoupled);
  adept.reject_unknown_keys();

  TomlTableReader freeze(root, "freeze", source);
  freeze.read("layers", c.freeze.layers);
  freeze.reject_unknown_keys();

  TomlTableReader eval(root, "eval", source);
  eval.read("batches", c.eval.batches);
  eval.read("batch_size", c.eval.batch_size);
  eval.read("general_mc", c.eval.general_mc);
  eval.read("domain_mc", c.eval.domain_mc);
  eval.read("domain_qa", c.eval.domain_qa);
  eval.read("shots", c.eval.shots);
  eval.read("max_new_tokens", c.eval.max_new_tokens);
  eval.reject_unknown_keys();
}

toml::table parse(const std::string& text, const std::string& source) {
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    fail("{}:{}:{}: {}", source, where.line, where.column, e.description());
  }
}

void validate_train(const std::string& s, const char* section, const TrainConfig& t, const ModelConfig& model) {
  auto positive = [&](const char* key, double v) {
    if (!(v > 0)) fail("{}: {}.{} must be positive, got {}", s, section, key, v);
  };
  positive("seq_len", double(t.seq_len));
  positive("batch_size", double(t.batch_size));
  positive("grad_accum", double(t.grad_accum));
  positive("steps", double(t.steps));
  positive("lr", t.lr);
  positive("eval_batches", double(t.eval_batches));
  if (t.warmup_steps < 0) fail("{}: {}.warmup_steps must not be negative, got {}", s, section, t.warmup_steps);
  if (t.min_lr_ratio < 0 || t.min_lr_ratio > 1)
    fail("{}: {}.min_lr_ratio must be in [0, 1], got {}", s, section, t.min_lr_ratio);
  if (t.beta1 < 0 || t.beta1 >= 1) fail("{}: {}.beta1 must be in [0, 1), got {}", s, section, t.beta1);
  if (t.beta2 < 0 || t.beta2 >= 1) fail("{}: {}.beta2 must be in [0, 1), got {}", s, section, t.beta2);
  if (t.backend != "cpu" && t.backend != "cuda")
    fail("{}: {}.backend '{}' is unknown (known: cpu, cuda)", s, section, t.backend);
  if (t.backend == "cuda" && !cuda_backend_available())
    fail("{}: {}.backend = \"cuda\", but this adept was built without CUDA (configure with nvcc present and "
         "-DADEPT_CUDA=ON)",
         s, section);
  if (t.checkpoint_every < 0) fail("{}: {}.checkpoint_every must not be negative, got {}", s, section, t.checkpoint_every);
  if (t.zero_stage != 1 && t.zero_stage != 2)
    fail("{}: {}.zero_stage must be 1 (optimizer state sharded) or 2 (gradients too), got {}", s, section,
         t.zero_stage);
  if (t.seq_len > model.max_position_embeddings)
    fail("{}: {}.seq_len ({}) exceeds model.max_position_embeddings ({})", s, section, t.seq_len,
         model.max_position_embeddings);
}

}  // namespace

std::string describe_training(const TrainConfig& t) {
  return fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", t.backend, t.seq_len, t.batch_size,
                     t.grad_accum, t.steps, t.lr, t.min_lr_ratio, t.warmup_steps, t.weight_decay, t.beta1, t.beta2,
                     t.eps, t.grad_clip, t.seed, t.eval_every, t.eval_batches);
}

const std::vector<std::string>& known_methods() {
  static const std::vector<std::string> names = {"adept", "full", "llama-pro", "freeze", "adept-uniform", "adept-one-lr"};
  return names;
}

bool is_known_method(const std::string& name) {
  return std::find(known_methods().begin(), known_methods().end(), name) != known_methods().end();
}

bool cuda_backend_available() {
#ifdef ADEPT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void validate_run_config(const RunConfig& c) {
  const std::string& s = c.source;
  validate_train(s, "pretrain", c.pretrain, c.model);
  validate_train(s, "train", c.train, c.model);
  if (c.data.tokenizer.empty()) fail("{}: data.tokenizer is empty (\"auto\", \"bytes\" or a path)", s);
  if (c.data.holdout_fraction < 0 || c.data.holdout_fraction >= 1)
    fail("{}: data.holdout_fraction must be in [0, 1), got {}", s, c.data.holdout_fraction);
  if (c.data.replay < 0 || c.data.replay >= 1) fail("{}: data.replay must be in [0, 1), got {}", s, c.data.replay);
  for (auto [key, value] : {std::pair{"general_split", &c.data.general_split},
                            std::pair{"domain_split", &c.data.domain_split}, std::pair{"train_split", &c.data.train_split}})
    if (*value != "file" && *value != "blocks" && *value != "fortune")
      fail("{}: data.{} '{}' is unknown (known: file, blocks, fortune)", s, key, *value);
  for (const std::string& name : c.data.instruct)
    if (name != "general" && name != "domain" && name != "train")
      fail("{}: data.instruct: '{}' is not a corpus (general, domain, train)", s, name);
  if (c.run.save_dtype != "auto" && c.run.save_dtype != "float32" && c.run.save_dtype != "bfloat16" &&
      c.run.save_dtype != "float16")
    fail("{}: run.save_dtype '{}' is unknown (known: auto, float32, bfloat16, float16)", s, c.run.save_dtype);
  for (const std::string& m : c.run.methods)
    if (!is_known_method(m)) fail("{}: run.methods: '{}' is unknown (known: {})", s, m, fmt::join(known_methods(), ", "));
  if (c.expand.layers < 1 && c.expand.after.empty()) fail("{}: expand.layers must be at least 1", s);
  if (c.adept.reestimate_every < 1) fail("{}: adept.reestimate_every must be at least 1", s);
  if (c.adept.probe_batches < 1) fail("{}: adept.probe_batches must be at least 1", s);
  if (c.probe.batches < 1 || c.probe.batch_size < 1) fail("{}: probe.batches and probe.batch_size must be at least 1", s);
  if (c.eval.batches < 1 || c.eval.batch_size < 1) fail("{}: eval.batches and eval.batch_size must be at least 1", s);
  if (c.eval.shots < 0 || c.eval.max_new_tokens < 1)
    fail("{}: eval.shots must not be negative and eval.max_new_tokens must be at least 1", s);
  if (c.adept.granularity != "tensor" && c.adept.granularity != "row")
    fail("{}: adept.granularity '{}' is unknown (known: tensor, row)", s, c.adept.granularity);
  static const std::set<std::string> probes = {"masking_out", "cumulative_gradient", "rank_aggregation", "fisher"};
  if (!probes.count(c.probe.method))
    fail("{}: probe.method '{}' is unknown (known: masking_out, cumulative_gradient, rank_aggregation, fisher)", s,
         c.probe.method);
}

void validate_data_parallel(const RunConfig& c, int world) {
  if (world <= 1) return;
  if (c.train.backend != "cuda")
    fail("{}: train.backend = \"{}\", but the launcher started {} processes: data parallelism needs train.backend = "
         "\"cuda\" (one GPU per process); run the CPU backend as one process",
         c.source, c.train.backend, world);
  if (c.train.batch_size % world != 0)
    fail("{}: train.batch_size ({}) is the global batch and must be a multiple of the number of processes ({}): "
         "each GPU trains on batch_size / {} sequences",
         c.source, c.train.batch_size, world, world);
}

RunConfig load_run_config(const std::string& path) {
  RunConfig c;
  auto defaults = embedded_file(kDefaultConfig);
  if (!defaults) fail("the embedded default config {} is missing from this build", kDefaultConfig);
  apply(parse(std::string(*defaults), kDefaultConfig), kDefaultConfig, c);
  c.source = kDefaultConfig;
  if (!path.empty()) {
    std::string text = read_text_source(path);
    toml::table user = parse(text, path);
    apply(user, path, c);
    for (const auto& [key, value] : user) c.user_sections.insert(std::string(key.str()));
    c.source = path;
  }
  try {
    c.model.finalize_and_validate();
  } catch (const Error& e) {
    fail("{}: [model] {}", c.source, e.what());
  }
  validate_run_config(c);
  return c;
}

}  // namespace adept
