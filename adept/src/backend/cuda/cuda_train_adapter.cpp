#include "backend/cuda/cuda_train_adapter.hpp"

#include <chrono>

namespace adept {

CudaDecoderOptions cuda_options_for(const TrainConfig& config) {
  CudaDecoderOptions o;
  o.max_tokens = config.batch_size * config.seq_len;
  o.max_seq_len = config.seq_len;
  o.adamw.beta1 = config.beta1;
  o.adamw.beta2 = config.beta2;
  o.adamw.eps = config.eps;
  o.adamw.weight_decay = config.weight_decay;
  return o;
}

StepRecord cuda_train_step(CudaDecoder& model, const std::vector<TokenBatch>& micro_batches,
                           const TrainConfig& config, int64_t step) {
  auto t0 = std::chrono::steady_clock::now();
  StepRecord r;
  r.step = step;
  r.lr = cosine_schedule(step, config.warmup_steps, config.steps, config.lr, config.min_lr_ratio);
  std::vector<Batch> batches;
  int64_t tokens = 0;
  for (const TokenBatch& b : micro_batches) {
    batches.push_back(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr});
    tokens += b.B * b.S;
  }
  CudaStepResult s = model.train_step(batches, r.lr, config.grad_clip);
  r.loss = s.loss;
  r.grad_norm = s.grad_norm;
  r.skipped = s.skipped;
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_second = seconds > 0 ? double(tokens) / seconds : 0.0;
  return r;
}

}  // namespace adept
