#include "pipeline/run_pipeline.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "core/atomic_file.hpp"
#include "core/embedded.hpp"
#include "data/content_hash.hpp"
#include "method/layer_importance.hpp"
#include "pipeline/evaluation.hpp"
#include "pipeline/method_training.hpp"
#include "pipeline/model_files.hpp"
#include "pipeline/study_data.hpp"
#include "report/svg_plot.hpp"
#include "train/report.hpp"

namespace adept {

namespace fs = std::filesystem;

namespace {

// --- Stages -----------------------------------------------------------------------
// A finished stage leaves <file> = {"key": ..., "result": ...}, written atomically after
// everything else the stage writes. The key hashes every setting and input the stage
// depends on, so a rerun skips a stage only when it would redo the same work.

std::string stage_key(const std::string& description) {
  Fnv1a64 h;
  h.update(description);
  return hash_string(h.value());
}

std::optional<nlohmann::json> finished_stage(const RunConfig& rc, const fs::path& file, const std::string& key) {
  if (!rc.run.resume || !fs::exists(file)) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(read_text_source(file.string()), nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("key", "") != key || !j.contains("result")) return std::nullopt;
  return j["result"];
}

void finish_stage(const fs::path& file, const std::string& key, const nlohmann::json& result) {
  make_directories(file.parent_path().string());
  write_file_atomic(file.string(), nlohmann::json({{"key", key}, {"result", result}}).dump(1) + "\n");
}

std::string describe(const ModelConfig& m, double init_std) {
  return fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", m.model_type, m.vocab_size, m.hidden_size,
                     m.intermediate_size, m.num_hidden_layers, m.num_attention_heads, m.num_key_value_heads,
                     m.head_dim, m.max_position_embeddings, m.rms_norm_eps, m.rope_theta, m.tie_word_embeddings,
                     m.attention_bias, init_std);
}

std::string describe(const EvalConfig& e) {
  auto file = [](const std::string& p) { return p.empty() ? std::string() : p + "=" + hash_file(p); };
  return fmt::format("{}|{}|{}|{}|{}|{}|{}", e.batches, e.batch_size, file(e.general_mc), file(e.domain_mc),
                     file(e.domain_qa), e.shots, e.max_new_tokens);
}

std::string format_ppl(double loss, double base_loss) {
  if (!std::isfinite(loss)) return "n/a";
  double ppl = std::exp(loss), base = std::exp(base_loss);
  return std::isfinite(base_loss) ? fmt::format("{:.3f} ({:+.1f}%)", ppl, 100.0 * (ppl / base - 1.0))
                                  : fmt::format("{:.3f}", ppl);
}

// Extra report columns for the benchmarks that were run.
std::string benchmark_cells(const Scores& h, const Benchmarks& b) {
  std::string s;
  auto cell = [&](bool present, double v) {
    if (present) s += std::isfinite(v) ? fmt::format(" {:.1f}% |", 100.0 * v) : std::string(" — |");
  };
  cell(!b.general_mc.empty(), h.general_mc);
  cell(!b.domain_mc.empty(), h.domain_mc);
  cell(!b.domain_qa.empty(), h.domain_qa);
  return s;
}

struct MethodOutcome {
  MethodTraining training;
  Scores scores;
};

int64_t eval_max_tokens(const RunConfig& rc) {
  return std::max({rc.train.batch_size, rc.eval.batch_size, rc.probe.batch_size, rc.adept.probe_batch_size}) *
         rc.train.seq_len;
}

// Held-out and benchmark scores of `model` on the run's backend.
Scores score_model(Decoder<float>& model, const StudyData& data, const RunConfig& rc, const Benchmarks& bench) {
  // Multiple choice runs on a GPU engine when there is one: rows up to mc tokens.
  const int64_t mc = bench.general_mc.empty() && bench.domain_mc.empty()
                         ? 0
                         : benchmark_row_tokens(rc.train.backend, model.config(), rc.train.seq_len);
  std::unique_ptr<TrainEngine> engine = make_inference_engine(model, rc.train, std::max(eval_max_tokens(rc), mc),
                                                              std::max(rc.train.seq_len, mc));
  return evaluate_scores(model, [&](const TokenBatch& b) { return engine->loss(b); }, data, rc.eval, bench,
                         *data.tokenizer.named.tokenizer, mc);
}

}  // namespace

