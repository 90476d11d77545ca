// What `adept train` hands an engine, checked on the CPU, for the run scripts/dp_check.sh's
// `cli` stage trains (the CUDA engine's held-out loss was ~20% above the CPU's there):
// the CUDA engine's options carry the config's AdamW and batch plan; every held-out batch
// of that run fits the CUDA engine's plan whole (no row pieces), and the row-piece path
// it would take otherwise sums to the whole batch's loss; the held-out loss is the
// per-token mean; the loop gives the engine each step's micro-batches and the schedule's
// learning rate once per step; accumulating two halves of a batch is the whole batch's
// step (the normalisation the CUDA train_step copies). The device side of the same
// comparison is tests/gpu/train_engine_parity_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/cli_shape_study.hpp"
#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "dist/sharded_loader.hpp"
#include "model/decoder.hpp"
#include "pipeline/study_data.hpp"
#include "train/run_config.hpp"
#include "train/trainer.hpp"

#ifdef ADEPT_WITH_CUDA
#include "backend/cuda/cuda_train_adapter.hpp"
#endif

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::TempDir;

// What run_train (cli/train_command.cpp) builds before the engine (tests/common/cli_shape_study.hpp).
using cli_shape_study::CliRun;

TEST(TrainBackendParity, TheCudaEngineIsPlannedWithTheCliConfigsBatchAndAdamW) {
#ifndef ADEPT_WITH_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  auto rng = testing_support::make_rng(701);
  TempDir dir(rng);
  CliRun run(dir.path);
  TrainConfig tc = run.rc.train;
  tc.backend = "cuda";
  CudaDecoderOptions o = cuda_options_for(tc);
  EXPECT_EQ(o.max_tokens, tc.batch_size * tc.seq_len);
  EXPECT_EQ(o.max_seq_len, tc.seq_len);
  // The same AdamW as the CPU engine (make_cpu_engine(model, adamw_config(config))).
  const AdamWConfig cpu = adamw_config(tc);
  EXPECT_EQ(o.adamw.beta1, cpu.beta1);
  EXPECT_EQ(o.adamw.beta2, cpu.beta2);
  EXPECT_EQ(o.adamw.eps, cpu.eps);
  EXPECT_EQ(o.adamw.weight_decay, cpu.weight_decay);
  EXPECT_EQ(cpu.weight_decay, 0.1);
  EXPECT_EQ(cpu.beta2, 0.95);
  EXPECT_EQ(o.communicator, nullptr) << "one process: the single-GPU path";
#endif
}

// The CUDA engine evaluates a batch whole when B·S fits its plan (batch_size · seq_len)
// and every document fits its max_seq_len; then its rows are the CPU engine's rows.
TEST(TrainBackendParity, EveryHeldOutBatchOfTheCliRunFitsTheCudaEnginesPlanWhole) {
  auto rng = testing_support::make_rng(702);
  TempDir dir(rng);
  CliRun run(dir.path);
  ASSERT_FALSE(run.holdout.empty());
  const int64_t planned = run.rc.train.batch_size * run.rc.train.seq_len;
  int64_t batches = 0;
  for (const HeldOutSet& set : run.holdout.sets)
    for (int64_t k = 0; k < set.batch_count(); ++k, ++batches) {
      TokenBatch b = set.batch(k);
      EXPECT_LE(b.B * b.S, planned) << "held-out batch " << k;
      EXPECT_EQ(b.S, run.rc.train.seq_len);
      ASSERT_GE(b.documents.size(), size_t(2));
      for (size_t d = 0; d + 1 < b.documents.size(); ++d)
        EXPECT_LE(b.documents[d + 1] - b.documents[d], run.rc.train.seq_len) << "batch " << k << " document " << d;
    }
  EXPECT_GE(batches, run.rc.train.eval_batches) << "the CLI evaluates eval_batches batches per set";
}

