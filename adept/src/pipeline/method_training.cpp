#include "pipeline/method_training.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "core/atomic_file.hpp"
#include "method/decoupled_lr.hpp"
#include "method/expand.hpp"

namespace adept {

namespace fs = std::filesystem;

namespace {

std::string layer_list(const std::vector<int64_t>& layers) {
  std::string s;
  for (int64_t l : layers) s += (s.empty() ? "" : ",") + std::to_string(l);
  return s;
}

// ADEPT's state across checkpoints: the multipliers in force and their history.
nlohmann::json multiplier_state(const ParameterStore<float>& P, const std::vector<Series>& history) {
  nlohmann::json tensors = nlohmann::json::object();
  for (int i = 0; i < P.size(); ++i) {
    const ParameterInfo& p = P.info(i);
    if (p.grad_offset < 0) continue;
    tensors[p.name] = {{"m", p.lr_multiplier}, {"rows", p.row_multiplier}};
  }
  nlohmann::json h = nlohmann::json::array();
  for (const Series& s : history) h.push_back({{"label", s.label}, {"x", s.x}, {"y", s.y}});
  return {{"tensors", tensors}, {"history", h}};
}

void restore_multiplier_state(const nlohmann::json& j, ParameterStore<float>& P, std::vector<Series>& history) {
  for (const auto& [name, t] : j.at("tensors").items()) {
    ParameterInfo& p = P.info(P.index(name));
    p.lr_multiplier = t.at("m").get<float>();
    p.row_multiplier = t.at("rows").get<std::vector<float>>();
  }
  history.clear();
  for (const nlohmann::json& s : j.at("history"))
    history.push_back({s.at("label").get<std::string>(), s.at("x").get<std::vector<double>>(),
                       s.at("y").get<std::vector<double>>()});
}

// "model.layers.4.self_attn.q_proj.weight" → "4.self_attn.q_proj".
std::string unit_label(std::string name) {
  if (name.starts_with("model.layers.")) name = name.substr(13);
  if (name.ends_with(".weight")) name.resize(name.size() - 7);
  return name;
}

}  // namespace

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

MethodModel prepare_method_model(const std::string& method, const Decoder<float>& base,
                                 const LayerImportance* importance, const RunConfig& rc) {
  const int64_t L = base.config().num_hidden_layers;
  const int64_t k = rc.expand.after.empty() ? rc.expand.layers : int64_t(rc.expand.after.size());
  if (method == "full") {
    MethodModel m{base, "all parameters", {}};
    for (int i = 0; i < m.model.params().size(); ++i) m.model.params().set_trainable(i, true);
    m.model.params().allocate_gradients();
    return m;
  }
  if (method == "freeze") {
    std::vector<int64_t> layers = rc.freeze.layers;
    for (int64_t l = L - k; layers.empty() && l < L; ++l) layers.push_back(l);  // default: the top k layers
    MethodModel m{base, "original layers " + layer_list(layers), {}};
    train_only_layers(m.model, layers);
    return m;
  }
  if (!is_known_method(method)) fail("method '{}' is unknown (known: {})", method, fmt::join(known_methods(), ", "));
  std::vector<int64_t> after;
  if (method == "llama-pro" || method == "adept-uniform") after = uniform_expansion_layers(L, k);
  else if (!rc.expand.after.empty()) after = rc.expand.after;
  else if (importance) after = least_important_layers(*importance, k);
  else fail("adept: needs the layer importance of the base model (or expand.after)");
  Expansion e;
  MethodModel m{expand_layers(base, after, &e), "", after};
  train_only_layers(m.model, e.inserted);
  m.trained = fmt::format("copies of {} inserted at {}", layer_list(after), layer_list(e.inserted));
  return m;
}

MethodTraining train_method(const std::string& method, MethodModel& m, const StudyData& data, const RunConfig& rc,
                            const std::string& dir, bool show_progress, int64_t stop_after,
                            std::shared_ptr<dist::Communicator> communicator) {
  const int rank = communicator ? communicator->rank() : 0;
  const int world = communicator ? communicator->world() : 1;
  make_directories(dir);
  MethodTraining r;
  r.name = method;
  r.trained = m.trained;
  Decoder<float>& model = m.model;
  r.total = model.params().total_numel();
  r.trainable = model.params().trainable_numel();

  const TrainConfig& tc = rc.train;
  std::vector<LoaderSource> sources;
  add_loader_sources(sources, data.domain, 1.0 - rc.data.replay);
  add_loader_sources(sources, data.general, rc.data.replay);
  // One process: the PackedLoader; data parallel: each rank's rows of the same batches.
  std::optional<PackedLoader> loader;
  std::optional<dist::ShardedLoader> sharded;
  if (world > 1) sharded.emplace(std::move(sources), data.loader_config(tc), rank, world);
  else loader.emplace(std::move(sources), data.loader_config(tc));
  const int64_t max_tokens =
      std::max({tc.batch_size, rc.adept.probe_batch_size, rc.eval.batch_size}) * tc.seq_len;
  std::unique_ptr<TrainEngine> engine = make_train_engine(model, tc, max_tokens, tc.seq_len, communicator);

  TrainOptions to;
  to.show_progress = show_progress && rank == 0;
  to.rank = rank;
  to.world = world;
  to.label = fmt::format("{:>9}", method);
  to.metrics_path = (fs::path(dir) / "metrics.jsonl").string();
  to.evaluate = [&](TrainEngine& e) {
    return held_out_loss(data.domain_holdout, tc.eval_batches, [&](const TokenBatch& b) { return e.loss(b); });
  };
  to.checkpoint.dir = (fs::path(dir) / "checkpoints").string();
  to.checkpoint.every = tc.checkpoint_every;
  to.checkpoint.resume = rc.run.resume;
  to.checkpoint.key = weights_fingerprint(model.params()) + "|" + method + "|" + describe_training(tc) + "|" +
                      data.domain.fingerprint + "|" + data.general.fingerprint +
                      fmt::format("|{}|{}|{}|{}|{}|{}|{}|{}", rc.data.replay, rc.data.holdout_fraction,
                                  rc.data.split_seed, rc.adept.reestimate_every, rc.adept.probe_batches,
                                  rc.adept.probe_batch_size, rc.adept.granularity, rc.adept.inverted) +
                      fmt::format("|{}|{}", rc.adept.decoupled, rc.eval.batch_size);
  to.stop_after = stop_after;

  std::ofstream lr_log;
  std::vector<TokenBatch> probe;
  const std::string lr_log_path = (fs::path(dir) / "lr_multipliers.jsonl").string();
  // Decoupled learning rates: ADEPT (unless adept.decoupled = false) and the
  // uniform-expansion ablation; adept-one-lr is ADEPT's expansion without them.
  if ((method == "adept" && rc.adept.decoupled) || method == "adept-uniform") {
    probe = probe_batches(data, tc.seq_len, rc.adept.probe_batches, rc.adept.probe_batch_size, tc.seed + 7);
    UnitGranularity granularity = parse_unit_granularity(rc.adept.granularity);
    to.checkpoint.save_method = [&] { return multiplier_state(model.params(), r.multipliers); };
    to.checkpoint.restore_method = [&](const nlohmann::json& j) {
      restore_multiplier_state(j, model.params(), r.multipliers);
      engine->push_multipliers();
    };
    to.before_step = [&, granularity](int64_t step, TrainEngine& e) {
      if (step % rc.adept.reestimate_every != 0) return;
      if (rank == 0 && !lr_log.is_open()) {
        // Opened at the first estimate: a resumed run has restored its history by then.
        if (step > 0) truncate_jsonl_log(lr_log_path, step);
        lr_log.open(lr_log_path, step > 0 ? std::ios::app : std::ios::trunc);
      }
      e.pull_weights();  // |W| of the current weights
      std::vector<UnitEstimate> units =
          estimate_unit_importance(model, probe, granularity, [&](const TokenBatch& b) { e.gradient(b); });
      compute_lr_multipliers(units, rc.adept.inverted);
      apply_lr_multipliers(model.params(), units);
      e.push_multipliers();
      // The log has every unit; the history (plot, report) one line per tensor: its
      // multiplier, or with row granularity the mean over its rows.
      std::map<int, std::pair<double, int64_t>> per_tensor;
      for (const UnitEstimate& est : units) {
        const std::string& name = model.params().info(est.tensor).name;
        nlohmann::json j = {{"step", step}, {"unit", name}, {"importance", est.importance}, {"multiplier", est.multiplier}};
        if (est.row >= 0) j["row"] = est.row;
        lr_log << j.dump() << '\n';
        auto& [sum, n] = per_tensor[est.tensor];
        sum += est.multiplier, ++n;
      }
      lr_log.flush();
      if (r.multipliers.empty())
        for (const auto& [tensor, mean] : per_tensor) r.multipliers.push_back({unit_label(model.params().info(tensor).name), {}, {}});
      size_t k = 0;
      for (const auto& [tensor, mean] : per_tensor) {
        r.multipliers.at(k).x.push_back(double(step));
        r.multipliers.at(k++).y.push_back(mean.first / double(mean.second));
      }
    };
  }
  r.train = train(model, *engine, tc, sharded ? loader_train_data(*sharded) : loader_train_data(*loader), to);
  if (engine->name() == "cpu") r.peak_memory_mb = peak_rss_mb(), r.memory_kind = "RSS";
  else r.peak_memory_mb = engine->peak_device_mb(), r.memory_kind = "GPU";
  return r;
}

nlohmann::json method_training_json(const MethodTraining& t) {
  nlohmann::json steps = nlohmann::json::array(), evals = nlohmann::json::array();
  for (const StepRecord& s : t.train.steps) steps.push_back({s.step, s.loss, s.lr, s.grad_norm, s.tokens_per_second, s.skipped});
  for (const EvalRecord& e : t.train.evals) evals.push_back({e.step, e.loss});
  nlohmann::json h = nlohmann::json::array();
  for (const Series& s : t.multipliers) h.push_back({{"label", s.label}, {"x", s.x}, {"y", s.y}});
  return {{"name", t.name}, {"trained", t.trained}, {"trainable", t.trainable}, {"total", t.total},
          {"steps", steps}, {"evals", evals}, {"tokens", t.train.tokens}, {"skipped_steps", t.train.skipped_steps},
          {"seconds", t.train.seconds}, {"peak_memory_mb", t.peak_memory_mb}, {"memory_kind", t.memory_kind},
          {"multipliers", h}};
}

MethodTraining method_training_from_json(const nlohmann::json& j) {
  MethodTraining t;
  t.name = j.at("name").get<std::string>();
  t.trained = j.at("trained").get<std::string>();
  t.trainable = j.at("trainable").get<int64_t>();
  t.total = j.at("total").get<int64_t>();
  for (const nlohmann::json& s : j.at("steps"))
    t.train.steps.push_back({s.at(0).get<int64_t>(), s.at(1).get<double>(), s.at(2).get<double>(),
                             s.at(3).get<double>(), s.at(4).get<double>(), s.at(5).get<bool>()});
  for (const nlohmann::json& e : j.at("evals")) t.train.evals.push_back({e.at(0).get<int64_t>(), e.at(1).get<double>()});
  t.train.tokens = j.at("tokens").get<int64_t>();
  t.train.skipped_steps = j.at("skipped_steps").get<int64_t>();
  t.train.seconds = j.at("seconds").get<double>();
  t.peak_memory_mb = j.at("peak_memory_mb").get<double>();
  t.memory_kind = j.at("memory_kind").get<std::string>();
  for (const nlohmann::json& s : j.at("multipliers"))
    t.multipliers.push_back({s.at("label").get<std::string>(), s.at("x").get<std::vector<double>>(),
                             s.at("y").get<std::vector<double>>()});
  return t;
}

}  // namespace adept
