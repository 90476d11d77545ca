// Data parallelism in the training loop and the CLI's checks (dist/README.md): one
// process (no launcher, or a communicator of world 1) trains bit for bit as before;
// several processes need the CUDA backend and a global batch the process count divides;
// a rank other than 0 writes nothing and counts the job's tokens; a checkpoint of a
// two-process job resumes in one process at the same global batch; the held-out loss
// summed over the ranks' rows is the whole batch's; train.zero_stage is 1 or 2. The
// collectives themselves run on GPUs only (tests/gpu/train_data_parallel_test.cpp).
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "common/error_of.hpp"
#include "common/random.hpp"
#include "common/temp_dir.hpp"
#include "small_study.hpp"
#include "core/error.hpp"
#include "dist/communicator.hpp"
#include "dist/launch_env.hpp"
#include "dist/sharded_loader.hpp"
#include "pipeline/method_training.hpp"
#include "pipeline/study_data.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
using testing_support::error_of;

using testing_support::TempDir;

RunConfig small_run(const fs::path& dir, std::mt19937_64& rng) {
  testing_study::SmallStudy s;
  s.paragraphs = 40, s.layers = 2, s.steps = 5, s.batch_size = 4, s.every = 2;
  RunConfig rc = testing_study::small_study_config(dir, rng, s);
  validate_run_config(rc);
  return rc;
}

// The study's domain corpus as the only loader source.
std::vector<LoaderSource> domain_sources(const StudyData& data) {
  std::vector<LoaderSource> sources;
  add_loader_sources(sources, data.domain, 1.0);
  return sources;
}

// A communicator that only says how many ranks there are (no collective is reached
// before the checks under test fail).
class CountOnlyCommunicator final : public dist::Communicator {
 public:
  CountOnlyCommunicator(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  bool device_buffers() const override { return false; }
  std::string name() const override { return "count-only"; }
  void all_reduce(const void*, void*, size_t, dist::DataType, dist::ReduceOp, void*) override { unreachable(); }
  void reduce_scatter(const void*, void*, size_t, dist::DataType, dist::ReduceOp, void*) override { unreachable(); }
  void all_gather(const void*, void*, size_t, dist::DataType, void*) override { unreachable(); }
  void synchronize(void*) override { unreachable(); }
  void synchronize_event(void*) override { unreachable(); }
  void all_reduce_host(double*, size_t, dist::ReduceOp) override { unreachable(); }

 private:
  static void unreachable() { FAIL() << "a collective was called"; }
  int rank_, world_;
};

// The CPU reference's OpenMP reductions (the cross-entropy's loss sum, AdamW's gradient
// norm) add the threads' partial sums in the order the threads finish: with more than
// two threads two identical runs differ in the last bits (a 16-core machine showed it;
// OMP_NUM_THREADS=16 shows it anywhere). Tests that compare two runs bit for bit hold
// one of these while they train.
class OneOpenMpThread {
 public:
  OneOpenMpThread() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneOpenMpThread() { omp_set_num_threads(saved_); }
  OneOpenMpThread(const OneOpenMpThread&) = delete;
  OneOpenMpThread& operator=(const OneOpenMpThread&) = delete;

 private:
  int saved_;
};

bool same_values(const Decoder<float>& a, const Decoder<float>& b) {
  const auto& x = a.params().values();
  const auto& y = b.params().values();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), sizeof(float) * x.size()) == 0;
}

TEST(TrainDistributed, NoLauncherVariablesIsOneProcessAndPassesTheChecks) {
  dist::LaunchEnv env = dist::read_launch_env([](const char*) -> const char* { return nullptr; });
  EXPECT_FALSE(env.distributed());
  RunConfig rc = load_run_config("");
  rc.train.batch_size = 3;  // any batch, any backend: world 1 is today's path
  EXPECT_NO_THROW(validate_data_parallel(rc, env.world));
}

