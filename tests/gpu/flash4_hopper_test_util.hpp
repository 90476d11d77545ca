// What flash4's Hopper (sm90a) GPU tests share: the sm_90 device check, gtest names of
// Problem cases, the forward check against the reference, and the case sweeps the forward and backward suites both run -- shapes x
// (d, dtype, causal), lengths {1, 17, 128, 1000, 4097}, packed batches and sliding windows
// over the (d, dtype) pairs in turn. A sweep copies its `base` problem (label, head dim,
// forward only or not) into every case and sets what it sweeps; each suite keeps its own
// shapes and batches.
#pragma once

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/random.hpp"
#include "flash4_gpu_problem.hpp"

namespace flash4_gpu {

inline bool is_sm90() {
  int device = 0, major = 0, minor = 0;
  if (!have_gpu() || cudaGetDevice(&device) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0;
}

// "<index>_<describe()>", every character but letters and digits turned into '_'.
inline std::string test_name(const ::testing::TestParamInfo<Problem>& info) {
  std::string s = std::to_string(info.index) + "_" + info.param.describe();
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out;
}

// A case named `label` at head dim d (d_qk = d_v); Problem's defaults elsewhere.
// p without its backward (the forward suites).
inline Problem forward_only(Problem p) {
  p.backward = false;
  return p;
}

// Runs p's forward on the GPU and the reference, expects out and lse within the dtype's
// tolerance; returns the backend that ran it ("" after a fatal failure).
inline std::string check_forward(const Problem& p) {
  auto rng = testing_support::make_rng(std::hash<std::string>{}(p.describe()));
  SCOPED_TRACE(p.describe());
  ProblemRunner runner(p, rng);
  runner.setup();
  Errors e;
  runner.forward(e);
  if (::testing::Test::HasFatalFailure()) return "";
  std::printf("[ errors ] %s | %s | out %.2e lse %.2e\n", p.describe().c_str(), runner.gpu_backend().c_str(), e.out,
              e.lse);
  const Tolerance tol = tolerance_for(p.dtype);
  EXPECT_LT(e.out, tol.out) << "out";
  EXPECT_LT(e.lse, tol.lse_abs) << "lse (max abs)";
  return runner.gpu_backend();
}

inline Problem named(const char* label, int d = 128) {
  Problem p;
  p.label = label;
  p.Dqk = p.Dv = d;
  return p;
}

inline void append(std::vector<Problem>& cases, const std::vector<Problem>& more) {
  cases.insert(cases.end(), more.begin(), more.end());
}

// `count` document lengths in [1, max_len] from a fixed generator (stable test names), then
// `extra` appended.
inline std::vector<std::pair<int, int>> documents(uint64_t seed, int count, int max_len, std::vector<int> extra = {}) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> length(1, max_len);
  std::vector<std::pair<int, int>> docs;
  for (int i = 0; i < count; ++i) {
    const int n = length(rng);
    docs.push_back({n, n});
  }
  for (int n : extra) docs.push_back({n, n});
  return docs;
}

struct Shape {
  int B, Hq, Hkv, Sq, Sk;
};

// d x dtype x causal, two cases each, the shapes taken in turn.
inline std::vector<Problem> shape_sweep(const Problem& base, std::initializer_list<int> head_dims,
                                        std::span<const Shape> shapes) {
  std::vector<Problem> cases;
  size_t i = 0;
  for (int d : head_dims)
    for (flash4_dtype dtype : {FLASH4_BF16, FLASH4_F16})
      for (bool causal : {false, true})
        for (int repeat = 0; repeat < 2; ++repeat) {
          const Shape& s = shapes[i++ % shapes.size()];
          Problem p = base;
          p.dtype = dtype;
          p.Dqk = p.Dv = d;
          p.B = s.B, p.Hq = s.Hq, p.Hkv = s.Hkv, p.Sq = s.Sq, p.Sk = s.Sk;
          p.causal = causal;
          cases.push_back(p);
        }
  return cases;
}

// Lengths {1, 17, 128, 1000, 4097}: square, fewer and more queries than keys; B 1, Hq 2,
// Hkv 1, each causal and not.
inline std::vector<Problem> length_sweep(const Problem& base) {
  const int pairs[][2] = {{4097, 4097}, {4097, 1000}, {1000, 4097}, {17, 4097}, {4097, 17}, {1, 4097}, {4097, 1}};
  std::vector<Problem> cases;
  for (auto [sq, sk] : pairs)
    for (bool causal : {false, true}) {
      Problem p = base;
      p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = sq, p.Sk = sk;
      p.causal = causal;
      cases.push_back(p);
    }
  return cases;
}

// The (d, dtype) pairs the packed-batch and window sweeps take in turn.
inline constexpr std::pair<int, flash4_dtype> kHeadDimDtypes[] = {
    {64, FLASH4_BF16}, {128, FLASH4_F16}, {128, FLASH4_BF16}, {64, FLASH4_F16}};

// A packed batch (cu_seqlens): (q, k) lengths per sequence, heads, tokens after the last.
struct Batch {
  std::vector<std::pair<int, int>> seqs;
  int Hq, Hkv, pad_q, pad_k;
};

// Every batch causal and not, each with two of the four (d, dtype) pairs: over four
// batches, every pair runs twice causal and twice not.
inline std::vector<Problem> batch_sweep(const Problem& base, const std::vector<Batch>& batches) {
  std::vector<Problem> cases;
  int i = 0;
  for (const Batch& batch : batches)
    for (bool causal : {false, true})
      for (int repeat = 0; repeat < 2; ++repeat) {
        const auto [d, dtype] = kHeadDimDtypes[(i + i / 4) % 4];  // batch b: pairs b, b + 1 (not causal), b + 2, b + 3
        ++i;
        Problem p = base;
        p.dtype = dtype;
        p.Dqk = p.Dv = d;
        p.seqs = batch.seqs;
        p.Hq = batch.Hq, p.Hkv = batch.Hkv, p.pad_q = batch.pad_q, p.pad_k = batch.pad_k;
        p.causal = causal;
        cases.push_back(p);
      }
  return cases;
}

// A sliding window (left, right; < 0 unbounded), aligned bottom-right like causal.
struct Window {
  int Sq, Sk, left, right;
  bool causal;
};

// Windows with and without causal: Sq = Sk, Sq < Sk, Sq > Sk (rows that see no key), windows
// narrower and wider than a tile, 0 on one side, larger than the sequence; B 2, Hq 4, Hkv 2,
// the (d, dtype) pairs in turn.
inline std::vector<Problem> window_sweep(const Problem& base) {
  const Window windows[] = {{1000, 1000, 128, -1, true}, {700, 1500, 64, 64, false}, {1000, 1000, 0, -1, false},
                            {600, 600, -1, 5, false},    {1000, 300, 300, 17, false}, {1000, 1000, 1 << 30, -1, true},
                            {300, 1000, 1, 0, true},     {1000, 1000, 200, 50, true}};
  std::vector<Problem> cases;
  int i = 0;
  for (const Window& w : windows) {
    const auto [d, dtype] = kHeadDimDtypes[i++ % 4];
    Problem p = base;
    p.dtype = dtype;
    p.Dqk = p.Dv = d;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = w.Sq, p.Sk = w.Sk;
    p.window_left = w.left, p.window_right = w.right;
    p.causal = w.causal;
    cases.push_back(p);
  }
  return cases;
}

// Packed documents `seqs` with a causal left window (local attention inside each document),
// d 64 bf16, then a two-sided window without causal, d 128 fp16.
inline std::vector<Problem> packed_window_cases(const Problem& base, const std::vector<std::pair<int, int>>& seqs) {
  Problem p = base;
  p.Dqk = p.Dv = 64;
  p.seqs = seqs;
  p.Hq = 8, p.Hkv = 2, p.pad_q = 3, p.pad_k = 3;
  p.window_left = 100;
  p.causal = true;
  std::vector<Problem> cases = {p};
  p.dtype = FLASH4_F16;
  p.Dqk = p.Dv = 128;
  p.window_left = 50, p.window_right = 20;
  p.causal = false;
  cases.push_back(p);
  return cases;
}

// seqused_k (each sequence attends to its first seqused_k[b] keys) at each head dim of
// `head_dims`, the K / V rows past the keys used NaN (nan_unused_keys) except in one case:
// dense with Sq < Sk (a sequence using all keys, one using a block and one key, one a single
// key), dense causal with none / all but one / one block of keys, block edges (128, 129,
// 640 of 1000), packed documents (keys used < own, 0, all; padding after the last), GQA, a
// left window, a sink, softcap, both dtypes; the deterministic flag on one dense and one
// packed case (the backward's dQ order: the key blocks that see a query block end at the
// keys used).
inline std::vector<Problem> seqused_cases(std::initializer_list<int> head_dims) {
  std::vector<Problem> cases;
  int i = 0;
  for (int d : head_dims) {
    Problem p;
    p.label = "hopper seqused";
    p.Dqk = p.Dv = d;
    p.dtype = i++ % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.nan_unused_keys = true;
    p.B = 3, p.Hq = 4, p.Hkv = 2, p.Sq = 50, p.Sk = 300;
    p.seqused = {300, 129, 1};
    cases.push_back(p);
    p.causal = true, p.seqused = {0, 299, 64};
    cases.push_back(p);
    p.B = 4, p.Hq = 2, p.Hkv = 1, p.Sq = p.Sk = 1000;
    p.seqused = {1000, 129, 128, 640};
    p.deterministic = true;
    cases.push_back(p);
    p.deterministic = false, p.causal = false, p.window_left = 70;
    cases.push_back(p);
    p = Problem{};
    p.label = "hopper seqused varlen";
    p.Dqk = p.Dv = d;
    p.dtype = i++ % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.nan_unused_keys = true;
    p.seqs = {{64, 200}, {100, 100}, {10, 50}, {33, 40}, {130, 300}};
    p.seqused = {150, 37, 0, 40, 257};
    p.Hq = 4, p.Hkv = 1, p.pad_q = 3, p.pad_k = 9, p.causal = true;
    cases.push_back(p);
    p.causal = false, p.sink = true, p.deterministic = true;
    cases.push_back(p);
    p.sink = false, p.deterministic = false, p.softcap = 30.0f, p.causal = true;
    cases.push_back(p);
  }
  Problem p;  // finite values past the keys used: the same answer
  p.label = "hopper seqused finite";
  p.Dqk = p.Dv = 64;
  p.B = 2, p.Hq = 2, p.Hkv = 2, p.Sq = 200, p.Sk = 400;
  p.seqused = {333, 90};
  cases.push_back(p);
  return cases;
}

}  // namespace flash4_gpu
