// train-bench: training throughput of the CUDA backend (CudaDecoder) on a model shape,
// with the dense bf16 GEMM rate measured in the same process for MFU. Prints a summary
// and one JSON line (the last line) for bench/train_peers.py.
//
//   train-bench [--model llama-3.2-1b|tiny] [--batch B] [--seq S] [--steps N] [--warmup W]
//               [--recompute] [--no-graphs] [--attention auto|flash4|fallback] [--data-parallel]
//               [--zero 1|2] [--log-steps]
//
// --data-parallel: one process per GPU, launched with the torchrun-style environment,
// mpirun or srun (dist/launch_env.hpp; bench/train_dp_bench.sh starts them): NCCL with a
// ZeRO optimizer (--zero: 1 shards the optimizer state, 2 the gradients too), --batch
// rows per GPU, tokens/s reported per GPU (rank 0 prints), and NCCL's bus bandwidth for the
// step's two collectives at the model's size (the JSON's *_busbw_gbs; bench/scaling_model.py).
//
// FLOPs per token: 6·N (N = parameters that take part in matrix products: all of them,
// the tied embedding counted once as the head) + causal attention 6·L·S·Hq·D (QKᵀ and PV,
// forward and backward, over the S/2 keys a query sees on average).
#ifdef ADEPT_WITH_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/cuda_decoder.hpp"
#include "backend/cuda/gemm.hpp"
#include "dist/communicator.hpp"
#include "dist/launch_env.hpp"

namespace {

using namespace adept;

struct Args {
  std::string model = "llama-3.2-1b";
  int64_t batch = 2, seq = 4096, steps = 10, warmup = 3;
  bool recompute = false, graphs = true, time_attention = false, data_parallel = false, log_steps = false;
  int zero = 1;
  std::string attention = "auto";
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "train-bench: %s needs a value\n", s.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (s == "--model") a.model = next();
    else if (s == "--batch") a.batch = std::stoll(next());
    else if (s == "--seq") a.seq = std::stoll(next());
    else if (s == "--steps") a.steps = std::stoll(next());
    else if (s == "--warmup") a.warmup = std::stoll(next());
    else if (s == "--recompute") a.recompute = true;
    else if (s == "--no-graphs") a.graphs = false;
    else if (s == "--time-attention") a.time_attention = true;
    else if (s == "--attention") a.attention = next();
    else if (s == "--data-parallel") a.data_parallel = true;
    else if (s == "--zero") a.zero = std::stoi(next());
    else if (s == "--log-steps") a.log_steps = true;
    else {
      std::fprintf(stderr, "usage: train-bench [--model llama-3.2-1b|tiny] [--batch B] [--seq S] [--steps N] "
                           "[--warmup W] [--recompute] [--no-graphs] [--time-attention] [--attention auto|flash4|fallback] "
                           "[--data-parallel] [--zero 1|2] [--log-steps]\n");
      std::exit(2);
    }
  }
  return a;
}

ModelConfig model_config(const std::string& name) {
  ModelConfig c;
  if (name == "llama-3.2-1b") {  // meta-llama/Llama-3.2-1B config.json
    c.vocab_size = 128256;
    c.hidden_size = 2048;
    c.intermediate_size = 8192;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.head_dim = 64;
    c.max_position_embeddings = 131072;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 500000.0;
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = 32.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.tie_word_embeddings = true;
  } else if (name == "tiny") {
    c.vocab_size = 256;
    c.hidden_size = 256;
    c.intermediate_size = 768;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.max_position_embeddings = 4096;
    c.tie_word_embeddings = true;
  } else {
    std::fprintf(stderr, "train-bench: unknown model '%s'\n", name.c_str());
    std::exit(2);
  }
  c.finalize_and_validate();
  return c;
}

int64_t matmul_parameters(const ModelConfig& c) {
  const int64_t C = c.hidden_size, I = c.intermediate_size;
  int64_t layer = C * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * C + 3 * C * I;
  return c.num_hidden_layers * layer + c.vocab_size * C;  // + the head (tied or not)
}

