// flash4-cpu-bench: forward and backward GFLOP/s of flash4's two CPU implementations on the
// same inputs in one process: the float32 CPU kernels (FLASH4_BACKEND_CPU, what AUTO runs for
// f32 / f16 / bf16) against the float64 reference (FLASH4_BACKEND_REFERENCE), BSHD, T tokens
// in total (batch = T / S), Hq / Hkv heads, d in a list, S in a list, causal off and on.
// FLOPs by convention: forward 4 B Hq S^2 d (halved under causal), backward 2.5x forward.
// Timing: wall clock, one warm-up call, then calls until --min-time seconds (at least one),
// the median. Each row also gives the largest difference of the two outputs relative to the
// largest |out| of the reference (inputs random normal, never zeros; fixed seed). Threads:
// OpenMP's (OMP_NUM_THREADS).
//
//   flash4-cpu-bench [--d 64,128] [--seqlen 256,512,1024,2048] [--tokens 2048] [--hq 4] [--hkv 2]
//                    [--dtype bf16|f32] [--min-time 0.5] [--markdown FILE]
#include <fmt/format.h>
#include <flash4/flash4.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "reference/numeric.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int> dims{64, 128}, seqlens{256, 512, 1024, 2048};
  int tokens = 2048, hq = 4, hkv = 2;
  flash4_dtype dtype = FLASH4_BF16;
  double min_time = 0.5;
  std::string markdown;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "flash4-cpu-bench: %s\nusage: flash4-cpu-bench [--d 64,128] [--seqlen 256,512,1024,2048] "
               "[--tokens 2048] [--hq 4] [--hkv 2] [--dtype bf16|f32] [--min-time 0.5] [--markdown FILE]\n",
               why);
  std::exit(2);
}

std::vector<int> int_list(const char* text, const char* flag) {
  std::vector<int> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v <= 0)
      usage(fmt::format("{} takes positive integers, got '{}'", flag, text).c_str());
    values.push_back(int(v));
  }
  return values;
}

int positive_int(const char* text, const char* flag) {
  const std::vector<int> v = int_list(text, flag);
  if (v.size() != 1) usage(fmt::format("{} takes one positive integer", flag).c_str());
  return v[0];
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(fmt::format("{} needs a value", flag).c_str());
    const char* value = argv[++i];
    if (flag == "--d") o.dims = int_list(value, "--d");
    else if (flag == "--seqlen") o.seqlens = int_list(value, "--seqlen");
    else if (flag == "--tokens") o.tokens = positive_int(value, "--tokens");
    else if (flag == "--hq") o.hq = positive_int(value, "--hq");
    else if (flag == "--hkv") o.hkv = positive_int(value, "--hkv");
    else if (flag == "--min-time") o.min_time = std::atof(value);
    else if (flag == "--markdown") o.markdown = value;
    else if (flag == "--dtype") {
      if (std::strcmp(value, "bf16") == 0) o.dtype = FLASH4_BF16;
      else if (std::strcmp(value, "f32") == 0) o.dtype = FLASH4_F32;
      else usage("--dtype takes bf16 or f32");
    } else {
      usage(fmt::format("unknown option {}", flag).c_str());
    }
  }
  if (o.hq % o.hkv != 0) usage("--hkv must divide --hq");
  return o;
}

// A tensor's storage in the bench's dtype, filled from float values.
struct Buffer {
  flash4_dtype dtype;
  std::vector<uint16_t> half;
  std::vector<float> single;
  Buffer(flash4_dtype t, size_t n) : dtype(t) { (t == FLASH4_F32 ? single.resize(n) : half.resize(n)); }
  void* data() { return dtype == FLASH4_F32 ? static_cast<void*>(single.data()) : static_cast<void*>(half.data()); }
  size_t size() const { return dtype == FLASH4_F32 ? single.size() : half.size(); }
  void fill(std::mt19937_64& rng) {
    std::normal_distribution<float> normal;
    for (size_t i = 0; i < size(); ++i) {
      const float x = normal(rng);
      if (dtype == FLASH4_F32) single[i] = x;
      else half[i] = flash4::detail::f32_to_bf16_bits(x);
    }
  }
  float at(size_t i) const {
    return dtype == FLASH4_F32 ? single[i] : flash4::detail::bf16_bits_to_f32(half[i]);
  }
};

