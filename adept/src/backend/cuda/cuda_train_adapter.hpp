// The CUDA backend behind the training loop's interface (train/trainer.hpp): what
// `train.backend = "cuda"` needs, without touching the CPU trainer.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cuda/cuda_decoder.hpp"
#include "data/window_sampler.hpp"
#include "train/run_config.hpp"
#include "train/trainer.hpp"

namespace adept {

// Options sized for `config`'s micro-batches (batch_size × seq_len) and its AdamW.
CudaDecoderOptions cuda_options_for(const TrainConfig& config);

// trainer.cpp's train_step on the GPU: the same schedule, accumulation, clipping and
// non-finite skip, and the same record.
StepRecord cuda_train_step(CudaDecoder& model, const std::vector<TokenBatch>& micro_batches,
                           const TrainConfig& config, int64_t step);

}  // namespace adept