TEST(TrainDistributed, CpuBackendUnderSeveralProcessesIsAClearError) {
  RunConfig rc = load_run_config("");
  rc.train.backend = "cpu";
  rc.train.batch_size = 8;
  std::string e = error_of([&] { validate_data_parallel(rc, 2); });
  EXPECT_NE(e.find("train.backend"), std::string::npos) << e;
  EXPECT_NE(e.find("\"cuda\""), std::string::npos) << e;
  EXPECT_NE(e.find("2 processes"), std::string::npos) << e;

  Decoder<float> model(rc.model);
  model.init_random(1, 0.02);
  e = error_of([&] {
    make_train_engine(model, rc.train, 64, 16, std::make_shared<CountOnlyCommunicator>(0, 2));
  });
  EXPECT_NE(e.find("backend = \"cuda\""), std::string::npos) << e;
}

TEST(TrainDistributed, GlobalBatchNotAMultipleOfTheProcessCountIsAnErrorNamingTheField) {
  RunConfig rc = load_run_config("");
  rc.train.backend = "cuda";  // set past validate_run_config: the check itself needs no GPU
  rc.train.batch_size = 6;
  std::string e = error_of([&] { validate_data_parallel(rc, 4); });
  EXPECT_NE(e.find("train.batch_size (6)"), std::string::npos) << e;
  EXPECT_NE(e.find("(4)"), std::string::npos) << e;
  EXPECT_NO_THROW(validate_data_parallel(rc, 3));
  EXPECT_NO_THROW(validate_data_parallel(rc, 2));
}

TEST(TrainDistributed, AWorldOneCommunicatorTrainsBitForBitAsNone) {
  OneOpenMpThread one_thread;
  auto rng = testing_support::make_rng(101);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  Decoder<float> base(rc.model);
  base.init_random(rng(), 0.1);
  MethodModel plain = prepare_method_model("full", base, nullptr, rc);
  MethodTraining a = train_method("full", plain, data, rc, (tmp.path / "plain").string(), false);
  MethodModel local = prepare_method_model("full", base, nullptr, rc);
  MethodTraining b = train_method("full", local, data, rc, (tmp.path / "local").string(), false, -1,
                                  std::make_shared<dist::LocalCommunicator>());
  EXPECT_TRUE(same_values(plain.model, local.model));
  ASSERT_EQ(a.train.steps.size(), b.train.steps.size());
  for (size_t i = 0; i < a.train.steps.size(); ++i) {
    EXPECT_EQ(a.train.steps[i].loss, b.train.steps[i].loss) << i;
    EXPECT_EQ(a.train.steps[i].grad_norm, b.train.steps[i].grad_norm) << i;
  }
  ASSERT_EQ(a.train.evals.size(), b.train.evals.size());
  for (size_t i = 0; i < a.train.evals.size(); ++i) EXPECT_EQ(a.train.evals[i].loss, b.train.evals[i].loss) << i;
  EXPECT_EQ(a.train.tokens, b.train.tokens);
}

