// Data parallelism on two GPUs (NCCL, ZeRO-1): the test launches itself twice as ranks
// 0 and 1 (torchrun-style environment, one process per GPU) and compares them with one
// GPU training on the same global batch:
//   - the loss curve equals the single-GPU curve within bf16 noise, step by step;
//   - both ranks report the same loss and gradient norm and end with the same weights,
//     equal to the single GPU's within bf16 noise;
//   - the gradient handed to ADEPT's importance estimates is the same on both ranks;
//   - each rank holds half of the single GPU's optimizer state (fp32 master + moments);
//   - a rank that dies ends the other with an error naming it, within the timeout.
// Skips with fewer than two GPUs or without NCCL. DataParallelWorker.* are the ranks'
// bodies; they skip unless the parent test started them.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <fcntl.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <thread>

#include "backend/cuda/cuda_decoder.hpp"
#include "dist/communicator.hpp"
#include "dist/launch_env.hpp"
#include "common/temp_dir.hpp"
#include "gpu/train_test_util.hpp"
#include "model/decoder.hpp"

extern char** environ;

namespace adept {
namespace {

namespace fs = std::filesystem;
using namespace train_test;

constexpr int64_t kGlobalRows = 8, kS = 32, kMicroRows = 2, kSteps = 30;
constexpr uint64_t kSeed = 20261130;

ModelConfig dp_model() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;  // the head is its own bucket, reduced first
  return c;
}

// The same model on every process: bf16-representable weights from a fixed seed, layer
// 0 frozen (no state, no communication), row multipliers on one matrix (ADEPT's per-row
// learning rates, applied on whichever rank owns each row's piece).
std::unique_ptr<Decoder<float>> dp_host_model() {
  auto m = std::make_unique<Decoder<float>>(dp_model());
  m->init_random(kSeed, 0.08);
  ParameterStore<float>& p = m->params();
  for (int i = 0; i < p.size(); ++i) {
    float* w = p.value(i);
    for (int64_t j = 0; j < p.info(i).numel; ++j) w[j] = round_bf16(w[j]);
    p.set_trainable(i, p.info(i).name.rfind("model.layers.0.", 0) != 0);
  }
  p.allocate_gradients();
  const int up = p.index("model.layers.2.mlp.up_proj.weight");
  std::vector<float> rows(size_t(p.info(up).shape[0]));
  for (size_t r = 0; r < rows.size(); ++r) rows[r] = r % 3 == 0 ? 2.0f : 0.5f;
  p.info(up).row_multiplier = rows;
  p.info(p.index("model.layers.3.self_attn.o_proj.weight")).lr_multiplier = 0.25f;
  return m;
}

struct Rows {
  std::vector<int32_t> tokens, targets;
};

// Global batch of step `step`: a learnable pattern with some noise and ignored targets.
Rows global_batch(int64_t step, int64_t V) {
  std::mt19937_64 rng(kSeed + uint64_t(step) * 7919);
  Rows r;
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V) - 1);
  for (int64_t b = 0; b < kGlobalRows; ++b) {
    const int32_t start = pick(rng), stride = 1 + int32_t(b % 3);
    for (int64_t s = 0; s < kS; ++s) r.tokens.push_back(rng() % 10 == 0 ? pick(rng) : int32_t((start + stride * s) % V));
  }
  for (int64_t n = 0; n < kGlobalRows * kS; ++n) {
    const bool row_end = (n + 1) % kS == 0;
    r.targets.push_back(row_end || n % 11 == 5 ? kIgnoreIndex : r.tokens[n + 1]);
  }
  return r;
}

// Micro-batches of kMicroRows rows covering rows [first_row, first_row + rows).
std::vector<Batch> micro_batches(const Rows& g, int64_t first_row, int64_t rows) {
  std::vector<Batch> out;
  for (int64_t r = first_row; r < first_row + rows; r += kMicroRows)
    out.push_back(Batch{kMicroRows, kS, g.tokens.data() + r * kS, g.targets.data() + r * kS, nullptr});
  return out;
}

