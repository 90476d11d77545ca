// flash4-bench: forward and backward TFLOPs of flash4's CUDA backend, the way the
// FlashAttention papers measure them: bf16, BSHD, 16k tokens in total (batch = 16384 / S),
// hidden 2048 (heads = 2048 / d), d in {64, 128, 256}, S in {512 .. 16384}, causal off/on.
// FLOPs by convention: forward 4 B H S^2 d (halved under causal), backward 2.5x forward.
// Timing: CUDA events around each call, warm-up first, median of the repeats, inputs
// rotated over two sets (random normal, never zeros). The timed calls are queued behind a
// GPU spin long enough for the host to enqueue them all, so the events time the GPU alone:
// a call of ~25 us (decode, a short prefill) otherwise reads as its host-side preparation
// (tensor maps, launch), which varied 0.019 - 0.037 ms between identical runs on an H200.
//
//   flash4-bench [--quick] [--repeats N] [--csv FILE] [--tuning] [--d D] [--seqlen S] [--causal 0|1]
//                [--deterministic 0|1]
//     --quick   d = 128 only, S in {1024, 4096, 16384}
//     --tuning  also times the forward's FA4 switches (exp2 emulation on, always-rescale)
//     --d, --seqlen, --causal   run only that configuration (e.g. under a profiler)
//     --deterministic 0|1   time only the backward with atomic (0) or deterministic (1) dQ;
//               by default both ("bwd" and "bwd-det" columns; each row ends with the backend
//               that ran the deterministic one: the Hopper kernel or the portable fallback)
//   flash4-bench --varlen [--rows R] [--row-len L] [--mean-doc M] [--hq H] [--hkv H] [--d D] [--causal 0|1]
//                [--deterministic 0|1]
//     a packed batch as adept trains on it: R rows of L tokens (default 4 x 4096), each cut
//     into documents of random lengths (uniform in [1, 2M - 1], default M = 1024; the last
//     one cut at the row's end; a fixed seed, so every run sees the same documents), q / k / v
//     the column blocks of one fused qkv buffer, cu_seqlens_q = cu_seqlens_k, GQA (default
//     Hq 32, Hkv 8, d 64, causal); FLOPs by convention per document (4 Hq L^2 d, halved
//     under causal). Prints the backend that ran each direction (FLASH4_BACKEND=portable
//     forces the portable kernels): "varlen | fwd B MS ms TF TF | bwd B MS ms TF TF |
//     bwd-det B MS ms TF TF" (a column not timed, --deterministic, reads "- -1").
//   flash4-bench --paged PS [--batch B] [--seqlen-q Q] [--seqlen-k K] [--hq H] [--hkv H] [--d D] [--causal 0|1]
//     a KV cache: B sequences of K keys each in pages of PS rows, shuffled over one pool, Q
//     queries each (default 8 x 8192 keys, Q = 1: decode; Hq 32, Hkv 8, d 128, not causal),
//     the forward on the paged K / V against the same K / V contiguous ([B, K, Hkv, D]), one
//     process: ms, TFLOP/s, GB/s of K and V read once, their ratio, the largest difference
//     of the two outputs (the same keys in the same order: expect 0), and each side's host
//     time per call (flash4's preparation and launch: a decode step's latency floor).
//     FLASH4_HOPPER_PAGED=0 sends the paged side to the portable kernels.
//   The Hopper backward's dQ path comes from the environment, for A/B runs: unset (bulk
//   reduce-add from shared memory; non-deterministic calls hand each consumer warpgroup its
//   buffers separately, the default), FLASH4_HOPPER_DQ=bulk (the two in lock-step) or
//   FLASH4_HOPPER_DQ=atomics (float2 atomics); the header line says which ("hopper dQ: ...";
//   FLASH4_LOG=1 confirms it per call, and names the atomics when bulk could not run).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <flash4/flash4.h>
#include <flash4/flash4.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

