#include "train/trainer.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <fstream>

#include "train/progress.hpp"

namespace adept {

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
    Batch batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr};
    loss_sum += model.forward(batch, fo).loss_sum;
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
  double loss = model.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr}, fo).loss;
  model.backward();
  return loss;
}

double evaluate(Decoder<float>& model, const WindowSampler& holdout, int64_t batch_size, int64_t batches) {
  double loss_sum = 0.0;
  int64_t count = 0;
  for (int64_t k = 0; k < batches; ++k) {
    TokenBatch b = holdout.sequential_batch(batch_size, k);
    Batch batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr};
    cpu::CrossEntropyResult r = model.forward(batch);
    loss_sum += r.loss_sum;
    count += r.count;
  }
  return count ? loss_sum / double(count) : 0.0;
}

TrainResult train(Decoder<float>& model, const TrainConfig& config, const WindowSampler& train_data,
                  const WindowSampler* holdout, const TrainOptions& options) {
  AdamWConfig ac;
  ac.beta1 = config.beta1;
  ac.beta2 = config.beta2;
  ac.eps = config.eps;
  ac.weight_decay = config.weight_decay;
  AdamW optimizer(ac);
  TrainResult result;
  std::ofstream metrics;
  if (!options.metrics_path.empty()) {
    metrics.open(options.metrics_path, std::ios::trunc);
    if (!metrics) fail("{}: cannot open for writing", options.metrics_path);
  }
  auto log = [&](const nlohmann::json& j) {
    if (metrics.is_open()) metrics << j.dump() << '\n' << std::flush;
  };
  auto run_eval = [&](int64_t step) {
    if (!holdout) return;
    EvalRecord e{step, evaluate(model, *holdout, config.batch_size, config.eval_batches)};
    result.evals.push_back(e);
    log({{"event", "eval"}, {"step", e.step}, {"heldout_loss", e.loss}});
  };

  ProgressBar bar(options.label, config.steps);
  auto start = std::chrono::steady_clock::now();
  run_eval(0);
  double smoothed = NAN;
  for (int64_t step = 0; step < config.steps; ++step) {
    if (options.before_step) options.before_step(step);
    std::vector<TokenBatch> micro;
    for (int64_t m = 0; m < config.grad_accum; ++m) micro.push_back(train_data.random_batch(config.batch_size, step, m));
    StepRecord r = train_step(model, optimizer, micro, config, step);
    result.tokens += config.grad_accum * config.batch_size * config.seq_len;
    result.skipped_steps += r.skipped;
    result.steps.push_back(r);
    log({{"event", "step"}, {"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
         {"tokens_per_second", r.tokens_per_second}, {"skipped", r.skipped}});
    if (std::isfinite(r.loss)) smoothed = std::isnan(smoothed) ? r.loss : 0.9 * smoothed + 0.1 * r.loss;
    if (config.eval_every > 0 && (step + 1) % config.eval_every == 0 && step + 1 < config.steps) run_eval(step + 1);
    if (options.show_progress)
      bar.update(step + 1, fmt::format("loss {:.3f} lr {:.2e} {:.0f} tok/s", smoothed, r.lr, r.tokens_per_second));
  }
  run_eval(config.steps);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (options.show_progress)
    bar.finish(fmt::format("loss {:.3f} {:.0f} tok/s", smoothed, double(result.tokens) / result.seconds));
  return result;
}

}  // namespace adept