CudaDecoderOptions dp_options(std::shared_ptr<dist::Communicator> comm) {
  CudaDecoderOptions o;
  o.max_tokens = kMicroRows * kS;
  o.cuda_graphs = true;  // the non-final micro-batch replays a graph; the final one reduces eagerly
  o.communicator = std::move(comm);
  o.bucket_numel = 8192;  // several buckets on this small model
  return o;
}

struct Curve {
  std::vector<double> loss, grad_norm;
  std::vector<float> weights, m, v, importance_grad;
  size_t optimizer_bytes = 0;
};

void write_floats(const fs::path& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * 4));
}

std::vector<float> read_floats(const fs::path& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  std::vector<float> v(size_t(f.tellg()) / 4);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * 4));
  return v;
}

// Trains kSteps on rows [rank·rows, ...) of each global batch, world = comm's.
Curve train(Decoder<float>& host, std::shared_ptr<dist::Communicator> comm) {
  const int world = comm ? comm->world() : 1, rank = comm ? comm->rank() : 0;
  const int64_t rows = kGlobalRows / world;
  CudaDecoder gpu(host.config(), host.params(), dp_options(comm));
  Curve c;
  c.optimizer_bytes = gpu.optimizer_state_bytes();
  for (int64_t step = 0; step < kSteps; ++step) {
    Rows g = global_batch(step, host.config().vocab_size);
    const double lr = cosine_schedule(step, 3, kSteps, 3e-3, 0.1);
    CudaStepResult r = gpu.train_step(micro_batches(g, rank * rows, rows), lr, 1.0);
    if (r.skipped) ADD_FAILURE() << "step " << step << " skipped";
    c.loss.push_back(r.loss);
    c.grad_norm.push_back(r.grad_norm);
  }
  ParameterStore<float> out = host.params();
  gpu.copy_weights_to_host(out);
  c.weights = out.values();
  if (gpu.steps_taken() != kSteps) ADD_FAILURE() << gpu.steps_taken() << " steps taken";
  gpu.copy_optimizer_state_to_host(out, c.m, c.v);
  // ADEPT's importance path: the gradient of one batch (per rank: its rows), mean over ranks.
  Rows g = global_batch(kSteps, host.config().vocab_size);
  gpu.zero_gradients();
  ForwardOptions fo;
  fo.keep_activations = true;
  gpu.forward(micro_batches(g, rank * kMicroRows, kMicroRows)[0], fo);
  gpu.backward();
  gpu.copy_gradients_to_host(out);
  for (int i = 0; i < out.size(); ++i)
    if (out.info(i).trainable) c.importance_grad.insert(c.importance_grad.end(), out.grad(i), out.grad(i) + out.info(i).numel);
  return c;
}

// ---- the ranks ------------------------------------------------------------------

const char* worker_dir() { return std::getenv("ADEPT_DP_WORKER_DIR"); }

TEST(DataParallelWorker, Rank) {
  if (!worker_dir()) GTEST_SKIP() << "started by TrainDataParallel.* only";
  dist::LaunchEnv env = dist::read_launch_env();
  dist::CommOptions co;
  co.timeout_seconds = 30;
  std::shared_ptr<dist::Communicator> comm = dist::make_communicator(env, co);
  // The trainer's host scalars: summed over the ranks, the same on each.
  double scalars[2] = {double(env.rank + 1), 10.0 * env.rank};
  comm->all_reduce_host(scalars, 2, dist::ReduceOp::sum);
  EXPECT_EQ(scalars[0], 3.0);
  EXPECT_EQ(scalars[1], 10.0);
  comm->barrier();
  auto host = dp_host_model();
  if (const char* die = std::getenv("ADEPT_DP_DIE_RANK"); die && std::atoi(die) == env.rank) {
    // A rank that fails after joining: the others must not hang.
    std::fflush(nullptr);
    std::_Exit(3);
  }
  Curve c = train(*host, comm);
  const fs::path dir = fs::path(worker_dir()) / ("rank" + std::to_string(env.rank));
  fs::create_directories(dir);
  std::ofstream steps(dir / "steps.txt");
  steps.precision(17);
  for (size_t s = 0; s < c.loss.size(); ++s) steps << c.loss[s] << " " << c.grad_norm[s] << "\n";
  std::ofstream(dir / "optimizer_bytes.txt") << c.optimizer_bytes << "\n";
  write_floats(dir / "weights.bin", c.weights);
  write_floats(dir / "m.bin", c.m);
  write_floats(dir / "v.bin", c.v);
  write_floats(dir / "importance.bin", c.importance_grad);
}

