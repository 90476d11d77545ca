// The CUDA training backend: the CPU reference decoder's math (model/decoder.hpp) in bf16
// mixed precision on one GPU. bf16 weights and activations, fp32 master weights,
// gradients and AdamW moments (for trainable tensors only), fp32 statistics.
//
// All device memory is one arena planned at construction for micro-batches of up to
// options.max_tokens tokens; nothing is allocated afterwards. Layers run as cuBLASLt
// GEMMs (q|k|v and gate|up fused into one GEMM each, residual adds and biases in the
// GEMM epilogue) and the fused kernels of ops/cuda; attention through flash4's CUDA API.
// The cross-entropy is chunked over tokens: per chunk, logits → loss and dlogits → the
// head's input gradient and weight gradient, so the full logits never exist. (The head's
// gradient is therefore accumulated during a training forward, not in backward().)
//
// This header needs no CUDA headers: the pipeline can hold a CudaDecoder from plain C++.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "model/decoder.hpp"
#include "model/parameters.hpp"
#include "ops/cpu/ops.hpp"
#include "optim/adamw.hpp"

namespace adept {

namespace dist {
class Communicator;
}

struct CudaDecoderOptions {
  int64_t max_tokens = 0;   // B·S of the largest micro-batch (training or evaluation)
  int64_t max_seq_len = 0;  // longest document / row; 0 = min(max_tokens, max_position_embeddings)
  // Keep only what cannot be recomputed cheaply: h1, h2 (RMSNorm outputs) and the SwiGLU
  // activation are recomputed in backward from the saved residual stream and statistics.
  bool recompute = false;
  // Capture a micro-batch's forward + backward in a CUDA graph on its second occurrence
  // (same shape and documents) and replay it; falls back to eager launches if capture
  // fails (e.g. a library call that cannot be captured).
  bool cuda_graphs = true;
  int64_t logits_chunk_tokens = 0;  // 0: as many as fit 512 MiB of bf16 logits
  std::string attention = "auto";   // auto | flash4 | fallback (materialised scores)
  // Time the attention calls of each training step with CUDA events (for benchmarks:
  // forces eager launches, since a graph's nodes cannot be timed one by one).
  bool time_attention = false;
  AdamWConfig adamw;
  // Data parallelism with a ZeRO optimizer (dist/communicator.hpp; the design is in
  // cuda_decoder.cpp, "Data parallel"). nullptr or a world of one rank: the single-GPU
  // path, unchanged. Otherwise every rank holds the whole bf16 model but only its shard
  // of the fp32 master weights and AdamW moments; each rank trains on its own
  // micro-batches, and a step is the step one GPU would take on all ranks'
  // micro-batches together. The device is the one current when the decoder is built
  // (make_communicator made env.local_rank current).
  std::shared_ptr<dist::Communicator> communicator;
  int64_t bucket_numel = int64_t(32) << 20;  // fp32 elements per reduce-scatter bucket (128 MiB)
  // 1: ZeRO-1, every rank holds the whole fp32 gradient, reduce-scattered once per step
  //    (during the last micro-batch's backward); micro-batches replay CUDA graphs.
  // 2: ZeRO-2, gradients sharded too: a bucket's fp32 gradient exists only while
  //    backward fills it (two rotating bucket buffers, plus one for the bucket holding
  //    the head, which the forward already writes) and is reduce-scattered into the
  //    rank's shard after every micro-batch: less memory, more communication with
  //    gradient accumulation, eager launches. Ignored on one GPU.
  int zero_stage = 1;
};

struct CudaStepResult {
  double loss = 0.0;  // mean over the step's counted targets
  int64_t count = 0;
  double grad_norm = 0.0;  // before clipping
  bool skipped = false;    // loss or gradient not finite: nothing applied
};

class CudaDecoder {
 public:
  // Weights (by Hugging Face name), trainability and learning-rate multipliers from
  // `host`, which must hold every tensor Decoder<float>(config) registers.
  CudaDecoder(const ModelConfig& config, const ParameterStore<float>& host, CudaDecoderOptions options);
  // Every tensor trainable; matrices Normal(0, init_std) from a counter-based generator
  // on the device, norms 1, biases 0 (for benchmarks: no host copy of the weights).
  CudaDecoder(const ModelConfig& config, CudaDecoderOptions options, uint64_t seed, double init_std);
  ~CudaDecoder();
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  const ModelConfig& config() const;

