// The CUDA backend behind the training loop's interface (train/trainer.hpp): what
// `train.backend = "cuda"` needs, without touching the CPU trainer.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/cuda_decoder.hpp"
#include "data/window_sampler.hpp"
#include "train/run_config.hpp"
#include "train/trainer.hpp"

namespace adept {

// Options sized for `config`'s micro-batches (batch_size × seq_len; data parallel, a
// rank's batch_size / world rows) and its AdamW and ZeRO stage; `communicator` (data
// parallelism, dist/README.md) goes into CudaDecoderOptions::communicator (nullptr: one
// GPU).
CudaDecoderOptions cuda_options_for(const TrainConfig& config,
                                    std::shared_ptr<dist::Communicator> communicator = nullptr);

// trainer.cpp's train_step on the GPU: the same schedule, accumulation, clipping and
// non-finite skip, and the same record. Packed documents are passed on.
StepRecord cuda_train_step(CudaDecoder& model, const std::vector<TokenBatch>& micro_batches,
                           const TrainConfig& config, int64_t step);

// A TrainEngine on one GPU over `host` (weights, trainable set and multipliers copied in
// now; the arena is planned for batches of up to max_tokens tokens in rows of up to
// max_seq_len; loss and gradient run a larger batch in pieces of rows, whose sums are
// the whole batch's). Gradients for importance estimates come from the device
// (copy_gradients_to_host); the optimizer state stays on the device.
// With a communicator of several ranks it is this rank's part of a data-parallel job:
// step, loss, gradient, pull_weights, save_optimizer_state and push_weights are
// collective (every rank calls them at the same points). A batch passed to loss or
// gradient is held whole by every rank, and each evaluates its share of the rows
// (dist::rank_rows): the held-out loss and the importance gradient are the single-GPU
// values, and a rank's arena is sized for its share of max_tokens.
std::unique_ptr<TrainEngine> make_cuda_engine(Decoder<float>& host, const TrainConfig& config, int64_t max_tokens,
                                              int64_t max_seq_len,
                                              std::shared_ptr<dist::Communicator> communicator = nullptr);

}  // namespace adept