TEST(TrainDistributed, AOneRankShardedLoaderTrainsBitForBitAsThePackedLoader) {
  OneOpenMpThread one_thread;
  auto rng = testing_support::make_rng(102);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  const std::vector<LoaderSource> sources = domain_sources(data);
  const uint64_t seed = rng();
  TrainOptions o;
  o.show_progress = false;

  Decoder<float> packed_model(rc.model);
  packed_model.init_random(seed, 0.1);
  PackedLoader packed(sources, data.loader_config(rc.train));
  auto packed_engine = make_cpu_engine(packed_model, adamw_config(rc.train));
  TrainResult a = train(packed_model, *packed_engine, rc.train, loader_train_data(packed), o);

  Decoder<float> sharded_model(rc.model);
  sharded_model.init_random(seed, 0.1);
  dist::ShardedLoader sharded(sources, data.loader_config(rc.train), 0, 1);
  auto sharded_engine = make_cpu_engine(sharded_model, adamw_config(rc.train));
  TrainResult b = train(sharded_model, *sharded_engine, rc.train, loader_train_data(sharded), o);

  EXPECT_TRUE(same_values(packed_model, sharded_model));
  ASSERT_EQ(a.steps.size(), b.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) EXPECT_EQ(a.steps[i].loss, b.steps[i].loss) << i;
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST(TrainDistributed, ARankOtherThanZeroWritesNoMetricsNorCheckpointsAndCountsTheJobsTokens) {
  auto rng = testing_support::make_rng(103);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  const std::vector<LoaderSource> sources = domain_sources(data);
  const uint64_t seed = rng();

  // The loop's own part only: a CPU engine that communicates nothing, told it is rank r
  // of 2 (each "rank" here draws the same batches).
  auto run = [&](int rank, const fs::path& dir, Decoder<float>& model) {
    PackedLoader loader(sources, data.loader_config(rc.train));
    auto engine = make_cpu_engine(model, adamw_config(rc.train));
    TrainOptions o;
    o.show_progress = false;
    o.metrics_path = (dir / "metrics.jsonl").string();
    o.checkpoint.dir = (dir / "checkpoints").string();
    o.checkpoint.every = rc.train.checkpoint_every;
    o.rank = rank;
    o.world = 2;
    fs::create_directories(dir);
    return train(model, *engine, rc.train, loader_train_data(loader), o);
  };
  Decoder<float> lead_model(rc.model), other_model(rc.model);
  lead_model.init_random(seed, 0.1);
  other_model.init_random(seed, 0.1);
  TrainResult lead = run(0, tmp.path / "rank0", lead_model);
  TrainResult other = run(1, tmp.path / "rank1", other_model);

  EXPECT_TRUE(fs::exists(tmp.path / "rank0" / "metrics.jsonl"));
  EXPECT_TRUE(fs::exists(tmp.path / "rank0" / "checkpoints" / "latest.json"));
  EXPECT_FALSE(fs::exists(tmp.path / "rank1" / "metrics.jsonl"));
  EXPECT_FALSE(fs::exists(tmp.path / "rank1" / "checkpoints"));
  EXPECT_TRUE(same_values(lead_model, other_model));
  EXPECT_EQ(lead.tokens, other.tokens);
  // Each rank trains on its share of the global batch: the job's tokens are world × its own.
  EXPECT_EQ(lead.tokens, 2 * rc.train.steps * rc.train.grad_accum * rc.train.batch_size * rc.train.seq_len);
}

TEST(TrainDistributed, ACheckpointOfATwoProcessJobResumesInOneProcessAtTheSameGlobalBatch) {
  auto rng = testing_support::make_rng(104);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);  // 5 steps, global batch 4, checkpoints every 2
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  const std::vector<LoaderSource> sources = domain_sources(data);
  const LoaderConfig lc = data.loader_config(rc.train);
  const uint64_t seed = rng();
  auto options = [&](int rank, int world) {
    TrainOptions o;
    o.show_progress = false;
    o.rank = rank, o.world = world;
    o.checkpoint.dir = (tmp.path / "checkpoints").string();
    o.checkpoint.every = rc.train.checkpoint_every;
    o.checkpoint.key = "the same training";
    return o;
  };

  // Rank 0 of 2 (its rows of each global batch; the engine is the CPU's, which sums
  // nothing over ranks: the loop and the checkpoint are under test), interrupted after
  // 3 steps: the checkpoint at step 2 is the last one written.
  Decoder<float> two(rc.model);
  two.init_random(seed, 0.1);
  dist::ShardedLoader sharded(sources, lc, 0, 2);
  auto two_engine = make_cpu_engine(two, adamw_config(rc.train));
  TrainOptions o2 = options(0, 2);
  o2.stop_after = 3;
  train(two, *two_engine, rc.train, loader_train_data(sharded), o2);
  ASSERT_TRUE(fs::exists(tmp.path / "checkpoints" / "latest.json"));

  // One process resumes from it: the global batches it draws are those one process draws
  // from the start, from step 2 on.
  Decoder<float> one(rc.model);
  one.init_random(rng(), 0.1);  // other weights: the checkpoint's must replace them
  PackedLoader loader(sources, lc);
  std::vector<TokenBatch> drawn;
  TrainData recorded = loader_train_data(loader);
  auto next = recorded.next;
  recorded.next = [&](int64_t step, int64_t micro) { return drawn.emplace_back(next(step, micro)); };
  auto one_engine = make_cpu_engine(one, adamw_config(rc.train));
  TrainResult resumed = train(one, *one_engine, rc.train, recorded, options(0, 1));
  EXPECT_EQ(resumed.resumed_from, 2);
  ASSERT_EQ(drawn.size(), size_t(rc.train.steps - 2));

  PackedLoader reference(sources, lc);
  for (int64_t step = 0; step < rc.train.steps; ++step) {
    TokenBatch b = reference.next_batch();
    if (step < 2) continue;
    EXPECT_EQ(drawn[size_t(step - 2)].B, rc.train.batch_size) << "one process trains on the whole global batch";
    EXPECT_EQ(drawn[size_t(step - 2)].tokens, b.tokens) << "step " << step;
  }
}

