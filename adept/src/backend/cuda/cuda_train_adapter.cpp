#include "backend/cuda/cuda_train_adapter.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>

#include "core/error.hpp"
#include "data/packed_loader.hpp"

namespace adept {

CudaDecoderOptions cuda_options_for(const TrainConfig& config) {
  CudaDecoderOptions o;
  o.max_tokens = config.batch_size * config.seq_len;
  o.max_seq_len = config.seq_len;
  o.adamw = adamw_config(config);
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
    batches.push_back(batch_view(b));
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

namespace {

class CudaEngine final : public TrainEngine {
 public:
  CudaEngine(Decoder<float>& host, const TrainConfig& config, int64_t max_tokens, int64_t max_seq_len)
      : host_(host), optimizer_(adamw_config(config)) {
    CudaDecoderOptions o = cuda_options_for(config);
    o.max_tokens = std::max(o.max_tokens, max_tokens);
    o.max_seq_len = std::max(o.max_seq_len, max_seq_len);
    // CudaDecoder's upload copies each trainable tensor with cudaMemcpy and converts it to
    // bf16 on its own non-blocking stream. From pageable memory that cudaMemcpy may
    // return before the data has landed, and the conversion is not ordered after it: a
    // large model's bf16 weights came out wrong until the first optimizer step rewrote
    // them (seen on an H200: held-out loss 3.46 vs 0.95 on the CPU). From page-locked
    // memory the copy is complete when it returns, so the host weights are pinned for the
    // upload, and the device drained afterwards (the frozen tensors' and RoPE tables'
    // copies). Remove once the upload orders its copies itself.
    std::vector<float>& values = host.params().values();
    const bool pinned =
        cudaHostRegister(values.data(), values.size() * sizeof(float), cudaHostRegisterDefault) == cudaSuccess;
    if (!pinned) cudaGetLastError();  // not an error for what follows: the copies are just not pinned
    try {
      device_ = std::make_unique<CudaDecoder>(host.config(), host.params(), o);
    } catch (...) {
      if (pinned) cudaHostUnregister(values.data());
      throw;
    }
    if (pinned) cudaHostUnregister(values.data());
    if (cudaDeviceSynchronize() != cudaSuccess) fail("CUDA engine: the weight upload failed");
    sample_memory();
  }
  std::string name() const override { return "cuda"; }
  StepRecord step(const std::vector<TokenBatch>& micro, const TrainConfig& config, int64_t step) override {
    StepRecord r = cuda_train_step(*device_, micro, config, step);
    if (step < 2) sample_memory();  // the arena is fixed: the first steps show the peak
    return r;
  }
  cpu::CrossEntropyResult loss(const TokenBatch& batch, const std::vector<bool>& skip_layers) override {
    ForwardOptions fo;
    fo.skip_layers = skip_layers;
    return device_->forward(batch_view(batch), fo);
  }
  void gradient(const TokenBatch& batch) override {
    device_->zero_gradients();
    ForwardOptions fo;
    fo.keep_activations = true;
    device_->forward(batch_view(batch), fo);
    device_->backward();
    device_->copy_gradients_to_host(host_.params());
    device_->zero_gradients();
  }
  void pull_weights() override { device_->copy_weights_to_host(host_.params()); }
  void push_multipliers() override { device_->set_learning_rate_multipliers(host_.params()); }
  // CudaDecoder keeps its AdamW moments on the device with no way to read or restore
  // them, so checkpoints of a CUDA training are not offered (yet).
  bool has_optimizer_state_access() const override { return false; }
  AdamW& optimizer() override { return optimizer_; }
  double peak_device_mb() const override {
    return std::max(double(device_->device_bytes()), double(peak_used_)) / (1024.0 * 1024.0);
  }

 private:
  void sample_memory() {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
      peak_used_ = std::max(peak_used_, total_bytes - free_bytes);
  }
  Decoder<float>& host_;
  AdamW optimizer_;  // unused: the device holds the state
  std::unique_ptr<CudaDecoder> device_;
  size_t peak_used_ = 0;
};

}  // namespace

std::unique_ptr<TrainEngine> make_cuda_engine(Decoder<float>& host, const TrainConfig& config, int64_t max_tokens,
                                              int64_t max_seq_len) {
  return std::make_unique<CudaEngine>(host, config, max_tokens, max_seq_len);
}

}  // namespace adept