// held_out_loss: the mean per target over the first eval_batches batches of every set
// (not a mean of per-batch means), and the CUDA engine's row-piece path (a batch larger
// than its plan, or data parallel: dist::rank_pieces) gives the same sums.
TEST(TrainBackendParity, HeldOutLossIsThePerTokenMeanAndRowPiecesSumToTheWholeBatch) {
  auto rng = testing_support::make_rng(703);
  TempDir dir(rng);
  CliRun run(dir.path);
  std::unique_ptr<Decoder<float>> m = run.model();
  // Weights further from the initial ones, so that the losses differ by row.
  std::normal_distribution<double> noise(0.0, 0.05);
  ParameterStore<float>& p = m->params();
  for (int i = 0; i < p.size(); ++i)
    for (int64_t j = 0; j < p.info(i).numel; ++j) p.value(i)[j] += float(noise(rng));
  std::unique_ptr<TrainEngine> engine = make_cpu_engine(*m, adamw_config(run.rc.train));
  const int64_t eval_batches = run.rc.train.eval_batches;
  double sum = 0.0, mean_of_means = 0.0;
  int64_t count = 0, n = 0;
  for (const HeldOutSet& set : run.holdout.sets)
    for (int64_t k = 0; k < std::min(eval_batches, set.batch_count()); ++k) {
      TokenBatch b = set.batch(k);
      cpu::CrossEntropyResult whole = engine->loss(b);
      sum += whole.loss_sum, count += whole.count, mean_of_means += whole.loss, ++n;
      for (int64_t rows : {int64_t(1), int64_t(3)}) {
        double piece_sum = 0.0;
        int64_t piece_count = 0;
        for (const TokenBatch& piece : dist::rank_pieces(b, 0, 1, rows)) {
          cpu::CrossEntropyResult r = engine->loss(piece);
          piece_sum += r.loss_sum, piece_count += r.count;
        }
        EXPECT_EQ(piece_count, whole.count) << "batch " << k << " in pieces of " << rows << " rows";
        EXPECT_NEAR(piece_sum, whole.loss_sum, 1e-5 * whole.loss_sum) << "batch " << k << ", " << rows << " rows";
      }
    }
  int64_t targets = 0;
  const double got = held_out_loss(run.holdout, eval_batches, [&](const TokenBatch& b) { return engine->loss(b); },
                                   &targets);
  EXPECT_EQ(targets, count);
  EXPECT_DOUBLE_EQ(got, sum / double(count));
  std::printf("[ info ] held-out: %lld targets in %lld batches, per-token mean %.5f, mean of batch means %.5f\n",
              (long long)count, (long long)n, got, mean_of_means / double(n));
}