// What `adept train` does under two processes, the loop's side of it: each rank's loop
// (loader_train_data over a ShardedLoader, as the CLI wires it) takes the same steps at
// the same learning rates and evaluates at the same steps as one process, and the rows
// it trains on in each step, rank 0's then rank 1's, are that step's rows of one process,
// in order, documents included; with gradient accumulation too (each micro-batch is
// shared out). The engine is the CPU's (the ranks' own arithmetic is not under test);
// it records what it is given.
TEST(TrainDistributed, EachStepOfTwoRanksTrainsOnTheOneProcessRowsAtItsLearningRate) {
  auto rng = testing_support::make_rng(106);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  rc.train.batch_size = 4, rc.train.grad_accum = 2, rc.train.steps = 6, rc.train.eval_every = 2;
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  const std::vector<LoaderSource> sources = domain_sources(data);
  const LoaderConfig lc = data.loader_config(rc.train);
  const uint64_t seed = rng();

  struct Seen {
    std::vector<std::pair<int64_t, int64_t>> draws;  // (step, micro-batch) of each draw
    std::vector<TokenBatch> batches;
    std::vector<size_t> evaluated_at;  // draws made before each evaluation
    TrainResult result;
  };
  auto run = [&](int rank, int world) {
    Seen seen;
    Decoder<float> model(rc.model);
    model.init_random(seed, 0.1);
    auto engine = make_cpu_engine(model, adamw_config(rc.train));
    std::optional<PackedLoader> packed;
    std::optional<dist::ShardedLoader> sharded;
    TrainData data_of_rank;
    if (world == 1) {
      packed.emplace(sources, lc);
      data_of_rank = loader_train_data(*packed);
    } else {
      sharded.emplace(sources, lc, rank, world);
      data_of_rank = loader_train_data(*sharded);
    }
    auto next = data_of_rank.next;
    data_of_rank.next = [&](int64_t step, int64_t micro) {
      seen.draws.push_back({step, micro});
      return seen.batches.emplace_back(next(step, micro));
    };
    TrainOptions o;
    o.show_progress = false;
    o.rank = rank, o.world = world;
    o.evaluate = [&](TrainEngine&) {
      seen.evaluated_at.push_back(seen.draws.size());
      return 0.0;
    };
    seen.result = train(model, *engine, rc.train, data_of_rank, o);
    return seen;
  };
  const Seen one = run(0, 1), r0 = run(0, 2), r1 = run(1, 2);

  const size_t draws = size_t(rc.train.steps * rc.train.grad_accum);
  ASSERT_EQ(one.draws.size(), draws);
  EXPECT_EQ(one.evaluated_at, (std::vector<size_t>{0, 4, 8, 12}));  // steps 0, 2, 4 and the end
  for (const Seen* rank : {&r0, &r1}) {
    EXPECT_EQ(rank->draws, one.draws) << "the same steps and micro-batches, in the same order";
    EXPECT_EQ(rank->evaluated_at, one.evaluated_at) << "evaluations at the same steps";
    ASSERT_EQ(rank->result.steps.size(), one.result.steps.size());
    for (size_t i = 0; i < one.result.steps.size(); ++i) {
      EXPECT_EQ(rank->result.steps[i].step, one.result.steps[i].step);
      EXPECT_EQ(rank->result.steps[i].lr, one.result.steps[i].lr) << "step " << i;
    }
  }
  for (size_t d = 0; d < draws; ++d) {
    const TokenBatch &a = r0.batches[d], &b = r1.batches[d], &whole = one.batches[d];
    ASSERT_EQ(a.B + b.B, whole.B) << "draw " << d;
    EXPECT_EQ(a.B, b.B) << "an equal share of the rows";
    std::vector<int32_t> tokens = a.tokens, targets = a.targets, documents = a.documents;
    tokens.insert(tokens.end(), b.tokens.begin(), b.tokens.end());
    targets.insert(targets.end(), b.targets.begin(), b.targets.end());
    for (size_t i = 1; i < b.documents.size(); ++i) documents.push_back(int32_t(a.B * a.S) + b.documents[i]);
    EXPECT_EQ(tokens, whole.tokens) << "draw " << d << ": rank 0's rows, then rank 1's, are one process's";
    EXPECT_EQ(targets, whole.targets) << "draw " << d;
    EXPECT_EQ(documents, whole.documents) << "draw " << d;
  }
  // The job's token count (each rank counts world x its own) is one process's.
  EXPECT_EQ(r0.result.tokens, one.result.tokens);
  EXPECT_EQ(r1.result.tokens, one.result.tokens);
}