#define BENCH_CUDA(call)                                                                               \
  do {                                                                                                 \
    cudaError_t status_ = (call);                                                                      \
    if (status_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s failed at %s:%d: %s\n", #call, __FILE__, __LINE__, cudaGetErrorString(status_)); \
      std::exit(1);                                                                                    \
    }                                                                                                  \
  } while (0)

void check(flash4_status status, const char* what) {
  if (status != FLASH4_OK) {
    std::fprintf(stderr, "%s failed (%d): %s\n", what, int(status), flash4_last_error());
    std::exit(1);
  }
}

__global__ void fill_normal_bf16(__nv_bfloat16* x, int64_t n, uint64_t seed) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    // Box-Muller on a counter-based hash: reproducible, cheap, not zeros.
    uint64_t h = (uint64_t(i) + seed) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    const float u1 = (float((h >> 40) & 0xFFFFFF) + 1.0f) / 16777217.0f;
    const float u2 = float(h & 0xFFFFFF) / 16777216.0f;
    x[i] = __float2bfloat16(sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
  }
}

struct Buffer {
  void* ptr = nullptr;
  explicit Buffer(size_t bytes) { BENCH_CUDA(cudaMalloc(&ptr, bytes)); }
  ~Buffer() { cudaFree(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

struct Shape {
  int B, S, H, D;
  bool causal;
};

// One input set: q, k, v, out, dout, lse and the gradients, [B, S, H, D] bf16.
struct Set {
  Buffer q, k, v, out, dout, dq, dk, dv, lse;
  explicit Set(const Shape& s, uint64_t seed)
      : q(bytes(s)), k(bytes(s)), v(bytes(s)), out(bytes(s)), dout(bytes(s)), dq(bytes(s)), dk(bytes(s)),
        dv(bytes(s)), lse(size_t(s.B) * s.H * s.S * 4) {
    const int64_t n = int64_t(s.B) * s.S * s.H * s.D;
    for (Buffer* b : {&q, &k, &v, &dout}) fill_normal_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(b->ptr), n, seed++ * n);
    BENCH_CUDA(cudaGetLastError());
  }
  static size_t bytes(const Shape& s) { return size_t(s.B) * s.S * s.H * s.D * 2; }
};

flash4_tensor bshd(void* data, const Shape& s) {
  flash4_tensor t{};
  t.data = data;
  t.dtype = FLASH4_BF16;
  t.rank = 4;
  const int64_t shape[4] = {s.B, s.S, s.H, s.D};
  const int64_t stride[4] = {int64_t(s.S) * s.H * s.D, int64_t(s.H) * s.D, s.D, 1};
  for (int i = 0; i < 4; ++i) t.shape[i] = shape[i], t.stride[i] = stride[i];
  return t;
}

flash4_tensor lse_view(void* data, const Shape& s) {
  flash4_tensor t{};
  t.data = data;
  t.dtype = FLASH4_F32;
  t.rank = 3;
  const int64_t shape[3] = {s.B, s.H, s.S};
  const int64_t stride[3] = {int64_t(s.H) * s.S, s.S, 1};
  for (int i = 0; i < 3; ++i) t.shape[i] = shape[i], t.stride[i] = stride[i];
  return t;
}

flash4_forward_args forward_args(Set& set, const Shape& s, flash4_tuning tuning) {
  flash4_forward_args a;
  flash4_forward_args_init(&a);
  a.device = FLASH4_CUDA;
  a.q = bshd(set.q.ptr, s), a.k = bshd(set.k.ptr, s), a.v = bshd(set.v.ptr, s), a.out = bshd(set.out.ptr, s);
  a.lse = lse_view(set.lse.ptr, s);
  a.options.causal = s.causal;
  a.tuning = tuning;
  return a;
}

flash4_backward_args backward_args(Set& set, const Shape& s, bool deterministic = false) {
  flash4_backward_args a;
  flash4_backward_args_init(&a);
  a.device = FLASH4_CUDA;
  a.q = bshd(set.q.ptr, s), a.k = bshd(set.k.ptr, s), a.v = bshd(set.v.ptr, s), a.out = bshd(set.out.ptr, s);
  a.dout = bshd(set.dout.ptr, s), a.lse = lse_view(set.lse.ptr, s);
  a.dq = bshd(set.dq.ptr, s), a.dk = bshd(set.dk.ptr, s), a.dv = bshd(set.dv.ptr, s);
  a.options.causal = s.causal;
  a.deterministic = deterministic;
  return a;
}

// Spins on the GPU for `ns` nanoseconds of %globaltimer; 4 ns clock cycles at most (about
// 2 ns at ~2 GHz), should the timer not advance.
__global__ void spin_kernel(unsigned long long ns) {
  unsigned long long start = 0, now = 0;
  const long long cycles = clock64();
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns && clock64() - cycles < 4 * static_cast<long long>(ns));
}

// Host microseconds per call of the last median_ms's timed calls (their enqueueing, while the
// GPU spins: flash4's host-side cost per call, e.g. a decode step's latency floor).
double last_host_us_per_call = 0;

// Median milliseconds of `repeats` timed calls of run(i) after `warmup` untimed ones. The
// warm-up's host time per call (enqueueing only, no synchronisation) sizes a spin kernel
// that the timed calls queue behind: 1.5x their enqueueing plus 20 us, at most 20 ms.
template <class Run>
double median_ms(int warmup, int repeats, Run&& run) {
  const auto host_start = std::chrono::steady_clock::now();
  for (int i = 0; i < warmup; ++i) run(i);
  const double enqueue_ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - host_start).count() /
      std::max(warmup, 1);
  BENCH_CUDA(cudaDeviceSynchronize());
  const double spin_ns = std::min(20e6, 1.5 * enqueue_ns * (repeats + 1) + 20e3);
  spin_kernel<<<1, 1>>>(static_cast<unsigned long long>(spin_ns));
  BENCH_CUDA(cudaGetLastError());
  std::vector<cudaEvent_t> start(repeats), stop(repeats);
  for (int i = 0; i < repeats; ++i) {
    BENCH_CUDA(cudaEventCreate(&start[i]));
    BENCH_CUDA(cudaEventCreate(&stop[i]));
  }
  const auto timed_start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) {
    BENCH_CUDA(cudaEventRecord(start[i]));
    run(i);
    BENCH_CUDA(cudaEventRecord(stop[i]));
  }
  last_host_us_per_call =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - timed_start).count() /
      std::max(repeats, 1);
  BENCH_CUDA(cudaDeviceSynchronize());
  std::vector<double> ms(repeats);
  for (int i = 0; i < repeats; ++i) {
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, start[i], stop[i]));
    ms[i] = t;
    cudaEventDestroy(start[i]);
    cudaEventDestroy(stop[i]);
  }
  std::sort(ms.begin(), ms.end());
  return ms[repeats / 2];
}