// Records what train() gives the engine, and passes it on to the CPU engine.
class RecordingEngine final : public TrainEngine {
 public:
  explicit RecordingEngine(std::unique_ptr<TrainEngine> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  StepRecord step(const std::vector<TokenBatch>& micro, const TrainConfig& config, int64_t step) override {
    steps.push_back(step);
    micro_shapes.emplace_back();
    for (const TokenBatch& b : micro) micro_shapes.back().push_back({b.B, b.S, int64_t(b.documents.size())});
    return inner_->step(micro, config, step);
  }
  cpu::CrossEntropyResult loss(const TokenBatch& b, const std::vector<bool>& skip) override {
    return inner_->loss(b, skip);
  }
  void gradient(const TokenBatch& b) override { inner_->gradient(b); }
  void pull_weights() override { inner_->pull_weights(); }
  void push_weights() override { inner_->push_weights(); }
  void push_multipliers() override { inner_->push_multipliers(); }
  void save_optimizer_state(std::vector<float>& m, std::vector<float>& v, int64_t& t) override {
    inner_->save_optimizer_state(m, v, t);
  }
  void load_optimizer_state(const std::vector<float>& m, const std::vector<float>& v, int64_t t) override {
    inner_->load_optimizer_state(m, v, t);
  }
  std::vector<int64_t> steps;
  std::vector<std::vector<std::vector<int64_t>>> micro_shapes;  // per step, per micro: B, S, offsets

 private:
  std::unique_ptr<TrainEngine> inner_;
};

TEST(TrainBackendParity, TheLoopGivesTheEngineEachStepsMicroBatchesAndTheScheduleOnce) {
  auto rng = testing_support::make_rng(704);
  TempDir dir(rng);
  CliRun run(dir.path);
  TrainConfig tc = run.rc.train;
  tc.steps = 4;
  tc.warmup_steps = 2;
  tc.grad_accum = 2;
  tc.batch_size = 4;
  tc.seq_len = 64;
  std::unique_ptr<Decoder<float>> m = run.model();
  RecordingEngine engine(make_train_engine(*m, tc, tc.batch_size * tc.seq_len, tc.seq_len));
  PackedLoader loader = run.loader(tc);
  TrainOptions o;
  o.show_progress = false;
  TrainResult r = train(*m, engine, tc, loader_train_data(loader), o);
  ASSERT_EQ(engine.steps.size(), size_t(tc.steps));
  ASSERT_EQ(r.steps.size(), size_t(tc.steps));
  for (int64_t s = 0; s < tc.steps; ++s) {
    EXPECT_EQ(engine.steps[size_t(s)], s);
    ASSERT_EQ(engine.micro_shapes[size_t(s)].size(), size_t(tc.grad_accum));
    for (const std::vector<int64_t>& shape : engine.micro_shapes[size_t(s)]) {
      EXPECT_EQ(shape[0], tc.batch_size);
      EXPECT_EQ(shape[1], tc.seq_len);
      EXPECT_GE(shape[2], tc.batch_size + 1) << "packed rows carry their document offsets";
    }
    EXPECT_DOUBLE_EQ(r.steps[size_t(s)].lr, cosine_schedule(s, tc.warmup_steps, tc.steps, tc.lr, tc.min_lr_ratio));
  }
  std::vector<float> first, second;
  int64_t updates = 0;
  engine.save_optimizer_state(first, second, updates);
  EXPECT_EQ(updates, tc.steps) << "one AdamW update per step";
  EXPECT_EQ(r.tokens, tc.steps * tc.grad_accum * tc.batch_size * tc.seq_len);
}

// The loss of a step is the mean over every counted target of its micro-batches, so two
// halves accumulated are the whole batch: the CUDA train_step scales its gradients the
// same way (tests/gpu/train_decoder_test.cpp, GradientAccumulationEqualsOneLargeBatch).
TEST(TrainBackendParity, AccumulatingTwoHalvesIsTheWholeBatchsStepOnTheCpuEngine) {
  auto rng = testing_support::make_rng(705);
  TempDir dir(rng);
  CliRun run(dir.path);
  TrainConfig tc = run.rc.train;
  PackedLoader loader = run.loader(tc);
  TokenBatch batch = loader.next_batch();
  std::vector<TokenBatch> halves = {dist::slice_rows(batch, 0, batch.B / 2), dist::slice_rows(batch, batch.B / 2, batch.B)};
  std::unique_ptr<Decoder<float>> whole_model = run.model(), halves_model = run.model();
  std::unique_ptr<TrainEngine> whole = make_cpu_engine(*whole_model, adamw_config(tc));
  std::unique_ptr<TrainEngine> accumulated = make_cpu_engine(*halves_model, adamw_config(tc));
  for (int64_t step = 0; step < 3; ++step) {
    StepRecord a = whole->step({batch}, tc, step), b = accumulated->step(halves, tc, step);
    EXPECT_NEAR(b.loss, a.loss, 1e-5 * a.loss) << "step " << step;
    EXPECT_NEAR(b.grad_norm, a.grad_norm, 1e-4 * a.grad_norm) << "step " << step;
  }
  const std::vector<float> &wa = whole_model->params().gradients(), &wb = halves_model->params().gradients();
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < wa.size(); ++i) num += double(wa[i] - wb[i]) * (wa[i] - wb[i]), den += double(wa[i]) * wa[i];
  EXPECT_LT(std::sqrt(num / den), 1e-4) << "the last step's (clipped) gradients";
}

}  // namespace
}  // namespace adept