TEST(TrainDistributed, HeldOutLossSummedOverTheRanksRowsIsTheWholeBatchs) {
  auto rng = testing_support::make_rng(105);
  TempDir tmp(rng());
  RunConfig rc = small_run(tmp.path, rng);
  StudyData data = open_study_data(rc, rc.run.out_dir, false);
  Decoder<float> model(rc.model);
  model.init_random(rng(), 0.1);
  auto engine = make_cpu_engine(model, adamw_config(rc.train));
  int batches = 0;
  for (const HeldOutSet& set : data.domain_holdout.sets)
    for (int64_t k = 0; k < set.batch_count(); ++k, ++batches) {
      TokenBatch b = set.batch(k);
      cpu::CrossEntropyResult whole = engine->loss(b);
      for (int world : {2, 3, 4}) {
        // What each rank of a data-parallel engine evaluates (in pieces of at most 1 row,
        // as when its arena is small), summed as all_reduce_host sums it.
        double loss_sum = 0.0;
        int64_t count = 0;
        for (int r = 0; r < world; ++r)
          for (const TokenBatch& piece : dist::rank_pieces(b, r, world, 1)) {
            cpu::CrossEntropyResult part = engine->loss(piece);
            loss_sum += part.loss_sum, count += part.count;
          }
        EXPECT_EQ(count, whole.count) << "world " << world;
        EXPECT_NEAR(loss_sum, whole.loss_sum, 1e-5 * std::abs(whole.loss_sum)) << "world " << world;
      }
    }
  EXPECT_GT(batches, 0);
}

TEST(TrainDistributed, ZeroStageIsOneOrTwo) {
  auto config = [](const std::string& text) {
    TempDir tmp(std::random_device{}());
    const fs::path path = tmp.path / "run.toml";
    std::ofstream(path) << text;
    return load_run_config(path.string());
  };
  EXPECT_EQ(load_run_config("").train.zero_stage, 1);
  EXPECT_EQ(config("[train]\nzero_stage = 2\n").train.zero_stage, 2);
  std::string e = error_of([&] { config("[train]\nzero_stage = 3\n"); });
  EXPECT_NE(e.find("train.zero_stage must be 1"), std::string::npos) << e;
}

}  // namespace
}  // namespace adept