  // As Decoder::forward (same validation and options). With keep_activations it also
  // accumulates the head's weight gradient and the loss into the current step.
  cpu::CrossEntropyResult forward(const Batch& batch, const ForwardOptions& options = {});
  // Accumulates parameter gradients (trainable tensors) of the last training forward.
  // Data parallel: train_step is the way to train (it scales by the targets of every
  // rank's micro-batches). forward / backward / optimizer_step sum the ranks'
  // gradients as they are, so there grad_scale must be 1 / (targets over all ranks).
  // With ZeRO-2 backward is collective (it reduce-scatters as it goes).
  void backward();
  // Zeroes the gradients and the step's loss.
  void zero_gradients();
  // Clip to max_grad_norm (<= 0: no clipping), skip if the step's loss or the gradient
  // is not finite, else one AdamW update at learning rate lr. Waits for the device.
  CudaStepResult optimizer_step(double lr, double max_grad_norm);
  // zero_gradients, forward + backward of every micro-batch (grad_scale 1/(targets
  // counted in all of them)), optimizer_step: trainer.cpp's train_step on the device.
  CudaStepResult train_step(const std::vector<Batch>& micro_batches, double lr, double max_grad_norm);

  // With a communicator of several ranks, these copies (weights, gradients, optimizer
  // state) are collective: every rank calls them, in the same order. They gather the
  // sharded state through the gradient buffer, so the gradient is gone afterwards
  // (between steps it is not needed).
  //
  // Trainable tensors' fp32 master weights into `host` (frozen ones are left alone).
  void copy_weights_to_host(ParameterStore<float>& host) const;
  // Trainable tensors' gradients into host's gradient slots (same trainable set). Data
  // parallel: the mean over ranks of each rank's gradient, identical on every rank (so
  // ADEPT's importance estimates, and the multipliers made from them, agree).
  void copy_gradients_to_host(ParameterStore<float>& host) const;
  // Re-reads every tensor's lr_multiplier and row_multiplier (ADEPT re-estimates them).
  void set_learning_rate_multipliers(const ParameterStore<float>& host);
  // AdamW's moments for checkpoints, in the host's layout (each trainable tensor at its
  // gradient offset in `host`, as AdamW::first_moment() holds them), and the number of
  // updates applied (the bias-correction step). load_optimizer_state puts them back, so a
  // run resumed from a checkpoint continues with the same updates.
  void copy_optimizer_state_to_host(const ParameterStore<float>& host, std::vector<float>& first_moment,
                                    std::vector<float>& second_moment) const;
  void load_optimizer_state(const ParameterStore<float>& host, const std::vector<float>& first_moment,
                            const std::vector<float>& second_moment, int64_t steps_taken);

  int64_t steps_taken() const;        // AdamW updates applied
  int64_t skipped_steps() const;      // steps skipped as non-finite
  std::string attention_backend() const;  // "flash4" or the fallback's name (fwd / bwd)
  size_t device_bytes() const;        // the arena
  // fp32 master weights and AdamW moments held on this GPU (ZeRO: this rank's shard).
  size_t optimizer_state_bytes() const;
  // fp32 gradient buffers held on this GPU (data parallel: with the rank's reduced
  // shard; ZeRO-2: the bucket buffers instead of the whole gradient).
  size_t gradient_bytes() const;
  int zero_stage() const;             // 0 on the single-GPU path, else 1 or 2
  int data_parallel_world() const;    // 1 on the single-GPU path
  std::string memory_report() const;
  bool graphs_active() const;         // a captured graph has been replayed
  // Device time of the last train_step's attention calls (forward and backward), in ms;
  // 0 unless options.time_attention.
  double attention_milliseconds() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace adept
