#include "train/trainer.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/embedded.hpp"
#include "data/content_hash.hpp"
#include "data/packed_loader.hpp"
#include "io/safetensors.hpp"
#include "io/safetensors_writer.hpp"
#include "train/progress.hpp"

#ifdef ADEPT_WITH_CUDA
#include "backend/cuda/cuda_train_adapter.hpp"
#endif

namespace adept {

namespace fs = std::filesystem;

StepRecord train_step(Decoder<float>& model, AdamW& optimizer, const std::vector<TokenBatch>& micro_batches,
                      const TrainConfig& config, int64_t step) {
  auto t0 = std::chrono::steady_clock::now();
  // The loss is the mean over every counted target of the whole step, so each
  // micro-batch's gradient is scaled by 1 / (targets in all micro-batches).
  int64_t counted = 0, tokens = 0;
  for (const TokenBatch& b : micro_batches) {
    tokens += b.B * b.S;
    for (int32_t t : b.targets) counted += t != kIgnoreIndex;
  }
  StepRecord r;
  r.step = step;
  r.lr = cosine_schedule(step, config.warmup_steps, config.steps, config.lr, config.min_lr_ratio);
  ParameterStore<float>& params = model.params();
  params.zero_gradients();
  double loss_sum = 0.0;
  ForwardOptions fo;
  fo.keep_activations = true;
  fo.grad_scale = counted ? 1.0 / double(counted) : 0.0;
  for (const TokenBatch& b : micro_batches) {
    loss_sum += model.forward(batch_view(b), fo).loss_sum;
    model.backward();
  }
  r.loss = counted ? loss_sum / double(counted) : 0.0;
  r.grad_norm = clip_gradient_norm(params, config.grad_clip);
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    r.skipped = true;  // never apply a non-finite update
  } else {
    optimizer.step(params, r.lr);
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_second = seconds > 0 ? double(tokens) / seconds : 0.0;
  return r;
}

double batch_gradient(Decoder<float>& model, const TokenBatch& b) {
  model.params().zero_gradients();
  ForwardOptions fo;
  fo.keep_activations = true;
  double loss = model.forward(batch_view(b), fo).loss;
  model.backward();
  return loss;
}

double evaluate(Decoder<float>& model, const WindowSampler& holdout, int64_t batch_size, int64_t batches) {
  double loss_sum = 0.0;
  int64_t count = 0;
  for (int64_t k = 0; k < batches; ++k) {
    TokenBatch b = holdout.sequential_batch(batch_size, k);
    cpu::CrossEntropyResult r = model.forward(batch_view(b));
    loss_sum += r.loss_sum;
    count += r.count;
  }
  return count ? loss_sum / double(count) : 0.0;
}

AdamWConfig adamw_config(const TrainConfig& config) {
  AdamWConfig ac;
  ac.beta1 = config.beta1;
  ac.beta2 = config.beta2;
  ac.eps = config.eps;
  ac.weight_decay = config.weight_decay;
  return ac;
}

namespace {

class CpuEngine final : public TrainEngine {
 public:
  CpuEngine(Decoder<float>& model, const AdamWConfig& adamw) : model_(model), optimizer_(adamw) {}
  std::string name() const override { return "cpu"; }
  StepRecord step(const std::vector<TokenBatch>& micro, const TrainConfig& config, int64_t step) override {
    return train_step(model_, optimizer_, micro, config, step);
  }
  cpu::CrossEntropyResult loss(const TokenBatch& batch, const std::vector<bool>& skip_layers) override {
    ForwardOptions fo;
    fo.skip_layers = skip_layers;
    return model_.forward(batch_view(batch), fo);
  }
  void gradient(const TokenBatch& batch) override { batch_gradient(model_, batch); }
  void pull_weights() override {}
  void push_weights() override {}
  void push_multipliers() override {}
  void save_optimizer_state(std::vector<float>& m, std::vector<float>& v, int64_t& t) override {
    m = optimizer_.first_moment();
    v = optimizer_.second_moment();
    t = optimizer_.steps_taken();
  }
  void load_optimizer_state(const std::vector<float>& m, const std::vector<float>& v, int64_t t) override {
    optimizer_.first_moment() = m;
    optimizer_.second_moment() = v;
    optimizer_.set_steps_taken(t);
  }

