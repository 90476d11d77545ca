#include "backend/cuda/cuda_train_adapter.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>

#include "core/error.hpp"
#include "data/packed_loader.hpp"
#include "dist/communicator.hpp"
#include "dist/sharded_loader.hpp"

namespace adept {

namespace {

int world_of(const std::shared_ptr<dist::Communicator>& communicator) {
  return communicator ? communicator->world() : 1;
}

// Tokens of the largest batch one rank runs when batches of up to max_tokens tokens in
// rows of max_seq_len are shared out by rows (dist::rank_rows).
int64_t tokens_per_rank(int64_t max_tokens, int64_t max_seq_len, int world) {
  if (world <= 1) return max_tokens;
  const int64_t rows = (max_tokens + max_seq_len - 1) / max_seq_len;
  return (rows + world - 1) / world * max_seq_len;
}

}  // namespace

CudaDecoderOptions cuda_options_for(const TrainConfig& config, std::shared_ptr<dist::Communicator> communicator) {
  CudaDecoderOptions o;
  o.max_tokens = tokens_per_rank(config.batch_size * config.seq_len, config.seq_len, world_of(communicator));
  o.max_seq_len = config.seq_len;
  o.adamw = adamw_config(config);
  o.zero_stage = int(config.zero_stage);
  o.cuda_graphs = config.cuda_graphs;
  o.recompute = config.recompute;
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
    options_.max_seq_len = std::max(options_.max_seq_len, max_seq_len);
    // Data parallel: every batch is shared out by rows, so a rank plans for its share.
    options_.max_tokens =
        std::max(options_.max_tokens, tokens_per_rank(max_tokens, options_.max_seq_len, world_of(options_.communicator)));
    upload();
  }
  std::string name() const override { return "cuda"; }
  StepRecord step(const std::vector<TokenBatch>& micro, const TrainConfig& config, int64_t step) override {
    StepRecord r = cuda_train_step(*device_, micro, config, step);
    if (step < 2) sample_memory();  // the arena is fixed: the first steps show the peak
    return r;
  }
  // Data parallel: every rank holds the whole batch and evaluates its rows; the sums of
  // per-token losses and of counted targets over ranks give the single-GPU result (up to
  // the order of the additions and the GEMMs' bf16 rounding at another row count). One
  // GPU given a batch larger than its plan runs it in pieces of rows the same way (a
  // batch within the plan runs whole, as it always did).
  cpu::CrossEntropyResult loss(const TokenBatch& batch, const std::vector<bool>& skip_layers) override {
    ForwardOptions fo;
    fo.skip_layers = skip_layers;
    if (world() <= 1 && fits(batch)) return device_->forward(batch_view(batch), fo);
    double sums[2] = {0.0, 0.0};
    for (const TokenBatch& piece : pieces(batch)) {
      cpu::CrossEntropyResult r = device_->forward(batch_view(piece), fo);
      sums[0] += r.loss_sum;
      sums[1] += double(r.count);
    }
    if (world() > 1) options_.communicator->all_reduce_host(sums, 2, dist::ReduceOp::sum);
    cpu::CrossEntropyResult r;
    r.loss_sum = sums[0];
    r.count = int64_t(sums[1]);
    r.loss = r.count ? r.loss_sum / double(r.count) : 0.0;
    return r;
  }
  // Data parallel: each rank the gradient of its rows, scaled by world / (targets of the
  // whole batch), so that the mean over ranks copy_gradients_to_host returns is the
  // gradient of the batch's mean loss. Every rank runs the same number of pieces (an
  // idle one: a row whose targets count nothing, gradient zero), since backward may be
  // collective (ZeRO-2). One GPU and a batch larger than its plan: the pieces' gradients
  // accumulate, each scaled by 1 / (targets of the whole batch).
  void gradient(const TokenBatch& batch) override {
    device_->zero_gradients();
    ForwardOptions fo;
    fo.keep_activations = true;
    if (world() <= 1 && fits(batch)) {
      device_->forward(batch_view(batch), fo);
      device_->backward();
    } else {
      int64_t counted = 0;
      for (int32_t t : batch.targets) counted += t != kIgnoreIndex;
      fo.grad_scale = counted ? double(world()) / double(counted) : 0.0;
      std::vector<TokenBatch> mine = pieces(batch);
      const int64_t runs =
          world() > 1 ? dist::most_pieces(batch.B, world(), rows_per_piece(batch)) : int64_t(mine.size());
      for (int64_t k = 0; k < runs; ++k) {
        const TokenBatch& piece = size_t(k) < mine.size() ? mine[size_t(k)] : idle_piece(batch);
        device_->forward(batch_view(piece), fo);
        device_->backward();
      }
    }
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
  int world() const { return world_of(options_.communicator); }
  int rank() const { return options_.communicator ? options_.communicator->rank() : 0; }
  bool fits(const TokenBatch& batch) const { return batch.B * batch.S <= options_.max_tokens; }
  int64_t rows_per_piece(const TokenBatch& batch) const {
    return std::max<int64_t>(1, options_.max_tokens / std::max<int64_t>(1, batch.S));
  }
  std::vector<TokenBatch> pieces(const TokenBatch& batch) const {
    return dist::rank_pieces(batch, rank(), world(), rows_per_piece(batch));
  }
  // One row of `batch` whose targets are all ignored: a forward and backward that add
  // nothing, for a rank with no rows left.
  const TokenBatch& idle_piece(const TokenBatch& batch) {
    idle_ = dist::slice_rows(batch, 0, 1);
    std::fill(idle_.targets.begin(), idle_.targets.end(), kIgnoreIndex);
    return idle_;
  }

  Decoder<float>& host_;
  CudaDecoderOptions options_;
  TokenBatch idle_;
  std::unique_ptr<CudaDecoder> device_;
  size_t peak_used_ = 0;
};

}  // namespace

std::unique_ptr<TrainEngine> make_cuda_engine(Decoder<float>& host, const TrainConfig& config, int64_t max_tokens,
                                              int64_t max_seq_len, std::shared_ptr<dist::Communicator> communicator) {
  return std::make_unique<CudaEngine>(host, config, max_tokens, max_seq_len, std::move(communicator));
}

}  // namespace adept
