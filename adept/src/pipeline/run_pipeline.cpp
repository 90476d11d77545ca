#include "pipeline/run_pipeline.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <set>

#include "core/atomic_file.hpp"
#include "eval/benchmarks.hpp"
#include "method/decoupled_lr.hpp"
#include "method/expand.hpp"
#include "method/layer_importance.hpp"
#include "pipeline/text_corpus.hpp"
#include "report/svg_plot.hpp"
#include "train/report.hpp"
#include "train/trainer.hpp"

namespace adept {

namespace {

struct HeldOut {
  double general = NAN, domain = NAN;            // held-out loss
  double general_mc = NAN, domain_mc = NAN;      // multiple-choice accuracy
  double domain_qa = NAN;                        // exact match
};

// Benchmark items, split into k-shot examples and the evaluated rest.
struct Benchmarks {
  std::vector<MultipleChoiceItem> general_mc, domain_mc;
  std::vector<GenerationItem> domain_qa;
};

std::vector<int32_t> encode_bytes(const std::string& text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string decode_bytes(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += char(id);
  return s;
}

Benchmarks load_benchmarks(const EvalConfig& e) {
  Benchmarks b;
  auto check = [&](size_t n, const std::string& path) {
    if (int64_t(n) <= e.shots) fail("{}: {} items, but eval.shots = {} leaves none to evaluate", path, n, e.shots);
  };
  if (!e.general_mc.empty()) b.general_mc = load_multiple_choice_jsonl(e.general_mc), check(b.general_mc.size(), e.general_mc);
  if (!e.domain_mc.empty()) b.domain_mc = load_multiple_choice_jsonl(e.domain_mc), check(b.domain_mc.size(), e.domain_mc);
  if (!e.domain_qa.empty()) b.domain_qa = load_generation_jsonl(e.domain_qa), check(b.domain_qa.size(), e.domain_qa);
  return b;
}

template <typename Item>
std::pair<std::vector<Item>, std::vector<Item>> split_shots(const std::vector<Item>& items, int64_t shots) {
  return {std::vector<Item>(items.begin() + shots, items.end()), std::vector<Item>(items.begin(), items.begin() + shots)};
}

struct MethodResult {
  std::string name;
  std::string layers;  // what was trained, in words
  int64_t trainable = 0, total = 0;
  HeldOut after;
  TrainResult train;
  double peak_rss_mb = 0;
  std::vector<Series> multipliers;  // ADEPT: multiplier of each unit over time
};

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

HeldOut evaluate_all(Decoder<float>& model, const TextCorpus& general, const TextCorpus& domain,
                     const EvalConfig& eval, const Benchmarks& bench) {
  HeldOut h;
  if (general.holdout) h.general = evaluate(model, *general.holdout, eval.batch_size, eval.batches);
  if (domain.holdout) h.domain = evaluate(model, *domain.holdout, eval.batch_size, eval.batches);
  const int shots = int(eval.shots);
  if (!bench.general_mc.empty()) {
    auto [items, examples] = split_shots(bench.general_mc, shots);
    h.general_mc = evaluate_multiple_choice(model, items, examples, shots, encode_bytes).acc;
  }
  if (!bench.domain_mc.empty()) {
    auto [items, examples] = split_shots(bench.domain_mc, shots);
    h.domain_mc = evaluate_multiple_choice(model, items, examples, shots, encode_bytes).acc;
  }
  if (!bench.domain_qa.empty()) {
    auto [items, examples] = split_shots(bench.domain_qa, shots);
    h.domain_qa = evaluate_exact_match(model, items, examples, shots, eval.max_new_tokens, encode_bytes, decode_bytes, -1)
                      .exact_match;
  }
  return h;
}

nlohmann::json held_out_json(const HeldOut& h) {
  nlohmann::json j = {{"general_loss", h.general}, {"domain_loss", h.domain}};
  if (std::isfinite(h.general_mc)) j["general_mc_acc"] = h.general_mc;
  if (std::isfinite(h.domain_mc)) j["domain_mc_acc"] = h.domain_mc;
  if (std::isfinite(h.domain_qa)) j["domain_qa_exact_match"] = h.domain_qa;
  return j;
}

// Extra report columns for the benchmarks that were run.
std::string benchmark_cells(const HeldOut& h, const Benchmarks& b) {
  std::string s;
  auto cell = [&](bool present, double v) {
    if (present) s += std::isfinite(v) ? fmt::format(" {:.1f}% |", 100.0 * v) : std::string(" — |");
  };
  cell(!b.general_mc.empty(), h.general_mc);
  cell(!b.domain_mc.empty(), h.domain_mc);
  cell(!b.domain_qa.empty(), h.domain_qa);
  return s;
}

std::vector<TokenBatch> probe_batches(const TextCorpus& general, int64_t batches, int64_t batch_size, int64_t salt) {
  std::vector<TokenBatch> out;
  for (int64_t i = 0; i < batches; ++i) out.push_back(general.train->random_batch(batch_size, -1 - i, salt));
  return out;
}

std::string layer_list(const std::vector<int64_t>& layers) {
  std::string s;
  for (int64_t l : layers) s += (s.empty() ? "" : ",") + std::to_string(l);
  return s;
}

MethodResult run_method(const std::string& method, const Decoder<float>& base, const LayerImportance& importance,
                        const TextCorpus& general, const TextCorpus& domain, const Benchmarks& bench,
                        const RunConfig& rc, const std::string& out_dir, const PipelineOptions& options) {
  const int64_t L = base.config().num_hidden_layers;
  const int64_t k = rc.expand.after.empty() ? rc.expand.layers : int64_t(rc.expand.after.size());
  MethodResult r;
  r.name = method;
  Decoder<float> model = base;
  Expansion expansion;
  if (method == "full") {
    for (int i = 0; i < model.params().size(); ++i) model.params().set_trainable(i, true);
    model.params().allocate_gradients();
    r.layers = "all parameters";
  } else if (method == "freeze") {
    std::vector<int64_t> layers = rc.freeze.layers;
    for (int64_t l = L - k; layers.empty() && l < L; ++l) layers.push_back(l);  // default: the top k layers
    train_only_layers(model, layers);
    r.layers = "original layers " + layer_list(layers);
  } else {
    std::vector<int64_t> after = method == "llama-pro"        ? uniform_expansion_layers(L, k)
                                 : !rc.expand.after.empty() ? rc.expand.after
                                                            : least_important_layers(importance, k);
    model = expand_layers(base, after, &expansion);
    train_only_layers(model, expansion.inserted);
    r.layers = fmt::format("copies of {} inserted at {}", layer_list(after), layer_list(expansion.inserted));
  }
  r.total = model.params().total_numel();
  r.trainable = model.params().trainable_numel();

  TrainOptions to;
  to.show_progress = options.show_progress;
  to.label = fmt::format("{:>9}", method);
  to.metrics_path = out_dir + "/" + method + ".metrics.jsonl";
  std::ofstream lr_log;
  std::vector<TokenBatch> adept_probe;
  if (method == "adept" && rc.adept.decoupled) {
    lr_log.open(out_dir + "/adept.lr_multipliers.jsonl", std::ios::trunc);
    adept_probe = probe_batches(general, rc.adept.probe_batches, rc.adept.probe_batch_size, 7);
    UnitGranularity granularity = parse_unit_granularity(rc.adept.granularity);
    to.before_step = [&, granularity](int64_t step) {
      if (step % rc.adept.reestimate_every != 0) return;
      std::vector<UnitEstimate> units = estimate_unit_importance(model, adept_probe, granularity);
      compute_lr_multipliers(units, rc.adept.inverted);
      apply_lr_multipliers(model.params(), units);
      bool first = r.multipliers.empty();
      if (first) r.multipliers.resize(units.size());
      for (size_t u = 0; u < units.size(); ++u) {
        const UnitEstimate& e = units[u];
        std::string name = model.params().info(e.tensor).name;
        nlohmann::json j = {{"step", step}, {"unit", name}, {"importance", e.importance}, {"multiplier", e.multiplier}};
        if (e.row >= 0) j["row"] = e.row;
        lr_log << j.dump() << '\n';
        if (first) r.multipliers[u].label = name.substr(name.find('.', 13) + 1) + (e.row >= 0 ? fmt::format("[{}]", e.row) : "");
        r.multipliers[u].x.push_back(double(step));
        r.multipliers[u].y.push_back(e.multiplier);
      }
      lr_log.flush();
    };
  }
  r.train = train(model, rc.train, *domain.train, domain.holdout ? &*domain.holdout : nullptr, to);
  r.after = evaluate_all(model, general, domain, rc.eval, bench);
  r.peak_rss_mb = peak_rss_mb();
  return r;
}

std::string format_ppl(double loss, double base_loss) {
  if (!std::isfinite(loss)) return "n/a";
  double ppl = std::exp(loss), base = std::exp(base_loss);
  return std::isfinite(base_loss) ? fmt::format("{:.3f} ({:+.1f}%)", ppl, 100.0 * (ppl / base - 1.0))
                                  : fmt::format("{:.3f}", ppl);
}

}  // namespace

std::string run_pipeline(const RunConfig& rc, const PipelineOptions& options) {
  if (!rc.run.base.empty())
    fail("run.base '{}': loading a Hugging Face checkpoint is not available in this build yet; leave run.base empty "
         "to pretrain the base model from scratch",
         rc.run.base);
  const std::string out = rc.run.out_dir;
  make_directories(out);
  auto t0 = std::chrono::steady_clock::now();

  TextCorpus general = load_text_corpus("general", rc.data.general, rc.data.holdout_fraction, rc.train.seq_len, rc.train.seed);
  TextCorpus domain = load_text_corpus("domain", rc.data.domain, rc.data.holdout_fraction, rc.train.seq_len, rc.train.seed + 1);
  fmt::print("data     general: {} train / {} held-out tokens; domain: {} / {} ({})\n", general.train_tokens,
             general.holdout_tokens, domain.train_tokens, domain.holdout_tokens, rc.data.tokenizer);

  // Stage 1: the base model. The embedded default pretrains a tiny one on general text.
  Decoder<float> base(rc.model);
  base.init_random(rc.pretrain.seed, rc.init_std);
  fmt::print("base     {} | {} layers, hidden {}, heads {}/{}, {:.2f}M params: pretraining {} steps on general text\n",
             base.config().model_type, base.config().num_hidden_layers, base.config().hidden_size,
             base.config().num_attention_heads, base.config().num_key_value_heads,
             double(base.params().total_numel()) / 1e6, rc.pretrain.steps);
  std::fflush(stdout);
  TrainOptions po;
  po.show_progress = options.show_progress;
  po.label = " pretrain";
  po.metrics_path = out + "/pretrain.metrics.jsonl";
  TrainResult pretrain = train(base, rc.pretrain, *general.train, general.holdout ? &*general.holdout : nullptr, po);
  Benchmarks bench = load_benchmarks(rc.eval);
  HeldOut before = evaluate_all(base, general, domain, rc.eval, bench);
  fmt::print("base     held-out loss: general {:.3f}, domain {:.3f}\n", before.general, before.domain);

  // Stage 2: layer importance on general probe data.
  std::vector<TokenBatch> probe = probe_batches(general, rc.probe.batches, rc.probe.batch_size, 3);
  LayerImportance importance = probe_layer_importance(base, probe, parse_importance_method(rc.probe.method));
  fmt::print("probe    {} importance per layer:", rc.probe.method);
  for (double s : importance.normalized) fmt::print(" {:.2f}", s);
  fmt::print("\n");
  std::fflush(stdout);
  nlohmann::json importance_json = {{"method", rc.probe.method},
                                    {"base_loss", importance.base_loss},
                                    {"score", importance.score},
                                    {"normalized", importance.normalized}};
  write_file_atomic(out + "/layer_importance.json", importance_json.dump(2) + "\n");

  // Stage 3: each method, same domain data and token budget.
  std::vector<MethodResult> results;
  for (const std::string& method : rc.run.methods) {
    results.push_back(run_method(method, base, importance, general, domain, bench, rc, out, options));
    const MethodResult& r = results.back();
    fmt::print("{:>9} held-out loss: general {:.3f}, domain {:.3f}\n", method, r.after.general, r.after.domain);
    std::fflush(stdout);
  }

  // Report.
  std::string md = "# adept run report\n\n";
  md += fmt::format("Config: `{}`. Base: {} ({} layers, {:.2f}M parameters), pretrained {} steps on the general "
                    "corpus. Continual pretraining: {} steps × {} sequences × {} tokens on the domain corpus for every "
                    "method. Perplexities are on held-out text (byte-level); the change is against the base model.\n\n",
                    rc.source, base.config().model_type, base.config().num_hidden_layers,
                    double(base.params().total_numel()) / 1e6, rc.pretrain.steps, rc.train.steps,
                    rc.train.batch_size * rc.train.grad_accum, rc.train.seq_len);
  std::string extra_head, extra_rule;
  for (auto [present, name] : {std::pair{!bench.general_mc.empty(), "general MC acc"},
                               std::pair{!bench.domain_mc.empty(), "domain MC acc"},
                               std::pair{!bench.domain_qa.empty(), "domain exact match"}})
    if (present) extra_head += fmt::format(" {} |", name), extra_rule += "---|";
  md += "| method | trained | trainable params | general ppl (forgetting) | domain ppl (gain) |" + extra_head +
        " wall time | tokens/s | peak RSS |\n";
  md += "|---|---|---|---|---|" + extra_rule + "---|---|---|\n";
  md += fmt::format("| base | — | — | {} | {} |{} {:.1f} s (pretrain) | {:.0f} | — |\n", format_ppl(before.general, NAN),
                    format_ppl(before.domain, NAN), benchmark_cells(before, bench), pretrain.seconds,
                    double(pretrain.tokens) / pretrain.seconds);
  for (const MethodResult& r : results)
    md += fmt::format("| {} | {} | {:.1f}% of {:.2f}M | {} | {} |{} {:.1f} s | {:.0f} | {:.0f} MB |\n", r.name,
                      r.layers, 100.0 * double(r.trainable) / double(r.total), double(r.total) / 1e6,
                      format_ppl(r.after.general, before.general), format_ppl(r.after.domain, before.domain),
                      benchmark_cells(r.after, bench), r.train.seconds, double(r.train.tokens) / r.train.seconds,
                      r.peak_rss_mb);
  md += "\nPeak RSS is the process's high-water mark when the method finished (methods run in order).\n\n";
  md += "![domain training loss](loss_curves.svg)\n![layer importance](layer_importance.svg)\n";

  std::vector<Series> curves;
  for (const MethodResult& r : results) {
    Series s{r.name, {}, {}};
    for (const StepRecord& st : r.train.steps) s.x.push_back(double(st.step)), s.y.push_back(st.loss);
    curves.push_back(std::move(s));
  }
  write_file_atomic(out + "/loss_curves.svg", svg_line_chart("Domain training loss", "step", "loss", curves));
  std::vector<std::string> labels;
  std::vector<bool> chosen(importance.score.size(), false);
  for (size_t l = 0; l < importance.score.size(); ++l) labels.push_back(std::to_string(l));
  int64_t k = rc.expand.after.empty() ? rc.expand.layers : int64_t(rc.expand.after.size());
  for (int64_t l : rc.expand.after.empty() ? least_important_layers(importance, k) : rc.expand.after) chosen[l] = true;
  write_file_atomic(out + "/layer_importance.svg",
                    svg_bar_chart(fmt::format("Layer importance ({})", rc.probe.method), "layer",
                                  "normalised importance", labels, importance.normalized, chosen));
  for (const MethodResult& r : results)
    if (!r.multipliers.empty()) {
      write_file_atomic(out + "/lr_multipliers.svg",
                        svg_line_chart("ADEPT learning-rate multipliers", "step", "multiplier", r.multipliers));
      md += "![ADEPT learning-rate multipliers](lr_multipliers.svg)\n";
    }

  nlohmann::json results_json;
  results_json["base"] = held_out_json(before);
  results_json["base"]["pretrain"] = train_result_json(pretrain);
  for (const MethodResult& r : results)
  {
    nlohmann::json j = held_out_json(r.after);
    j["trained"] = r.layers;
    j["trainable_params"] = r.trainable;
    j["total_params"] = r.total;
    j["train"] = train_result_json(r.train);
    j["peak_rss_mb"] = r.peak_rss_mb;
    results_json["methods"][r.name] = j;
  }
  results_json["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_file_atomic(out + "/results.json", results_json.dump(2) + "\n");
  write_file_atomic(out + "/report.md", md);
  fmt::print("\n{}", md.substr(md.find("| method")));
  return out + "/report.md";
}

}  // namespace adept