 private:
  Decoder<float>& model_;
  AdamW optimizer_;
};

nlohmann::json result_to_json(const TrainResult& r) {
  nlohmann::json steps = nlohmann::json::array(), evals = nlohmann::json::array();
  for (const StepRecord& s : r.steps)
    steps.push_back({s.step, s.loss, s.lr, s.grad_norm, s.tokens_per_second, s.skipped});
  for (const EvalRecord& e : r.evals) evals.push_back({e.step, e.loss});
  return {{"steps", steps}, {"evals", evals}, {"tokens", r.tokens}, {"skipped_steps", r.skipped_steps},
          {"seconds", r.seconds}};
}

TrainResult result_from_json(const nlohmann::json& j) {
  TrainResult r;
  for (const nlohmann::json& s : j.at("steps"))
    r.steps.push_back({s.at(0).get<int64_t>(), s.at(1).get<double>(), s.at(2).get<double>(), s.at(3).get<double>(),
                       s.at(4).get<double>(), s.at(5).get<bool>()});
  for (const nlohmann::json& e : j.at("evals")) r.evals.push_back({e.at(0).get<int64_t>(), e.at(1).get<double>()});
  r.tokens = j.at("tokens").get<int64_t>();
  r.skipped_steps = j.at("skipped_steps").get<int64_t>();
  r.seconds = j.at("seconds").get<double>();
  return r;
}

std::vector<std::string> trainable_names(const ParameterStore<float>& P) {
  std::vector<std::string> names;
  for (int i = 0; i < P.size(); ++i)
    if (P.info(i).grad_offset >= 0) names.push_back(P.info(i).name);
  return names;
}

// A checkpoint is a folder step-<n>/ (weights, optimizer moments, state.json) and
// latest.json naming the newest complete one; latest.json is replaced atomically only
// after the folder is complete, and older folders are removed only after that. Every
// rank of a data-parallel job calls this (the copies are collective); `writer` writes.
void save_training_checkpoint(const CheckpointOptions& c, int64_t step, Decoder<float>& model, TrainEngine& engine,
                              const TrainData& data, const TrainResult& result, bool writer) {
  // Collective under data parallelism: every rank gathers, rank 0 (writer) writes.
  engine.pull_weights();
  std::vector<float> first, second;
  int64_t adamw_steps = 0;
  engine.save_optimizer_state(first, second, adamw_steps);
  if (!writer) return;
  const std::string name = fmt::format("step-{:08d}", step);
  fs::path dir = fs::path(c.dir) / name;
  if (fs::exists(dir)) fs::remove_all(dir);
  make_directories(dir.string());
  ParameterStore<float>& P = model.params();
  std::vector<TensorToWrite> weights;
  for (int i = 0; i < P.size(); ++i)
    weights.push_back({P.info(i).name, P.info(i).shape, {P.value(i), size_t(P.info(i).numel)}, DType::F32});
  write_safetensors((dir / "weights.safetensors").string(), weights);
  if (!first.empty()) {
    std::vector<TensorToWrite> moments = {{"adamw.m", {int64_t(first.size())}, first, DType::F32},
                                          {"adamw.v", {int64_t(second.size())}, second, DType::F32}};
    write_safetensors((dir / "optimizer.safetensors").string(), moments);
  }
  nlohmann::json state = {{"step", step},
                          {"key", c.key},
                          {"adamw_steps", adamw_steps},
                          {"trainable", trainable_names(P)},
                          {"result", result_to_json(result)}};
  if (data.save_position) state["data"] = data.save_position();
  if (c.save_method) state["method"] = c.save_method();
  write_file_atomic((dir / "state.json").string(), state.dump() + "\n");
  write_file_atomic((fs::path(c.dir) / "latest.json").string(),
                    nlohmann::json({{"step", step}, {"dir", name}}).dump() + "\n");
  for (const auto& entry : fs::directory_iterator(c.dir))
    if (entry.is_directory() && entry.path().filename().string().starts_with("step-") &&
        entry.path().filename() != name)
      fs::remove_all(entry.path());
}

// Restores the newest checkpoint in c.dir, if any; returns its step (0: none).
int64_t load_training_checkpoint(const CheckpointOptions& c, Decoder<float>& model, TrainEngine& engine,
                                 const TrainData& data, TrainResult& result) {
  fs::path latest = fs::path(c.dir) / "latest.json";
  if (!fs::exists(latest)) return 0;
  fs::path dir;
  nlohmann::json state;
  try {
    nlohmann::json l = nlohmann::json::parse(read_text_source(latest.string()));
    dir = fs::path(c.dir) / l.at("dir").get<std::string>();
    state = nlohmann::json::parse(read_text_source((dir / "state.json").string()));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed checkpoint ({})", c.dir, e.what());
  }
  ParameterStore<float>& P = model.params();
  if (state.value("key", "") != c.key) {
    fmt::print("note     {}: ignoring the checkpoint there, made by a training with other settings, data or "
               "starting weights\n",
               c.dir);
    return 0;
  }
  try {
    if (state.at("trainable").get<std::vector<std::string>>() != trainable_names(P))
      fail("{}: the checkpoint trained other tensors than this run does; remove the folder to start over",
           dir.string());
    SafetensorsFile weights((dir / "weights.safetensors").string());
    for (int i = 0; i < P.size(); ++i) {
      const SafetensorsTensor& t = weights.tensor(P.info(i).name);
      if (t.numel() != P.info(i).numel)
        fail("{}: tensor '{}' has {} values, the model {}", weights.path(), P.info(i).name, t.numel(),
             P.info(i).numel);
      weights.read_f32(t, {P.value(i), size_t(P.info(i).numel)});
    }
    engine.push_weights();
    std::vector<float> first, second;
    if (fs::exists(dir / "optimizer.safetensors")) {
      SafetensorsFile moments((dir / "optimizer.safetensors").string());
      first = moments.read_f32("adamw.m");
      second = moments.read_f32("adamw.v");
      if (first.size() != P.gradients().size() || second.size() != P.gradients().size())
        fail("{}: optimizer moments of {} values, the trainable parameters have {}", moments.path(), first.size(),
             P.gradients().size());
    }
    engine.load_optimizer_state(first, second, state.at("adamw_steps").get<int64_t>());
    if (data.restore_position) data.restore_position(state.at("data"));
    if (c.restore_method && state.contains("method")) c.restore_method(state.at("method"));
    result = result_from_json(state.at("result"));
    return state.at("step").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}/state.json: malformed checkpoint state ({})", dir.string(), e.what());
  }
}

}  // namespace

