#include "backend/cuda/cuda_train_adapter.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>

#include "core/error.hpp"
#include "data/packed_loader.hpp"

namespace adept {

CudaDecoderOptions cuda_options_for(const TrainConfig& config, std::shared_ptr<dist::Communicator> communicator) {
  CudaDecoderOptions o;
  o.max_tokens = config.batch_size * config.seq_len;
  o.max_seq_len = config.seq_len;
  o.adamw = adamw_config(config);
  o.communicator = std::move(communicator);
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
  CudaEngine(Decoder<float>& host, const TrainConfig& config, int64_t max_tokens, int64_t max_seq_len,
             std::shared_ptr<dist::Communicator> communicator)
      : host_(host), options_(cuda_options_for(config, std::move(communicator))) {
    options_.max_tokens = std::max(options_.max_tokens, max_tokens);
    options_.max_seq_len = std::max(options_.max_seq_len, max_seq_len);
    upload();
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
  // A decoder built anew from the host (the weights of a restored checkpoint).
  void push_weights() override {
    device_.reset();  // its memory first
    upload();
  }
  void push_multipliers() override { device_->set_learning_rate_multipliers(host_.params()); }
  void save_optimizer_state(std::vector<float>& m, std::vector<float>& v, int64_t& t) override {
    device_->copy_optimizer_state_to_host(host_.params(), m, v);
    t = device_->steps_taken();
  }
  void load_optimizer_state(const std::vector<float>& m, const std::vector<float>& v, int64_t t) override {
    device_->load_optimizer_state(host_.params(), m, v, t);
  }
  double peak_device_mb() const override {
    return std::max(double(device_->device_bytes()), double(peak_used_)) / (1024.0 * 1024.0);
  }

 private:
  void sample_memory() {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
      peak_used_ = std::max(peak_used_, total_bytes - free_bytes);
  }
  void upload() {
    device_ = std::make_unique<CudaDecoder>(host_.config(), host_.params(), options_);
    sample_memory();
  }
  Decoder<float>& host_;
  CudaDecoderOptions options_;
  std::unique_ptr<CudaDecoder> device_;
  size_t peak_used_ = 0;
};

}  // namespace

std::unique_ptr<TrainEngine> make_cuda_engine(Decoder<float>& host, const TrainConfig& config, int64_t max_tokens,
                                              int64_t max_seq_len, std::shared_ptr<dist::Communicator> communicator) {
  return std::make_unique<CudaEngine>(host, config, max_tokens, max_seq_len, std::move(communicator));
}

}  // namespace adept