double forward_flops(const Shape& s) {
  const double f = 4.0 * s.B * s.H * double(s.S) * s.S * s.D;
  return s.causal ? f / 2 : f;
}

// ---- varlen (adept's packed batches) ------------------------------------------------------

struct VarlenShape {
  int rows = 4, row_len = 4096, mean_doc = 1024, hq = 32, hkv = 8, d = 64;
  bool causal = true;
};

// Document boundaries: each row cut into documents of uniform random length in
// [1, 2 mean - 1], the last one cut at the row's end.
std::vector<int32_t> document_boundaries(const VarlenShape& v) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> length(1, std::max(1, 2 * v.mean_doc - 1));
  std::vector<int32_t> cu = {0};
  for (int r = 0; r < v.rows; ++r) {
    const int32_t end = cu.back() + v.row_len;
    while (cu.back() < end) cu.push_back(std::min(end, cu.back() + length(rng)));
  }
  return cu;
}

// The Hopper backward's dQ path this process asked for (FLASH4_HOPPER_DQ, read by flash4 at
// each call).
const char* hopper_dq_path() {
  const char* v = std::getenv("FLASH4_HOPPER_DQ");
  if (v != nullptr && std::strcmp(v, "atomics") == 0) return "float2 atomics (FLASH4_HOPPER_DQ=atomics)";
  if (v != nullptr && std::strcmp(v, "bulk") == 0) return "bulk reduce-add, warpgroups in lock-step (FLASH4_HOPPER_DQ=bulk)";
  return "bulk reduce-add, per-warpgroup hand-over for non-deterministic calls (the default)";
}