std::unique_ptr<TrainEngine> make_cpu_engine(Decoder<float>& model, const AdamWConfig& adamw) {
  return std::make_unique<CpuEngine>(model, adamw);
}

std::unique_ptr<TrainEngine> make_train_engine(Decoder<float>& model, const TrainConfig& config, int64_t max_tokens,
                                               int64_t max_seq_len, std::shared_ptr<dist::Communicator> communicator) {
  const bool data_parallel = communicator && communicator->world() > 1;
  if (config.backend == "cpu") {
    if (data_parallel)
      fail("backend = \"cpu\" runs in one process; data parallelism over {} processes needs backend = \"cuda\"",
           communicator->world());
    return make_cpu_engine(model, adamw_config(config));
  }
  if (config.backend == "cuda") {
#ifdef ADEPT_WITH_CUDA
    return make_cuda_engine(model, config, max_tokens, max_seq_len, std::move(communicator));
#else
    fail("backend = \"cuda\": this adept was built without CUDA (configure with nvcc present, -DADEPT_CUDA=ON)");
#endif
  }
  fail("backend '{}' is unknown (known: cpu, cuda)", config.backend);
}

std::string weights_fingerprint(const ParameterStore<float>& P) {
  Fnv1a64 h;
  for (int i = 0; i < P.size(); ++i) {
    const ParameterInfo& p = P.info(i);
    h.update(fmt::format("{}:{}|", p.name, p.numel));
    const float* w = P.value(i);
    for (int64_t j = 0; j < p.numel; j += 4096) h.update(&w[j], sizeof(float));
  }
  return hash_string(h.value());
}

std::unique_ptr<TrainEngine> make_inference_engine(Decoder<float>& model, const TrainConfig& config,
                                                   int64_t max_tokens, int64_t max_seq_len) {
  ParameterStore<float>& P = model.params();
  for (int i = 0; i < P.size(); ++i) P.set_trainable(i, false);
  P.allocate_gradients();
  return make_train_engine(model, config, max_tokens, max_seq_len);
}

void truncate_jsonl_log(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_text_source(path));
  std::string kept, line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;  // a line cut short by the interruption
    int64_t s = j["step"].get<int64_t>();
    bool is_eval = j.value("event", "") == "eval";
    if (s < step || (is_eval && s == step)) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