// Median seconds of `call` over at least one timed run and at least `min_time` seconds.
template <class Call>
double median_seconds(Call&& call, double min_time) {
  call();  // warm-up
  std::vector<double> times;
  const auto start = Clock::now();
  do {
    const auto t0 = Clock::now();
    call();
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  } while (std::chrono::duration<double>(Clock::now() - start).count() < min_time);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Row {
  int d, seqlen, causal;
  double fwd_ref, fwd_cpu, bwd_ref, bwd_cpu;  // GFLOP/s
  double out_diff;                            // max |cpu - ref| / max |ref| of out
};

Row run_row(const Options& o, int d, int S, int causal, std::mt19937_64& rng) {
  const int B = std::max(1, o.tokens / S);
  const size_t nq = size_t(B) * S * o.hq * d, nk = size_t(B) * S * o.hkv * d;
  Buffer q(o.dtype, nq), k(o.dtype, nk), v(o.dtype, nk), dout(o.dtype, nq);
  q.fill(rng), k.fill(rng), v.fill(rng), dout.fill(rng);
  Buffer out_ref(o.dtype, nq), out_cpu(o.dtype, nq), dq(o.dtype, nq), dk(o.dtype, nk), dv(o.dtype, nk);
  std::vector<float> lse_ref(size_t(B) * o.hq * S), lse_cpu(lse_ref.size());

  // The views every call shares; out and lse are each backend's own (the backward reads its
  // backend's forward outputs).
  const flash4_tensor tq = flash4::contiguous(q.data(), o.dtype, {B, S, o.hq, d});
  const flash4_tensor tk = flash4::contiguous(k.data(), o.dtype, {B, S, o.hkv, d});
  const flash4_tensor tv = flash4::contiguous(v.data(), o.dtype, {B, S, o.hkv, d});
  auto out_view = [&](Buffer& out) { return flash4::contiguous(out.data(), o.dtype, {B, S, o.hq, d}); };
  auto lse_view = [&](std::vector<float>& lse) { return flash4::contiguous(lse.data(), FLASH4_F32, {B, o.hq, S}); };
  auto forward = [&](flash4_backend backend, Buffer& out, std::vector<float>& lse) {
    flash4::ForwardArgs a = flash4::forward_args();
    a.backend = backend;
    a.q = tq, a.k = tk, a.v = tv, a.out = out_view(out), a.lse = lse_view(lse);
    a.options.causal = causal;
    flash4::forward(a);
  };
  auto backward = [&](flash4_backend backend, Buffer& out, std::vector<float>& lse) {
    flash4::BackwardArgs b = flash4::backward_args();
    b.backend = backend;
    b.q = tq, b.k = tk, b.v = tv, b.out = out_view(out), b.lse = lse_view(lse);
    b.dout = flash4::contiguous(dout.data(), o.dtype, {B, S, o.hq, d});
    b.dq = flash4::contiguous(dq.data(), o.dtype, {B, S, o.hq, d});
    b.dk = flash4::contiguous(dk.data(), o.dtype, {B, S, o.hkv, d});
    b.dv = flash4::contiguous(dv.data(), o.dtype, {B, S, o.hkv, d});
    b.options.causal = causal;
    b.deterministic = 1;
    flash4::backward(b);
  };

  const double flops = 4.0 * B * o.hq * double(S) * S * d * (causal ? 0.5 : 1.0);
  Row r{d, S, causal, 0, 0, 0, 0, 0};
  r.fwd_ref = flops / median_seconds([&] { forward(FLASH4_BACKEND_REFERENCE, out_ref, lse_ref); }, o.min_time) / 1e9;
  r.fwd_cpu = flops / median_seconds([&] { forward(FLASH4_BACKEND_CPU, out_cpu, lse_cpu); }, o.min_time) / 1e9;
  r.bwd_ref =
      2.5 * flops / median_seconds([&] { backward(FLASH4_BACKEND_REFERENCE, out_ref, lse_ref); }, o.min_time) / 1e9;
  r.bwd_cpu = 2.5 * flops / median_seconds([&] { backward(FLASH4_BACKEND_CPU, out_cpu, lse_cpu); }, o.min_time) / 1e9;
  double max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < nq; ++i) {
    max_ref = std::max(max_ref, double(std::fabs(out_ref.at(i))));
    max_diff = std::max(max_diff, double(std::fabs(out_cpu.at(i) - out_ref.at(i))));
  }
  r.out_diff = max_ref > 0 ? max_diff / max_ref : 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::mt19937_64 rng(20261202);
  std::string table = fmt::format(
      "flash4 CPU: {} tokens, Hq {} Hkv {}, {}, {} OpenMP threads; GFLOP/s (median)\n\n"
      "| d | S | causal | fwd reference | fwd cpu | cpu / ref | bwd reference | bwd cpu | cpu / ref | "
      "max\\|out diff\\| / max\\|out\\| |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n",
      o.tokens, o.hq, o.hkv, o.dtype == FLASH4_F32 ? "f32" : "bf16", omp_get_max_threads());
  std::fputs(table.c_str(), stdout);
  double log_fwd = 0, log_bwd = 0;
  int rows = 0;
  for (int d : o.dims)
    for (int S : o.seqlens)
      for (int causal : {0, 1}) {
        const Row r = run_row(o, d, S, causal, rng);
        const std::string line =
            fmt::format("| {} | {} | {} | {:.2f} | {:.2f} | {:.1f} | {:.2f} | {:.2f} | {:.1f} | {:.1e} |\n", r.d,
                        r.seqlen, r.causal, r.fwd_ref, r.fwd_cpu, r.fwd_cpu / r.fwd_ref, r.bwd_ref, r.bwd_cpu,
                        r.bwd_cpu / r.bwd_ref, r.out_diff);
        std::fputs(line.c_str(), stdout);
        std::fflush(stdout);
        table += line;
        log_fwd += std::log(r.fwd_cpu / r.fwd_ref), log_bwd += std::log(r.bwd_cpu / r.bwd_ref), ++rows;
      }
  const std::string summary = fmt::format("\ngeomean cpu / reference: fwd {:.1f}, bwd {:.1f} ({} rows)\n",
                                          std::exp(log_fwd / rows), std::exp(log_bwd / rows), rows);
  std::fputs(summary.c_str(), stdout);
  table += summary;
  if (!o.markdown.empty()) {
    std::FILE* f = std::fopen(o.markdown.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "flash4-cpu-bench: cannot write %s: %s\n", o.markdown.c_str(), std::strerror(errno));
      return 1;
    }
    std::fputs(table.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