// Which backward dQ modes to time (--deterministic).
struct BackwardModes {
  bool atomic = true, deterministic = true;
};

int run_varlen(const VarlenShape& v, int repeats, BackwardModes modes) {
  const std::vector<int32_t> cu = document_boundaries(v);
  const int64_t N = cu.back(), Hq = v.hq, Hkv = v.hkv, D = v.d, W = (Hq + 2 * Hkv) * D;
  const int batch = int(cu.size()) - 1;
  int max_len = 0;
  double flops = 0;
  for (int b = 0; b < batch; ++b) {
    const double L = cu[b + 1] - cu[b];
    max_len = std::max(max_len, int(L));
    flops += 4.0 * Hq * L * L * D * (v.causal ? 0.5 : 1.0);
  }
  Buffer qkv(size_t(N * W) * 2), dqkv(size_t(N * W) * 2), out(size_t(N * Hq * D) * 2), dout(size_t(N * Hq * D) * 2),
      lse(size_t(Hq * N) * 4), d_cu(cu.size() * 4);
  fill_normal_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(qkv.ptr), N * W, 1);
  fill_normal_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(dout.ptr), N * Hq * D, 2 * N * W);
  BENCH_CUDA(cudaGetLastError());
  BENCH_CUDA(cudaMemcpy(d_cu.ptr, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  auto column = [&](void* base, int64_t offset, int64_t H) {
    return flash4::strided(static_cast<__nv_bfloat16*>(base) + offset, FLASH4_BF16, {N, H, D}, {W, D, 1});
  };
  flash4_forward_args f;
  flash4_forward_args_init(&f);
  f.device = FLASH4_CUDA;
  f.q = column(qkv.ptr, 0, Hq), f.k = column(qkv.ptr, Hq * D, Hkv), f.v = column(qkv.ptr, (Hq + Hkv) * D, Hkv);
  f.out = flash4::strided(out.ptr, FLASH4_BF16, {N, Hq, D}, {Hq * D, D, 1});
  f.lse = flash4::strided(lse.ptr, FLASH4_F32, {Hq, N}, {N, 1});
  f.options.causal = v.causal;
  f.varlen.cu_seqlens_q = f.varlen.cu_seqlens_k = static_cast<const int32_t*>(d_cu.ptr);
  f.varlen.batch = batch;
  f.varlen.max_seqlen_q = f.varlen.max_seqlen_k = max_len;
  flash4_backward_args b;
  flash4_backward_args_init(&b);
  b.device = FLASH4_CUDA;
  b.q = f.q, b.k = f.k, b.v = f.v, b.out = f.out, b.lse = f.lse, b.options = f.options, b.varlen = f.varlen;
  b.dout = flash4::strided(dout.ptr, FLASH4_BF16, {N, Hq, D}, {Hq * D, D, 1});
  b.dq = column(dqkv.ptr, 0, Hq), b.dk = column(dqkv.ptr, Hq * D, Hkv), b.dv = column(dqkv.ptr, (Hq + Hkv) * D, Hkv);

  check(flash4_forward(&f), "flash4_forward");
  const std::string fwd_backend = flash4_last_backend();
  const double fwd_ms = median_ms(3, repeats, [&](int) { check(flash4_forward(&f), "flash4_forward"); });
  // One backward mode: "NAME BACKEND MS ms TF TF", or "NAME - -1 ms -1 TF" when not timed.
  auto backward_column = [&](const char* name, bool deterministic, bool timed) {
    char text[128];
    if (!timed) {
      std::snprintf(text, sizeof text, "%s - -1 ms -1 TF", name);
      return std::string(text);
    }
    b.deterministic = deterministic;
    check(flash4_backward(&b), "flash4_backward");
    const std::string backend = flash4_last_backend();
    const double ms = median_ms(3, repeats, [&](int) { check(flash4_backward(&b), "flash4_backward"); });
    std::snprintf(text, sizeof text, "%s %s %.3f ms %.1f TF", name, backend.c_str(), ms, 2.5 * flops / ms * 1e-9);
    return std::string(text);
  };
  const std::string bwd = backward_column("bwd", false, modes.atomic);
  const std::string det = backward_column("bwd-det", true, modes.deterministic);
  std::printf("varlen %d x %d tokens, %d documents (longest %d, mean %.0f), Hq %lld Hkv %lld d %lld causal %d, fused qkv\n",
              v.rows, v.row_len, batch, max_len, double(N) / batch, (long long)Hq, (long long)Hkv, (long long)D,
              int(v.causal));
  std::printf("hopper dQ: %s\n", hopper_dq_path());
  std::printf("varlen | fwd %s %.3f ms %.1f TF | %s | %s\n", fwd_backend.c_str(), fwd_ms, flops / fwd_ms * 1e-9,
              bwd.c_str(), det.c_str());
  return 0;
}

// ---- paged KV (a KV cache) -----------------------------------------------------------------

struct PagedShape {
  int page_size = 0, batch = 8, sq = 1, sk = 8192, hq = 32, hkv = 8, d = 128;
  bool causal = false;
};

int run_paged(const PagedShape& s, int repeats) {
  const int64_t B = s.batch, Sq = s.sq, Sk = s.sk, Hq = s.hq, Hkv = s.hkv, D = s.d, ps = s.page_size;
  const int64_t per_seq = (Sk + ps - 1) / ps, pages = B * per_seq, row = Hkv * D;
  // The same keys twice: contiguous [B, Sk, Hkv, D], and copied page by page into a pool of
  // `pages` pages in shuffled order (page_table[b][j] holds keys j ps .. of sequence b).
  Buffer q(size_t(B * Sq * Hq * D) * 2), out_dense(size_t(B * Sq * Hq * D) * 2), out_paged(size_t(B * Sq * Hq * D) * 2),
      lse(size_t(B * Hq * Sq) * 4), k(size_t(B * Sk * row) * 2), v(size_t(B * Sk * row) * 2),
      k_pages(size_t(pages * ps * row) * 2), v_pages(size_t(pages * ps * row) * 2), table(size_t(pages) * 4),
      used(size_t(B) * 4);
  fill_normal_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(q.ptr), B * Sq * Hq * D, 1);
  fill_normal_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(k.ptr), B * Sk * row, 7 * B * Sk * row);
  fill_normal_bf16<<<1024, 256>>>(static_cast<__nv_bfloat16*>(v.ptr), B * Sk * row, 13 * B * Sk * row);
  BENCH_CUDA(cudaGetLastError());
  std::vector<int32_t> order(size_t(pages), 0);
  for (int64_t i = 0; i < pages; ++i) order[size_t(i)] = int32_t(i);
  std::shuffle(order.begin(), order.end(), std::mt19937(1234));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < per_seq; ++j) {
      const int64_t rows = std::min(ps, Sk - j * ps), page = order[size_t(b * per_seq + j)];
      const size_t from = size_t((b * Sk + j * ps) * row) * 2, to = size_t(page * ps * row) * 2;
      for (auto [dst, src] : {std::pair{&k_pages, &k}, {&v_pages, &v}})
        BENCH_CUDA(cudaMemcpy(static_cast<char*>(dst->ptr) + to, static_cast<const char*>(src->ptr) + from,
                              size_t(rows * row) * 2, cudaMemcpyDeviceToDevice));
    }
  const std::vector<int32_t> used_host(static_cast<size_t>(B), static_cast<int32_t>(Sk));
  BENCH_CUDA(cudaMemcpy(table.ptr, order.data(), size_t(pages) * 4, cudaMemcpyHostToDevice));
  BENCH_CUDA(cudaMemcpy(used.ptr, used_host.data(), size_t(B) * 4, cudaMemcpyHostToDevice));

  auto bf16 = [](void* data, std::initializer_list<int64_t> shape) {
    std::vector<int64_t> stride(shape.size(), 1);
    const std::vector<int64_t> dims(shape);
    for (int i = int(dims.size()) - 2; i >= 0; --i) stride[size_t(i)] = stride[size_t(i) + 1] * dims[size_t(i) + 1];
    flash4_tensor t{};
    t.data = data, t.dtype = FLASH4_BF16, t.rank = int(dims.size());
    for (int i = 0; i < t.rank; ++i) t.shape[i] = dims[size_t(i)], t.stride[i] = stride[size_t(i)];
    return t;
  };
  flash4_forward_args dense;
  flash4_forward_args_init(&dense);
  dense.device = FLASH4_CUDA;
  dense.q = bf16(q.ptr, {B, Sq, Hq, D});
  dense.k = bf16(k.ptr, {B, Sk, Hkv, D}), dense.v = bf16(v.ptr, {B, Sk, Hkv, D});
  dense.out = bf16(out_dense.ptr, {B, Sq, Hq, D});
  dense.lse = flash4::strided(lse.ptr, FLASH4_F32, {B, Hq, Sq}, {Hq * Sq, Sq, 1});
  dense.options.causal = s.causal;
  flash4_forward_args paged = dense;
  paged.k = bf16(k_pages.ptr, {pages, ps, Hkv, D}), paged.v = bf16(v_pages.ptr, {pages, ps, Hkv, D});
  paged.out = bf16(out_paged.ptr, {B, Sq, Hq, D});
  paged.paged.page_table = static_cast<const int32_t*>(table.ptr);
  paged.paged.max_pages_per_seq = per_seq;
  paged.paged.page_size = int(ps);
  paged.varlen.seqused_k = static_cast<const int32_t*>(used.ptr);
  paged.varlen.batch = int(B);

  // FLOPs of the keys each query sees (causal: bottom-right aligned, key j <= i + Sk - Sq).
  double keys_seen = 0;
  for (int64_t i = 0; i < Sq; ++i) keys_seen += s.causal ? double(std::clamp<int64_t>(i + Sk - Sq + 1, 0, Sk)) : double(Sk);
  const double flops = 4.0 * B * Hq * D * keys_seen, kv_bytes = 2.0 * B * Sk * row * 2;
  auto time = [&](flash4_forward_args& a, const char* name) {
    check(flash4_forward(&a), name);
    const std::string backend = flash4_last_backend();
    const double ms = median_ms(3, repeats, [&](int) { check(flash4_forward(&a), name); });
    return std::pair{backend, ms};
  };
  const auto [paged_backend, paged_ms] = time(paged, "flash4_forward (paged)");
  const double paged_host_us = last_host_us_per_call;
  const auto [dense_backend, dense_ms] = time(dense, "flash4_forward (contiguous)");
  const double dense_host_us = last_host_us_per_call;
  BENCH_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> a(size_t(B * Sq * Hq * D)), c(a.size());
  BENCH_CUDA(cudaMemcpy(a.data(), out_paged.ptr, a.size() * 2, cudaMemcpyDeviceToHost));
  BENCH_CUDA(cudaMemcpy(c.data(), out_dense.ptr, c.size() * 2, cudaMemcpyDeviceToHost));
  auto value = [](uint16_t x) {
    uint32_t bits = uint32_t(x) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  };
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(value(a[i]) - value(c[i]))));
  std::printf("paged KV: %lld sequences x %lld keys in pages of %lld (%lld pages, shuffled), %lld queries each, "
              "Hq %lld Hkv %lld d %lld causal %d, bf16, median of %d\n",
              (long long)B, (long long)Sk, (long long)ps, (long long)pages, (long long)Sq, (long long)Hq, (long long)Hkv,
              (long long)D, int(s.causal), repeats);
  std::printf("paged | fwd %s %.3f ms %.1f TF %.0f GB/s | contiguous | fwd %s %.3f ms %.1f TF %.0f GB/s | "
              "paged / contiguous time %.3f | max abs(paged - contiguous) %.3g | host %.1f / %.1f us a call\n",
              paged_backend.c_str(), paged_ms, flops / paged_ms * 1e-9, kv_bytes / paged_ms * 1e-6, dense_backend.c_str(),
              dense_ms, flops / dense_ms * 1e-9, kv_bytes / dense_ms * 1e-6, paged_ms / dense_ms, max_diff, paged_host_us,
              dense_host_us);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, tuning = false;
  int repeats = 20;
  const char* csv_path = nullptr;
  int only_d = 0, only_s = 0, only_causal = -1;
  bool varlen = false;
  VarlenShape vs;
  PagedShape ps;
  BackwardModes modes;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--varlen")) varlen = true;
    else if (!std::strcmp(argv[i], "--rows") && i + 1 < argc) vs.rows = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--row-len") && i + 1 < argc) vs.row_len = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--mean-doc") && i + 1 < argc) vs.mean_doc = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--hq") && i + 1 < argc) vs.hq = ps.hq = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--hkv") && i + 1 < argc) vs.hkv = ps.hkv = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--paged") && i + 1 < argc) ps.page_size = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) ps.batch = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--seqlen-q") && i + 1 < argc) ps.sq = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--seqlen-k") && i + 1 < argc) ps.sk = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--d") && i + 1 < argc) only_d = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--seqlen") && i + 1 < argc) only_s = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--causal") && i + 1 < argc) only_causal = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--tuning")) tuning = true;
    else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--csv") && i + 1 < argc) csv_path = argv[++i];
    else if (!std::strcmp(argv[i], "--deterministic") && i + 1 < argc) {
      const bool det = std::atoi(argv[++i]) != 0;
      modes.atomic = !det;
      modes.deterministic = det;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--tuning] [--repeats N] [--csv FILE] [--d D] [--seqlen S] [--causal 0|1]\n"
                   "          [--deterministic 0|1]\n"
                   "       %s --varlen [--rows R] [--row-len L] [--mean-doc M] [--hq H] [--hkv H] [--d D] [--causal 0|1]\n"
                   "          [--deterministic 0|1]\n"
                   "       %s --paged PS [--batch B] [--seqlen-q Q] [--seqlen-k K] [--hq H] [--hkv H] [--d D] [--causal 0|1]\n",
                   argv[0], argv[0], argv[0]);
      return 2;
    }
  }
  if (ps.page_size != 0) {
    if (only_d) ps.d = only_d;
    if (only_causal >= 0) ps.causal = only_causal != 0;
    if (ps.page_size < 0 || ps.batch < 1 || ps.sq < 1 || ps.sk < 1 || ps.hq < 1 || ps.hkv < 1 || ps.hq % ps.hkv != 0) {
      std::fprintf(stderr, "--paged: page size, batch, lengths and heads must be positive, hq a multiple of hkv\n");
      return 2;
    }
    return run_paged(ps, repeats);
  }
  if (varlen) {
    if (only_d) vs.d = only_d;
    if (only_causal >= 0) vs.causal = only_causal != 0;
    return run_varlen(vs, repeats, modes);
  }
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("flash4-bench on %s (%d SMs), bf16, BSHD, 16384 tokens, hidden 2048, median of %d\n", prop.name,
              prop.multiProcessorCount, repeats);
  std::printf("hopper dQ: %s\n", hopper_dq_path());
  FILE* csv = csv_path ? std::fopen(csv_path, "w") : nullptr;
  if (csv)
    std::fprintf(csv, "d,S,B,H,causal,variant,fwd_ms,fwd_tflops,bwd_ms,bwd_tflops,bwd_det_ms,bwd_det_tflops,bwd_det_backend\n");

  std::vector<int> dims = quick ? std::vector<int>{128} : std::vector<int>{64, 128, 256};
  std::vector<int> lengths =
      quick ? std::vector<int>{1024, 4096, 16384} : std::vector<int>{512, 1024, 2048, 4096, 8192, 16384};
  if (only_d) dims = {only_d};
  if (only_s) lengths = {only_s};
  std::printf("%5s %6s %4s %4s %7s | %9s %8s | %9s %8s | %12s %11s %s\n", "d", "S", "B", "H", "causal", "fwd ms",
              "fwd TF", "bwd ms", "bwd TF", "bwd-det ms", "bwd-det TF", "det backend");
  for (int d : dims)
    for (int S : lengths)
      for (bool causal : {false, true}) {
        if (only_causal >= 0 && int(causal) != only_causal) continue;
        const Shape s{16384 / S, S, 2048 / d, d, causal};
        Set sets[2] = {Set(s, 1), Set(s, 1000)};
        const flash4_tuning defaults{};
        auto fwd = [&](flash4_tuning t) {
          return median_ms(3, repeats, [&](int i) {
            flash4_forward_args a = forward_args(sets[i % 2], s, t);
            check(flash4_forward(&a), "flash4_forward");
          });
        };
        const double fwd_ms = fwd(defaults);
        // Median ms of one backward mode; -1 when --deterministic left it out.
        auto bwd = [&](bool deterministic, bool timed) {
          if (!timed) return -1.0;
          return median_ms(3, repeats, [&](int i) {
            flash4_backward_args a = backward_args(sets[i % 2], s, deterministic);
            check(flash4_backward(&a), "flash4_backward");
          });
        };
        const double bwd_ms = bwd(false, modes.atomic), det_ms = bwd(true, modes.deterministic);
        const std::string det_backend = modes.deterministic ? flash4_last_backend() : "-";
        const double f = forward_flops(s);
        auto tf = [&](double ms) { return ms > 0 ? 2.5 * f / ms * 1e-9 : -1.0; };
        std::printf("%5d %6d %4d %4d %7d | %9.3f %8.1f | %9.3f %8.1f | %12.3f %11.1f %s\n", d, S, s.B, s.H, int(causal),
                    fwd_ms, f / fwd_ms * 1e-9, bwd_ms, tf(bwd_ms), det_ms, tf(det_ms), det_backend.c_str());
        if (csv)
          std::fprintf(csv, "%d,%d,%d,%d,%d,default,%.4f,%.1f,%.4f,%.1f,%.4f,%.1f,%s\n", d, S, s.B, s.H, int(causal),
                       fwd_ms, f / fwd_ms * 1e-9, bwd_ms, tf(bwd_ms), det_ms, tf(det_ms), det_backend.c_str());
        if (tuning) {
          flash4_tuning emulate{}, always{}, plain{};
          emulate.exp2_emulation = 2;
          always.rescale_threshold = -1.0f;
          plain.exp2_emulation = 1;
          plain.rescale_threshold = -1.0f;
          const struct {
            const char* name;
            flash4_tuning t;
          } variants[] = {{"exp2-emulation", emulate}, {"always-rescale", always}, {"neither (FA2)", plain}};
          for (const auto& v : variants) {
            const double ms = fwd(v.t);
            std::printf("%5s %6s %4s %4s %7s | %9.3f %8.1f   fwd, %s\n", "", "", "", "", "", ms, f / ms * 1e-9, v.name);
            if (csv)
              std::fprintf(csv, "%d,%d,%d,%d,%d,%s,%.4f,%.1f,,,,\n", d, S, s.B, s.H, int(causal), v.name, ms,
                           f / ms * 1e-9);
          }
        }
      }
  if (csv) std::fclose(csv);
  return 0;
}