// Dense bf16 GEMM rate through the backend's own cuBLASLt wrapper, 8192³, median of 20.
double measure_gemm_tflops() {
  const int64_t n = 8192;
  void *a = nullptr, *b = nullptr, *d = nullptr, *ws = nullptr;
  ADEPT_CUDA_CHECK(cudaMalloc(&a, n * n * 2));
  ADEPT_CUDA_CHECK(cudaMalloc(&b, n * n * 2));
  ADEPT_CUDA_CHECK(cudaMalloc(&d, n * n * 2));
  ADEPT_CUDA_CHECK(cudaMalloc(&ws, 32 << 20));
  {
    // Random data, not zeros (zeros run faster than real data).
    std::vector<uint16_t> host(n * n);
    std::mt19937 rng(1);
    for (auto& x : host) x = uint16_t(0x3C00 + (rng() & 0x3FF)) ^ uint16_t((rng() & 1) << 15);  // ±[2^-7, 2)
    ADEPT_CUDA_CHECK(cudaMemcpy(a, host.data(), n * n * 2, cudaMemcpyHostToDevice));
    ADEPT_CUDA_CHECK(cudaMemcpy(b, host.data(), n * n * 2, cudaMemcpyHostToDevice));
  }
  cuda::Gemm gemm(ws, 32 << 20);
  cuda::GemmArgs g;
  g.M = g.N = g.K = n;
  g.A = a, g.lda = n;
  g.B = b, g.trans_b = true, g.ldb = n;
  g.D = d, g.ldd = n;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 3; ++i) gemm.run(g, nullptr);
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(e0);
    gemm.run(g, nullptr);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaFree(a), cudaFree(b), cudaFree(d), cudaFree(ws);
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  return 2.0 * double(n) * n * n / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

// Data parallel: NCCL's bus bandwidth for the two collectives a ZeRO step runs, at the
// model's size (capped at 1 GiB a buffer): the fp32 gradient's reduce-scatter and the bf16
// weights' all-gather, median of 5 after 2 warm-ups, on a stream of its own, before the
// model takes its memory. busbw = size (N - 1) / N / time (NCCL's convention, as nccl-tests
// print it: comparable across GPU counts), in GB/s. bench/scaling_model.py turns it and the
// step times into the scaling model.
struct CollectiveRates {
  double reduce_scatter_gbs = 0, all_gather_gbs = 0;
};