TrainResult train(Decoder<float>& model, TrainEngine& engine, const TrainConfig& config, const TrainData& data,
                  const TrainOptions& options) {
  TrainResult result;
  const CheckpointOptions& ck = options.checkpoint;
  const bool checkpoints = !ck.dir.empty() && ck.every > 0;
  const bool writer = options.rank == 0;  // data parallelism: rank 0 alone writes and prints
  int64_t first_step = 0;
  if (checkpoints && ck.resume) {
    first_step = load_training_checkpoint(ck, model, engine, data, result);
    if (first_step > 0) {
      result.resumed_from = first_step;
      if (writer)
        fmt::print("resume   {}: from the checkpoint at step {} of {}\n", options.label, first_step, config.steps);
    }
  }
  std::ofstream metrics;
  if (writer && !options.metrics_path.empty()) {
    if (first_step > 0) truncate_jsonl_log(options.metrics_path, first_step);
    metrics.open(options.metrics_path, first_step > 0 ? std::ios::app : std::ios::trunc);
    if (!metrics) fail("{}: cannot open for writing", options.metrics_path);
  }
  auto log = [&](const nlohmann::json& j) {
    if (metrics.is_open()) metrics << j.dump() << '\n' << std::flush;
  };
  auto run_eval = [&](int64_t step) {
    if (!options.evaluate) return;
    EvalRecord e{step, options.evaluate(engine)};
    result.evals.push_back(e);
    log({{"event", "eval"}, {"step", e.step}, {"heldout_loss", e.loss}});
  };

  ProgressBar bar(options.label, config.steps);
  const double seconds_before = result.seconds;
  auto start = std::chrono::steady_clock::now();
  if (first_step == 0) run_eval(0);
  double smoothed = NAN;
  for (const StepRecord& r : result.steps)
    if (std::isfinite(r.loss)) smoothed = std::isnan(smoothed) ? r.loss : 0.9 * smoothed + 0.1 * r.loss;
  for (int64_t step = first_step; step < config.steps; ++step) {
    if (options.stop_after >= 0 && step >= first_step + options.stop_after) {
      engine.pull_weights();
      return result;
    }
    if (options.before_step) options.before_step(step, engine);
    std::vector<TokenBatch> micro;
    for (int64_t m = 0; m < config.grad_accum; ++m) micro.push_back(data.next(step, m));
    StepRecord r = engine.step(micro, config, step);
    r.tokens_per_second *= options.world;
    for (const TokenBatch& b : micro) result.tokens += b.B * b.S * options.world;
    result.skipped_steps += r.skipped;
    result.steps.push_back(r);
    log({{"event", "step"}, {"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
         {"tokens_per_second", r.tokens_per_second}, {"skipped", r.skipped}});
    if (std::isfinite(r.loss)) smoothed = std::isnan(smoothed) ? r.loss : 0.9 * smoothed + 0.1 * r.loss;
    if (config.eval_every > 0 && (step + 1) % config.eval_every == 0 && step + 1 < config.steps) run_eval(step + 1);
    if (writer && options.show_progress)
      bar.update(step + 1, fmt::format("loss {:.3f} lr {:.2e} {:.0f} tok/s", smoothed, r.lr, r.tokens_per_second));
    if (checkpoints && (step + 1) % ck.every == 0 && step + 1 < config.steps) {
      result.seconds =
          seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      save_training_checkpoint(ck, step + 1, model, engine, data, result, writer);
    }
  }
  run_eval(config.steps);
  engine.pull_weights();
  result.seconds = seconds_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (writer && options.show_progress)
    bar.finish(fmt::format("loss {:.3f} {:.0f} tok/s", smoothed, double(result.tokens) / result.seconds));
  return result;
}

TrainResult train(Decoder<float>& model, const TrainConfig& config, const WindowSampler& train_data,
                  const WindowSampler* holdout, const TrainOptions& options) {
  std::unique_ptr<TrainEngine> engine = make_cpu_engine(model, adamw_config(config));
  TrainData data;
  data.next = [&](int64_t step, int64_t micro) { return train_data.random_batch(config.batch_size, step, micro); };
  TrainOptions o = options;
  if (holdout && !o.evaluate)
    o.evaluate = [&](TrainEngine&) { return evaluate(model, *holdout, config.batch_size, config.eval_batches); };
  return train(model, *engine, config, data, o);
}

}  // namespace adept