std::string run_pipeline(const RunConfig& rc, const PipelineOptions& options) {
  const fs::path out = rc.run.out_dir;
  make_directories(out.string());
  auto t0 = std::chrono::steady_clock::now();
  const bool progress = options.show_progress;

  // Data: both corpora prepared (or reused) under out/data, held-out documents split off.
  StudyData data = open_study_data(rc, out.string(), progress);
  const std::string data_key = data.general.fingerprint + data.domain.fingerprint + data.tokenizer.named.identity.hash +
                               data.tokenizer.named.identity.kind +
                               fmt::format("|{}|{}", rc.data.holdout_fraction, rc.data.split_seed);
  fmt::print("data     general: {} documents, {} tokens ({} held out); domain: {} documents, {} tokens ({} held out); "
             "tokenizer {} (vocab {})\n",
             data.general.documents, data.general.tokens, data.general_holdout.tokens, data.domain.documents,
             data.domain.tokens, data.domain_holdout.tokens, data.tokenizer.name,
             data.tokenizer.named.identity.vocab_size);
  std::fflush(stdout);
  Benchmarks bench = load_benchmarks(rc.eval);

  // Stage 1: the base model — an HF checkpoint, or pretrained here on general text.
  HfModelConfig base_hf;
  std::optional<Decoder<float>> base_model;
  std::optional<TrainResult> pretrain;
  std::string base_key;
  if (!rc.run.base.empty()) {
    base_model.emplace(load_hf_model(rc.run.base, &base_hf));
    for (const char* section : {"model", "pretrain"})
      if (rc.user_sections.count(section))
        fmt::print("note     [{}] of {} is not used: the base model is {} (its config.json sets the architecture)\n",
                   section, rc.source, rc.run.base);
    check_vocabulary(base_model->config().vocab_size, data.tokenizer, rc.run.base + "/config.json");
    if (rc.train.seq_len > base_model->config().max_position_embeddings)
      fail("{}: train.seq_len ({}) exceeds max_position_embeddings ({}) of {}/config.json", rc.source, rc.train.seq_len,
           base_model->config().max_position_embeddings, rc.run.base);
    // The checkpoint's files by name, size and modification time (hashing the weights
    // of a large model would take longer than the check is worth).
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(rc.run.base))
      if (e.is_regular_file())
        files.push_back(fmt::format("{}:{}:{}", e.path().filename().string(), e.file_size(),
                                    e.last_write_time().time_since_epoch().count()));
    std::sort(files.begin(), files.end());
    base_key = stage_key("hf|" + fs::absolute(rc.run.base).string() + "|" + fmt::format("{}", fmt::join(files, "|")));
    fmt::print("base     {} | {} {} layers, hidden {}, {:.2f}M params\n", rc.run.base, base_model->config().model_type,
               base_model->config().num_hidden_layers, base_model->config().hidden_size,
               double(base_model->params().total_numel()) / 1e6);
  } else {
    check_vocabulary(rc.model.vocab_size, data.tokenizer, rc.source + ": [model] vocab_size");
    base_hf = HfModelConfig(rc.model);
    base_hf.torch_dtype = "float32";
    base_key = stage_key("scratch|" + describe(rc.model, rc.init_std) + "|" + describe_training(rc.pretrain) + "|" + data_key);
    const fs::path base_dir = out / "base";
    if (auto done = finished_stage(rc, base_dir / "done.json", base_key); done && hf_model_exists((base_dir / "model").string())) {
      base_model.emplace(load_hf_model((base_dir / "model").string()));
      pretrain = method_training_from_json(*done).train;
      fmt::print("base     reusing {} (pretrained {} steps)\n", (base_dir / "model").string(), rc.pretrain.steps);
    } else {
      base_model.emplace(rc.model);
      base_model->init_random(rc.pretrain.seed, rc.init_std);
      Decoder<float>& base = *base_model;
      fmt::print("base     {} | {} layers, hidden {}, heads {}/{}, {:.2f}M params: pretraining {} steps on general "
                 "text ({} backend)\n",
                 base.config().model_type, base.config().num_hidden_layers, base.config().hidden_size,
                 base.config().num_attention_heads, base.config().num_key_value_heads,
                 double(base.params().total_numel()) / 1e6, rc.pretrain.steps, rc.pretrain.backend);
      std::fflush(stdout);
      make_directories(base_dir.string());
      std::vector<LoaderSource> sources;
      add_loader_sources(sources, data.general, 1.0);
      PackedLoader loader(std::move(sources), data.loader_config(rc.pretrain));
      std::unique_ptr<TrainEngine> engine =
          make_train_engine(base, rc.pretrain, std::max(rc.pretrain.batch_size * rc.pretrain.seq_len, eval_max_tokens(rc)),
                            std::max(rc.pretrain.seq_len, rc.train.seq_len));
      TrainOptions po;
      po.show_progress = progress;
      po.label = " pretrain";
      po.metrics_path = (base_dir / "metrics.jsonl").string();
      po.evaluate = [&](TrainEngine& e) {
        return held_out_loss(data.general_holdout, rc.pretrain.eval_batches, [&](const TokenBatch& b) { return e.loss(b); });
      };
      po.checkpoint.dir = (base_dir / "checkpoints").string();
      po.checkpoint.every = rc.pretrain.checkpoint_every;
      po.checkpoint.resume = rc.run.resume;
      po.checkpoint.key = base_key;
      pretrain = train(base, *engine, rc.pretrain, loader_train_data(loader), po);
      // float32, whatever run.save_dtype says: every method starts from exactly this base.
      save_hf_model((base_dir / "model").string(), base, base_hf, data.tokenizer.checkpoint_source(), DType::F32);
      MethodTraining record;
      record.name = "pretrain";
      record.train = *pretrain;
      record.total = record.trainable = base.params().total_numel();
      finish_stage(base_dir / "done.json", base_key, method_training_json(record));
      fs::remove_all(base_dir / "checkpoints");
    }
  }
  Decoder<float>& base = *base_model;

  // Stage 2: the base model's scores.
  const std::string eval_desc = describe(rc.eval) + "|" + data_key + "|" + fmt::format("{}", rc.train.seq_len);
  const std::string base_eval_key = stage_key(base_key + "|eval|" + eval_desc);
  Scores before;
  if (auto done = finished_stage(rc, out / "base" / "eval.json", base_eval_key)) {
    before = scores_from_json(*done);
  } else {
    before = score_model(base, data, rc, bench);
    finish_stage(out / "base" / "eval.json", base_eval_key, scores_json(before));
  }
  fmt::print("base     held-out loss: general {:.3f}, domain {:.3f}\n", before.general, before.domain);

  // Stage 3: layer importance on general probe data.
  const std::string probe_key = stage_key(base_key + "|probe|" + rc.probe.method + fmt::format("|{}|{}|{}", rc.probe.batches, rc.probe.batch_size, rc.train.seq_len) + data_key);
  LayerImportance importance;
  importance.method = parse_importance_method(rc.probe.method);
  if (auto done = finished_stage(rc, out / "layer_importance.json", probe_key)) {
    importance.base_loss = done->at("base_loss").get<double>();
    importance.score = done->at("score").get<std::vector<double>>();
    importance.normalized = done->at("normalized").get<std::vector<double>>();
  } else {
    std::vector<TokenBatch> probe = probe_batches(data, rc.train.seq_len, rc.probe.batches, rc.probe.batch_size, 3);
    std::unique_ptr<TrainEngine> engine = make_inference_engine(base, rc.train, eval_max_tokens(rc), rc.train.seq_len);
    importance = probe_layer_importance(base, probe, importance.method,
                                        [&](const TokenBatch& b, const std::vector<bool>& skip) { return engine->loss(b, skip); });
    finish_stage(out / "layer_importance.json", probe_key,
                 {{"method", rc.probe.method}, {"base_loss", importance.base_loss}, {"score", importance.score},
                  {"normalized", importance.normalized}});
  }
  fmt::print("probe    {} importance per layer:", rc.probe.method);
  for (double s : importance.normalized) fmt::print(" {:.2f}", s);
  fmt::print("\n");
  std::fflush(stdout);

  // Stage 4: each method, same domain data and token budget; each trained model saved.
  const DType save_dtype = resolve_save_dtype(rc.run.save_dtype, base_hf);
  std::vector<MethodOutcome> results;
  for (const std::string& method : rc.run.methods) {
    const fs::path dir = out / method;
    std::string key = base_key + "|" + method + "|" + describe_training(rc.train) + "|" + data_key +
                      fmt::format("|{}|{}|{}", rc.data.replay, rc.expand.layers, fmt::join(rc.expand.after, ","));
    if (method == "adept" || method == "adept-one-lr" || method == "adept-uniform")
      key += probe_key + fmt::format("|{}|{}|{}|{}|{}|{}", rc.adept.reestimate_every, rc.adept.probe_batches,
                                     rc.adept.probe_batch_size, rc.adept.granularity, rc.adept.inverted,
                                     rc.adept.decoupled);
    if (method == "freeze") key += fmt::format("|{}", fmt::join(rc.freeze.layers, ","));
    key = stage_key(key + "|" + rc.run.save_dtype);
    MethodOutcome r;
    std::optional<Decoder<float>> trained;
    if (auto done = finished_stage(rc, dir / "done.json", key); done && hf_model_exists((dir / "model").string())) {
      r.training = method_training_from_json(*done);
      fmt::print("{:>9} reusing {}\n", method, (dir / "model").string());
    } else {
      MethodModel m = prepare_method_model(method, base, &importance, rc);
      r.training = train_method(method, m, data, rc, dir.string(), progress);
      save_hf_model((dir / "model").string(), m.model, base_hf, data.tokenizer.checkpoint_source(), save_dtype);
      finish_stage(dir / "done.json", key, method_training_json(r.training));
      fs::remove_all(dir / "checkpoints");
      trained.emplace(std::move(m.model));
    }
    const std::string eval_key = stage_key(key + "|eval|" + eval_desc);
    if (auto done = finished_stage(rc, dir / "eval.json", eval_key)) {
      r.scores = scores_from_json(*done);
    } else {
      if (!trained) trained.emplace(load_hf_model((dir / "model").string()));
      r.scores = score_model(*trained, data, rc, bench);
      finish_stage(dir / "eval.json", eval_key, scores_json(r.scores));
    }
    fmt::print("{:>9} held-out loss: general {:.3f}, domain {:.3f}\n", method, r.scores.general, r.scores.domain);
    std::fflush(stdout);
    results.push_back(std::move(r));
  }

  // Report.
  std::string md = "# adept run report\n\n";
  std::string base_words =
      rc.run.base.empty()
          ? fmt::format("pretrained {} steps on the general corpus", rc.pretrain.steps)
          : fmt::format("loaded from `{}`", rc.run.base);
  md += fmt::format("Config: `{}`. Base: {} ({} layers, {:.2f}M parameters), {}. Continual pretraining: {} steps × {} "
                    "sequences × {} tokens on the domain corpus{} for every method ({} backend). Perplexities are per "
                    "token of tokenizer `{}` on held-out documents; the change is against the base model.\n\n",
                    rc.source, base.config().model_type, base.config().num_hidden_layers,
                    double(base.params().total_numel()) / 1e6, base_words, rc.train.steps,
                    rc.train.batch_size * rc.train.grad_accum, rc.train.seq_len,
                    rc.data.replay > 0 ? fmt::format(" ({:.0f}% general replay)", 100 * rc.data.replay) : "",
                    rc.train.backend, data.tokenizer.name);
  std::string extra_head, extra_rule;
  for (auto [present, name] : {std::pair{!bench.general_mc.empty(), "general MC acc"},
                               std::pair{!bench.domain_mc.empty(), "domain MC acc"},
                               std::pair{!bench.domain_qa.empty(), "domain exact match"}})
    if (present) extra_head += fmt::format(" {} |", name), extra_rule += "---|";
  const bool gpu = rc.train.backend == "cuda";
  md += "| method | trained | trainable params | general ppl (forgetting) | domain ppl (gain) |" + extra_head +
        " wall time | tokens/s | " + (gpu ? "peak GPU memory" : "peak RSS") + " |\n";
  md += "|---|---|---|---|---|" + extra_rule + "---|---|---|\n";
  if (pretrain)
    md += fmt::format("| base | — | — | {} | {} |{} {:.1f} s (pretrain) | {:.0f} | — |\n", format_ppl(before.general, NAN),
                      format_ppl(before.domain, NAN), benchmark_cells(before, bench), pretrain->seconds,
                      double(pretrain->tokens) / std::max(pretrain->seconds, 1e-9));
  else
    md += fmt::format("| base | — | — | {} | {} |{} — | — | — |\n", format_ppl(before.general, NAN),
                      format_ppl(before.domain, NAN), benchmark_cells(before, bench));
  for (const MethodOutcome& r : results) {
    const MethodTraining& t = r.training;
    md += fmt::format("| {} | {} | {:.1f}% of {:.2f}M | {} | {} |{} {:.1f} s | {:.0f} | {:.0f} MB |\n", t.name,
                      t.trained, 100.0 * double(t.trainable) / double(t.total), double(t.total) / 1e6,
                      format_ppl(r.scores.general, before.general), format_ppl(r.scores.domain, before.domain),
                      benchmark_cells(r.scores, bench), t.train.seconds,
                      double(t.train.tokens) / std::max(t.train.seconds, 1e-9), t.peak_memory_mb);
  }
  md += gpu ? "\nPeak GPU memory: the CUDA decoder's device arena, or the device memory in use (cudaMemGetInfo) "
              "during its first steps when that is larger.\n\n"
            : "\nPeak RSS is the process's high-water mark when the method finished (methods run in order; a "
              "method reused from an earlier run keeps the figure of that run).\n\n";
  md += "Trained models (Hugging Face checkpoints): ";
  for (const MethodOutcome& r : results) md += fmt::format("`{}/model` ", r.training.name);
  md += "\n\n![domain training loss](loss_curves.svg)\n![layer importance](layer_importance.svg)\n";

  std::vector<Series> curves;
  for (const MethodOutcome& r : results) {
    Series s{r.training.name, {}, {}};
    for (const StepRecord& st : r.training.train.steps) s.x.push_back(double(st.step)), s.y.push_back(st.loss);
    curves.push_back(std::move(s));
  }
  write_file_atomic((out / "loss_curves.svg").string(), svg_line_chart("Domain training loss", "step", "loss", curves));
  std::vector<std::string> labels;
  std::vector<bool> chosen(importance.score.size(), false);
  for (size_t l = 0; l < importance.score.size(); ++l) labels.push_back(std::to_string(l));
  int64_t k = rc.expand.after.empty() ? rc.expand.layers : int64_t(rc.expand.after.size());
  for (int64_t l : rc.expand.after.empty() ? least_important_layers(importance, k) : rc.expand.after) chosen.at(l) = true;
  write_file_atomic((out / "layer_importance.svg").string(),
                    svg_bar_chart(fmt::format("Layer importance ({})", rc.probe.method), "layer",
                                  "normalised importance", labels, importance.normalized, chosen));
  for (const MethodOutcome& r : results)
    if (!r.training.multipliers.empty()) {
      const std::string& name = r.training.name;
      std::string file = name == "adept" ? "lr_multipliers.svg" : "lr_multipliers_" + name + ".svg";
      write_file_atomic((out / file).string(), svg_line_chart(fmt::format("{} learning-rate multipliers", name), "step",
                                                              "multiplier", r.training.multipliers));
      md += fmt::format("![{} learning-rate multipliers]({})\n", name, file);
    }

  nlohmann::json results_json;
  results_json["base"] = scores_json(before);
  if (pretrain) results_json["base"]["pretrain"] = train_result_json(*pretrain);
  results_json["tokenizer"] = data.tokenizer.name;
  for (const MethodOutcome& r : results) {
    const MethodTraining& t = r.training;
    nlohmann::json j = scores_json(r.scores);
    j["trained"] = t.trained;
    j["trainable_params"] = t.trainable;
    j["total_params"] = t.total;
    j["train"] = train_result_json(t.train);
    j[t.memory_kind == "GPU" ? "peak_gpu_memory_mb" : "peak_rss_mb"] = t.peak_memory_mb;
    j["model"] = (out / t.name / "model").string();
    results_json["methods"][t.name] = j;
  }
  results_json["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_file_atomic((out / "results.json").string(), results_json.dump(2) + "\n");
  write_file_atomic((out / "report.md").string(), md);
  fmt::print("\n{}", md.substr(md.find("| method")));
  return (out / "report.md").string();
}

}  // namespace adept