CollectiveRates measure_collectives(dist::Communicator& comm, int64_t parameters) {
  const int world = comm.world();
  const size_t count = std::min<size_t>(size_t(parameters), size_t(1) << 28) / size_t(world) * size_t(world);
  void *send = nullptr, *recv = nullptr;
  ADEPT_CUDA_CHECK(cudaMalloc(&send, count * 4));
  ADEPT_CUDA_CHECK(cudaMalloc(&recv, count * 4));
  ADEPT_CUDA_CHECK(cudaMemset(send, 0, count * 4));  // the values do not change the time; defined anyway
  cudaStream_t stream = nullptr;
  ADEPT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  ADEPT_CUDA_CHECK(cudaEventCreate(&e0));
  ADEPT_CUDA_CHECK(cudaEventCreate(&e1));
  auto busbw = [&](auto collective, size_t bytes) {
    std::vector<float> ms;
    for (int i = 0; i < 7; ++i) {
      ADEPT_CUDA_CHECK(cudaEventRecord(e0, stream));
      collective();
      ADEPT_CUDA_CHECK(cudaEventRecord(e1, stream));
      comm.synchronize(stream);
      float t = 0;
      ADEPT_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 2) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return double(bytes) * double(world - 1) / double(world) / (double(ms[ms.size() / 2]) * 1e-3) / 1e9;
  };
  const size_t shard = count / size_t(world);
  CollectiveRates r;
  r.reduce_scatter_gbs = busbw(
      [&] { comm.reduce_scatter(send, recv, shard, dist::DataType::f32, dist::ReduceOp::sum, stream); }, count * 4);
  r.all_gather_gbs = busbw([&] { comm.all_gather(send, recv, shard, dist::DataType::bf16, stream); }, count * 2);
  ADEPT_CUDA_CHECK(cudaEventDestroy(e0));
  ADEPT_CUDA_CHECK(cudaEventDestroy(e1));
  ADEPT_CUDA_CHECK(cudaStreamDestroy(stream));
  ADEPT_CUDA_CHECK(cudaFree(send));
  ADEPT_CUDA_CHECK(cudaFree(recv));
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  ModelConfig c = model_config(a.model);
  try {
    // Data parallel: the communicator makes this rank's GPU current, before anything else.
    std::shared_ptr<dist::Communicator> comm;
    if (a.data_parallel) comm = dist::make_communicator(dist::read_launch_env());
    const int rank = comm ? comm->rank() : 0, world = comm ? comm->world() : 1;
    int device = 0;
    ADEPT_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop{};
    ADEPT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    ADEPT_CUDA_CHECK(cudaFree(nullptr));  // create the context before the memory baseline
    size_t free0 = 0, total = 0;
    ADEPT_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
    const double gemm_tflops = measure_gemm_tflops();
    const int64_t parameters = matmul_parameters(c);
    const CollectiveRates collectives =
        comm && world > 1 ? measure_collectives(*comm, parameters) : CollectiveRates{};

    CudaDecoderOptions o;
    o.max_tokens = a.batch * a.seq;
    o.max_seq_len = a.seq;
    o.recompute = a.recompute;
    o.cuda_graphs = a.graphs;
    o.attention = a.attention;
    o.time_attention = a.time_attention;
    o.communicator = comm;
    o.zero_stage = a.zero;
    auto t_build = std::chrono::steady_clock::now();
    CudaDecoder model(c, o, 1234, 0.02);
    const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count();

    // A few batches of uniform random tokens, cycled; targets = next token.
    std::mt19937_64 rng(7 + uint64_t(rank));  // each rank its own tokens
    std::uniform_int_distribution<int32_t> pick(0, int32_t(c.vocab_size) - 1);
    const int64_t N = a.batch * a.seq;
    std::vector<std::vector<int32_t>> tokens(4), targets(4);
    for (int k = 0; k < 4; ++k) {
      for (int64_t n = 0; n <= N; ++n) tokens[k].push_back(pick(rng));
      targets[k].assign(tokens[k].begin() + 1, tokens[k].end());
      tokens[k].pop_back();
    }
    auto batch = [&](int64_t step) {
      return Batch{a.batch, a.seq, tokens[step % 4].data(), targets[step % 4].data(), nullptr};
    };
    double first_loss = 0, last_loss = 0;
    // --log-steps: every step's loss (before its update), gradient norm (before clipping) and
    // whether it was skipped, on stderr (the same batches cycle, so the loss of a batch seen
    // before shows what the updates learned).
    auto log_step = [&](int64_t s, const CudaStepResult& r) {
      if (a.log_steps && rank == 0)
        std::fprintf(stderr, "step %lld (batch %lld): loss %.4f, grad_norm %.4g%s\n", (long long)s, (long long)(s % 4),
                     r.loss, r.grad_norm, r.skipped ? ", skipped" : "");
    };
    for (int64_t s = 0; s < a.warmup; ++s) {
      CudaStepResult r = model.train_step({batch(s)}, 1e-4, 1.0);
      if (s == 0) first_loss = r.loss;
      log_step(s, r);
    }
    ADEPT_CUDA_CHECK(cudaDeviceSynchronize());
    auto t0 = std::chrono::steady_clock::now();
    int64_t skipped = 0;
    double attention_ms = 0.0;
    for (int64_t s = 0; s < a.steps; ++s) {
      CudaStepResult r = model.train_step({batch(a.warmup + s)}, 1e-4, 1.0);
      log_step(a.warmup + s, r);
      last_loss = r.loss;
      skipped += r.skipped;
      attention_ms += model.attention_milliseconds() / double(a.steps);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    size_t free1 = 0;
    ADEPT_CUDA_CHECK(cudaMemGetInfo(&free1, &total));

    const double tokens_per_s = double(N * a.steps) / seconds;
    const double flops_per_token =
        6.0 * double(parameters) + 6.0 * double(c.num_hidden_layers) * double(a.seq) * double(c.q_dim());
    const double mfu = tokens_per_s * flops_per_token / (gemm_tflops * 1e12);
    const double used_gib = double(free0 - free1) / double(1 << 30);
    const double optimizer_gib = double(model.optimizer_state_bytes()) / double(1 << 30);
    const double gradient_gib = double(model.gradient_bytes()) / double(1 << 30);
    if (world > 1)
      std::fprintf(stderr, "rank %d of %d: %.0f tokens/s on this GPU, %.1f ms/step, optimizer state %.2f GiB\n", rank,
                   world, tokens_per_s, 1e3 * seconds / double(a.steps), optimizer_gib);
    if (rank != 0) return 0;
    std::printf("%s\n", model.memory_report().c_str());
    if (world > 1)
      std::printf("NCCL bus bandwidth (%d GPUs, %lld parameters' buffers, capped at 1 GiB): reduce-scatter fp32 %.0f GB/s, "
                  "all-gather bf16 %.0f GB/s\n",
                  world, (long long)parameters, collectives.reduce_scatter_gbs, collectives.all_gather_gbs);
    std::printf("device %s | model %s | batch %lld x %lld | attention %s | graphs %s | recompute %s | GPUs %d "
                "(tokens/s below per GPU; optimizer state %.2f GiB per GPU)\n",
                prop.name, a.model.c_str(), (long long)a.batch, (long long)a.seq, model.attention_backend().c_str(),
                model.graphs_active() ? "replayed" : "off", a.recompute ? "on" : "off", world, optimizer_gib);
    std::printf("GEMM %.0f TFLOP/s | %.0f tokens/s | %.1f ms/step | MFU %.1f%% | device memory %.2f GiB (arena %.2f) "
                "| loss %.3f -> %.3f | setup %.1f s | skipped %lld | attention %.1f ms/step\n",
                gemm_tflops, tokens_per_s, 1e3 * seconds / double(a.steps), 100 * mfu, used_gib,
                double(model.device_bytes()) / double(1 << 30), first_loss, last_loss, build_s, (long long)skipped,
                attention_ms);
    std::printf("{\"engine\": \"adept-cuda\", \"device\": \"%s\", \"model\": \"%s\", \"batch\": %lld, \"seq\": %lld, "
                "\"tokens_per_s\": %.1f, \"step_ms\": %.2f, \"gemm_tflops\": %.1f, \"flops_per_token\": %.6e, "
                "\"mfu\": %.4f, \"peak_mem_gib\": %.3f, \"arena_gib\": %.3f, \"attention\": \"%s\", "
                "\"graphs\": %s, \"recompute\": %s, \"loss_first\": %.4f, \"loss_last\": %.4f, \"attention_ms\": %.2f, "
                "\"gpus\": %d, \"optimizer_state_gib\": %.3f, \"gradient_gib\": %.3f, \"zero\": %d, "
                "\"parameters\": %lld, \"reduce_scatter_busbw_gbs\": %.1f, \"all_gather_busbw_gbs\": %.1f}\n",
                prop.name, a.model.c_str(), (long long)a.batch, (long long)a.seq, tokens_per_s,
                1e3 * seconds / double(a.steps), gemm_tflops, flops_per_token, mfu, used_gib,
                double(model.device_bytes()) / double(1 << 30), model.attention_backend().c_str(),
                model.graphs_active() ? "true" : "false", a.recompute ? "true" : "false", first_loss, last_loss,
                attention_ms, world, optimizer_gib, gradient_gib, model.zero_stage(), (long long)parameters,
                collectives.reduce_scatter_gbs, collectives.all_gather_gbs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

#else
#include <cstdio>
int main() {
  std::fprintf(stderr, "train-bench: built without CUDA\n");
  return 1;
}
#endif