// ---- the parent -------------------------------------------------------------------

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

struct Ranks {
  std::vector<int> exit_codes;
  std::vector<std::string> logs;
};

// Starts this binary as ranks 0..world-1 (DataParallelWorker.Rank) and waits for them,
// killing any still running after timeout_s.
Ranks launch(const fs::path& dir, int world, const std::vector<std::string>& extra_env, double timeout_s) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> env{"RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(world),
                                 "LOCAL_RANK=" + std::to_string(r), "MASTER_ADDR=127.0.0.1",
                                 "MASTER_PORT=" + std::to_string(port), "ADEPT_DP_WORKER_DIR=" + dir.string()};
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    // The parent's environment, less any launcher variables (ours must be the only ones).
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e, key = kv.substr(0, kv.find('='));
      bool launcher = key.rfind("OMPI_COMM_WORLD_", 0) == 0 || key.rfind("SLURM_", 0) == 0;
      for (const std::string& ours : env) launcher = launcher || ours.substr(0, ours.find('=')) == key;
      if (!launcher) env.push_back(kv);
    }
    std::vector<char*> envp;
    for (std::string& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string exe = fs::read_symlink("/proc/self/exe").string(), filter = "--gtest_filter=DataParallelWorker.Rank";
    std::vector<char*> argv{exe.data(), filter.data(), nullptr};
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    const std::string log = (dir / ("rank" + std::to_string(r) + ".log")).string();
    posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&files, 1, 2);
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, exe.c_str(), &files, nullptr, argv.data(), envp.data()), 0);
    posix_spawn_file_actions_destroy(&files);
    pids.push_back(pid);
  }
  Ranks out;
  out.exit_codes.assign(world, -1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (int r = 0; r < world; ++r) {
    int status = 0;
    for (;;) {
      pid_t done = waitpid(pids[r], &status, WNOHANG);
      if (done == pids[r]) break;
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    out.exit_codes[r] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::ifstream f(dir / ("rank" + std::to_string(r) + ".log"));
    std::stringstream ss;
    ss << f.rdbuf();
    out.logs.push_back(ss.str());
  }
  return out;
}

int gpu_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

#define REQUIRE_TWO_GPUS_AND_NCCL()                                                        \
  if (gpu_count() < 2) GTEST_SKIP() << "needs two GPUs (found " << gpu_count() << ")"; \
  if (!dist::nccl_available()) GTEST_SKIP() << "this build has no NCCL"

std::vector<std::pair<double, double>> read_steps(const fs::path& path) {
  std::ifstream f(path);
  std::vector<std::pair<double, double>> out;
  double a, b;
  while (f >> a >> b) out.push_back({a, b});
  return out;
}

TEST(TrainDataParallel, TwoGpuLossCurveEqualsOneGpuAtTheSameGlobalBatch) {
  REQUIRE_TWO_GPUS_AND_NCCL();
  testing_support::TempDir tmp(std::random_device{}());
  Ranks ranks = launch(tmp.path, 2, {}, 300.0);
  for (int r = 0; r < 2; ++r) ASSERT_EQ(ranks.exit_codes[r], 0) << "rank " << r << ":\n" << ranks.logs[r];

  auto host = dp_host_model();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  Curve one = train(*host, nullptr);  // one GPU, the whole global batch (4 micro-batches)

  auto s0 = read_steps(tmp.path / "rank0" / "steps.txt"), s1 = read_steps(tmp.path / "rank1" / "steps.txt");
  ASSERT_EQ(s0.size(), size_t(kSteps));
  ASSERT_EQ(s1.size(), size_t(kSteps));
  double mean_gap = 0.0;
  for (int64_t s = 0; s < kSteps; ++s) {
    EXPECT_EQ(s0[s].first, s1[s].first) << "ranks report the global loss: step " << s;
    EXPECT_EQ(s0[s].second, s1[s].second) << "ranks agree on the gradient norm: step " << s;
    // bf16 noise: the ranks' halves are summed in another order than one GPU's micro-batches.
    EXPECT_NEAR(s0[s].first, one.loss[s], 1e-2 * one.loss[s]) << "step " << s;
    EXPECT_NEAR(s0[s].second, one.grad_norm[s], 3e-2 * one.grad_norm[s] + 1e-6) << "step " << s;
    mean_gap += std::abs(s0[s].first - one.loss[s]) / kSteps;
  }
  std::printf("[ info ] loss 1 GPU %.4f -> %.4f, 2 GPUs %.4f -> %.4f, mean |gap| %.2e\n", one.loss.front(),
              one.loss.back(), s0.front().first, s0.back().first, mean_gap);
  EXPECT_LT(mean_gap, 3e-3);
  // A guard that the curves compared above move at all (the comparison is the test): in
  // kSteps steps the small model takes its loss down by about a fifth (H200: 4.81 -> 3.86).
  EXPECT_LT(one.loss.back(), 0.9 * one.loss.front()) << "the model must learn something in " << kSteps << " steps";

  std::vector<float> w0 = read_floats(tmp.path / "rank0" / "weights.bin"), w1 = read_floats(tmp.path / "rank1" / "weights.bin");
  EXPECT_EQ(w0, w1) << "both ranks end with the same fp32 master weights";
  EXPECT_LT(relative_error(w0, one.weights), 2e-2);
  EXPECT_LT(relative_error(read_floats(tmp.path / "rank0" / "m.bin"), one.m), 5e-2);
  EXPECT_LT(relative_error(read_floats(tmp.path / "rank0" / "v.bin"), one.v), 5e-2);
  std::vector<float> g0 = read_floats(tmp.path / "rank0" / "importance.bin"),
                     g1 = read_floats(tmp.path / "rank1" / "importance.bin");
  EXPECT_EQ(g0, g1) << "ADEPT's importance gradient is the same on every rank";

  size_t dp_bytes = 0;
  std::ifstream(tmp.path / "rank0" / "optimizer_bytes.txt") >> dp_bytes;
  std::printf("[ info ] optimizer state per GPU: 1 GPU %zu bytes, 2 GPUs %zu bytes\n", one.optimizer_bytes, dp_bytes);
  EXPECT_LE(double(dp_bytes), 0.5 * double(one.optimizer_bytes) + 3 * 4 * 64 * 16) << "ZeRO-1 halves it";
  EXPECT_GE(double(dp_bytes), 0.5 * double(one.optimizer_bytes));
}

TEST(TrainDataParallel, ADeadRankEndsTheOtherWithAMessageNamingIt) {
  REQUIRE_TWO_GPUS_AND_NCCL();
  testing_support::TempDir tmp(std::random_device{}());
  const auto t0 = std::chrono::steady_clock::now();
  Ranks ranks = launch(tmp.path, 2, {"ADEPT_DP_DIE_RANK=1"}, 120.0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ranks.exit_codes[1], 3);
  EXPECT_NE(ranks.exit_codes[0], 0) << "rank 0 must fail, not succeed or hang";
  EXPECT_LT(ranks.exit_codes[0], 128) << "rank 0 must end by itself (not be killed at the test's deadline):\n"
                                      << ranks.logs[0];
  EXPECT_NE(ranks.logs[0].find("rank 0 of 2"), std::string::npos) << ranks.logs[0];
  std::printf("[ info ] rank 0 gave up after %.1f s\n", seconds);
}

}  // namespace
}  // namespace adept
