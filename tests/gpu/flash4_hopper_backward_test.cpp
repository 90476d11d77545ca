// flash4's Hopper (sm90a) backward against the float64 CPU reference, on an sm_90 device,
// with the kernel on (the default; each test clears FLASH4_HOPPER_BWD and restores it): every
// case it covers (dense bf16 / fp16, d = 64 and 128, GQA / MQA, causal or not, BSHD / BHSD,
// padded rows, sliding windows; packed varlen batches, whose forward must run on the Hopper
// kernels too)
// must run on it -- the GPU backward's flash4_last_backend() says "hopper" -- and dq, dk, dv
// must match the reference within the dtype's tolerance; the gradients are NaN-poisoned
// before each call (ProblemRunner), so an unwritten element fails (varlen: the rows of no
// sequence too, whose reference gradient is 0). Lengths {1, 17, 128, 1000, 4097} as
// Sq = Sk, Sq < Sk and Sq > Sk. Calls the kernel does not
// cover (deterministic, softcap, d = 96) run on the portable backward, as does every call
// with FLASH4_HOPPER_BWD=0 or FLASH4_BACKEND=portable.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/random.hpp"
#include "flash4_gpu_problem.hpp"

namespace flash4_gpu {
namespace {

bool is_sm90() {
  int device = 0, major = 0, minor = 0;
  if (!have_gpu() || cudaGetDevice(&device) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0;
}

// Sets (or, with nullptr, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* before = std::getenv(name)) before_ = before;
    if (value != nullptr)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (before_)
      setenv(name_, before_->c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> before_;
};

// Forward (whichever backend covers it) and backward of p on the GPU and the reference;
// checks dq, dk, dv and returns the backend that ran the GPU backward (the forward's in
// *forward_backend when given).
std::string check_backward(const Problem& p, std::string* forward_backend = nullptr) {
  auto rng = testing_support::make_rng(std::hash<std::string>{}(p.describe()) ^ 0xB4C7u);
  SCOPED_TRACE(p.describe());
  ProblemRunner runner(p, rng);
  runner.setup();
  Errors e;
  runner.forward(e);
  if (::testing::Test::HasFatalFailure()) return "";
  if (forward_backend != nullptr) *forward_backend = runner.gpu_backend();
  runner.backward(e);
  if (::testing::Test::HasFatalFailure()) return "";
  std::printf("[ errors ] %s | bwd %s | dq %.2e dk %.2e dv %.2e (slack dq %.1e dk %.1e)\n", p.describe().c_str(),
              runner.gpu_backward_backend().c_str(), e.dq, e.dk, e.dv, e.dq_slack, e.dk_slack);
  const Tolerance tol = tolerance_for(p.dtype);
  EXPECT_LT(e.out, tol.out) << "out (forward)";
  EXPECT_LT(e.dq, tol.grad + e.dq_slack) << "dq (slack for the 16-bit out: " << e.dq_slack << ")";
  EXPECT_LT(e.dk, tol.grad + e.dk_slack) << "dk (slack for the 16-bit out: " << e.dk_slack << ")";
  EXPECT_LT(e.dv, tol.grad) << "dv";
  return runner.gpu_backward_backend();
}

std::string test_name(const ::testing::TestParamInfo<Problem>& info) {
  std::string s = std::to_string(info.index) + "_" + info.param.describe();
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out;
}

class Flash4HopperBackward : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperBackward, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv on("FLASH4_HOPPER_BWD", nullptr);
  ScopedEnv auto_backend("FLASH4_BACKEND", nullptr);
  const std::string backend = check_backward(GetParam());
  EXPECT_EQ(backend, "hopper") << "a covered case ran elsewhere (FLASH4_LOG=1 says why)";
}

// d x dtype x causal over shapes with Sq = Sk, Sq < Sk, Sq > Sk and GQA.
std::vector<Problem> covered_cases() {
  struct Shape {
    int B, Hq, Hkv, Sq, Sk;
  };
  const Shape shapes[] = {{2, 4, 2, 128, 128}, {1, 2, 2, 17, 1000}, {2, 2, 1, 1000, 17}, {3, 2, 2, 1, 128},
                          {1, 2, 1, 1000, 1000}, {1, 1, 1, 128, 300},  {1, 8, 1, 17, 17},  {2, 2, 1, 1, 1}};
  std::vector<Problem> cases;
  int i = 0;
  for (int d : {64, 128})
    for (flash4_dtype dtype : {FLASH4_BF16, FLASH4_F16})
      for (bool causal : {false, true})
        for (int repeat = 0; repeat < 2; ++repeat) {
          const Shape& s = shapes[i++ % 8];
          Problem p;
          p.label = "hopper bwd";
          p.dtype = dtype;
          p.Dqk = p.Dv = d;
          p.B = s.B, p.Hq = s.Hq, p.Hkv = s.Hkv, p.Sq = s.Sq, p.Sk = s.Sk;
          p.causal = causal;
          cases.push_back(p);
        }
  // Lengths {1, 17, 128, 1000, 4097}: square, fewer and more queries than keys.
  const int pairs[][2] = {{4097, 4097}, {4097, 1000}, {1000, 4097}, {17, 4097}, {4097, 17}, {1, 4097}, {4097, 1}};
  for (auto [sq, sk] : pairs)
    for (bool causal : {false, true}) {
      Problem p;
      p.label = "hopper bwd length";
      p.Dqk = p.Dv = 64;
      p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = sq, p.Sk = sk;
      p.causal = causal;
      cases.push_back(p);
    }
  {  // d = 128 at a length with many key and query blocks, fp16, causal, GQA.
    Problem p;
    p.label = "hopper bwd long";
    p.dtype = FLASH4_F16;
    p.B = 1, p.Hq = 4, p.Hkv = 2, p.Sq = 1500, p.Sk = 1500;
    p.causal = true;
    cases.push_back(p);
  }
  // GQA groups of 4 over several key blocks and batches (dK / dV summed over the group
  // inside one CTA), both head dims.
  for (int d : {64, 128}) {
    Problem p;
    p.label = "hopper bwd gqa";
    p.Dqk = p.Dv = d;
    p.B = 3, p.Hq = 8, p.Hkv = 2, p.Sq = 700, p.Sk = 900;
    p.causal = d == 128;
    cases.push_back(p);
  }
  {  // MQA, BHSD memory order, fp16, d = 128.
    Problem p;
    p.label = "hopper bwd bhsd mqa";
    p.dtype = FLASH4_F16;
    p.B = 2, p.Hq = 6, p.Hkv = 1, p.Sq = 300, p.Sk = 520;
    p.bhsd = true;
    p.causal = true;
    cases.push_back(p);
  }
  {  // Padded token rows (row stride > H * D).
    Problem p;
    p.label = "hopper bwd row_pad";
    p.Dqk = p.Dv = 64;
    p.B = 2, p.Hq = 2, p.Hkv = 2, p.Sq = 260, p.Sk = 260;
    p.row_pad = 8;
    cases.push_back(p);
  }
  {  // Large logits: P far from uniform (a few keys dominate each row).
    Problem p;
    p.label = "hopper bwd large logits";
    p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 700, p.Sk = 1500;
    p.q_scale = 4.0;
    cases.push_back(p);
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Covered, Flash4HopperBackward, ::testing::ValuesIn(covered_cases()), test_name);

// `count` document lengths in [1, max_len] from a fixed generator (stable test names), then
// `extra` appended.
std::vector<std::pair<int, int>> documents(uint64_t seed, int count, int max_len, std::vector<int> extra = {}) {
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

class Flash4HopperVarlenBackward : public ::testing::TestWithParam<Problem> {};

// Packed batches: the forward and the backward must both run on the Hopper kernels.
TEST_P(Flash4HopperVarlenBackward, ForwardAndBackwardRunOnHopperAndMatchFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv on("FLASH4_HOPPER_BWD", nullptr);
  ScopedEnv auto_backend("FLASH4_BACKEND", nullptr);
  std::string forward;
  const std::string backward = check_backward(GetParam(), &forward);
  EXPECT_EQ(forward, "hopper") << "the varlen forward ran elsewhere (FLASH4_LOG=1 says why)";
  EXPECT_EQ(backward, "hopper") << "the varlen backward ran elsewhere (FLASH4_LOG=1 says why)";
}

// Packed batches (cu_seqlens): documents of lengths 1, 17, not multiples of the tiles (128
// keys, 64 queries), one of 1000+ tokens, Sq != Sk per sequence (bottom-right causal),
// empty sequences (a key block no query sees: dk = dv = 0), tokens past cu_seqlens[batch]
// (their dq / dk / dv rows must be written as 0), padded rows, GQA; each batch causal and
// not, over d {64, 128} x {bf16, fp16}.
std::vector<Problem> varlen_cases() {
  struct Batch {
    std::vector<std::pair<int, int>> seqs;
    int Hq, Hkv, pad_q, pad_k;
  };
  const Batch batches[] = {
      {{{1, 1}, {17, 17}, {64, 64}, {129, 129}, {300, 300}}, 4, 2, 0, 0},
      {documents(21, 8, 400), 8, 2, 5, 3},
      {{{1000, 1000}, {1, 1}, {17, 17}, {255, 255}}, 2, 1, 0, 7},
      {{{17, 100}, {100, 17}, {1, 300}, {65, 65}, {0, 5}, {5, 0}, {130, 260}}, 4, 1, 3, 0},
  };
  // Every batch causal and not, each with two of the four (d, dtype) pairs: over the
  // batches, every pair runs twice causal and twice not.
  const std::pair<int, flash4_dtype> kinds[] = {{64, FLASH4_BF16}, {128, FLASH4_F16}, {128, FLASH4_BF16}, {64, FLASH4_F16}};
  std::vector<Problem> cases;
  int i = 0;
  for (const Batch& batch : batches)
    for (bool causal : {false, true})
      for (int repeat = 0; repeat < 2; ++repeat) {
        const auto [d, dtype] = kinds[(i + i / 4) % 4];  // batch b: kinds b, b + 1 (not causal), b + 2, b + 3
        ++i;
        Problem p;
        p.label = "hopper bwd varlen";
        p.dtype = dtype;
        p.Dqk = p.Dv = d;
        p.seqs = batch.seqs;
        p.Hq = batch.Hq, p.Hkv = batch.Hkv, p.pad_q = batch.pad_q, p.pad_k = batch.pad_k;
        p.causal = causal;
        cases.push_back(p);
      }
  {  // Many short documents: most key and query blocks cross a sequence end.
    Problem p;
    p.label = "hopper bwd varlen many";
    p.Dqk = p.Dv = 64;
    p.seqs = documents(22, 50, 130, {1, 17});
    p.Hq = 4, p.Hkv = 1;
    p.causal = true;
    cases.push_back(p);
  }
  {  // adept's shape: GQA 32 / 8, d = 64, causal, documents up to 1200 tokens.
    Problem p;
    p.label = "hopper bwd varlen adept";
    p.Dqk = p.Dv = 64;
    p.seqs = documents(23, 4, 500, {1200, 1});
    p.Hq = 32, p.Hkv = 8;
    p.causal = true;
    cases.push_back(p);
  }
  {  // d = 128, fp16, GQA groups of 4 over several key blocks per sequence.
    Problem p;
    p.label = "hopper bwd varlen gqa";
    p.dtype = FLASH4_F16;
    p.seqs = documents(24, 6, 700);
    p.Hq = 8, p.Hkv = 2;
    p.causal = true;
    cases.push_back(p);
  }
  {  // Padded token rows (row stride > H * D), trailing tokens of no sequence.
    Problem p;
    p.label = "hopper bwd varlen row_pad";
    p.Dqk = p.Dv = 64;
    p.seqs = documents(25, 6, 300, {1});
    p.Hq = 4, p.Hkv = 2, p.pad_q = 9, p.pad_k = 9;
    p.row_pad = 8;
    cases.push_back(p);
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Varlen, Flash4HopperVarlenBackward, ::testing::ValuesIn(varlen_cases()), test_name);

// Sliding windows (left, right; < 0 unbounded), with and without causal, aligned bottom-right
// like causal: Sq = Sk, Sq < Sk, Sq > Sk (rows that see no key), windows narrower and wider
// than a tile, 0 on one side, larger than the sequence; d x dtype in turn.
std::vector<Problem> window_cases() {
  struct Window {
    int Sq, Sk, left, right;
    bool causal;
  };
  const Window windows[] = {{1000, 1000, 128, -1, true}, {700, 1500, 64, 64, false}, {1000, 1000, 0, -1, false},
                            {600, 600, -1, 5, false},    {1000, 300, 300, 17, false}, {1000, 1000, 1 << 30, -1, true},
                            {300, 1000, 1, 0, true},     {1000, 1000, 200, 50, true}};
  const std::pair<int, flash4_dtype> kinds[] = {{64, FLASH4_BF16}, {128, FLASH4_F16}, {128, FLASH4_BF16}, {64, FLASH4_F16}};
  std::vector<Problem> cases;
  int i = 0;
  for (const Window& w : windows) {
    const auto [d, dtype] = kinds[i++ % 4];
    Problem p;
    p.label = "hopper bwd window";
    p.dtype = dtype;
    p.Dqk = p.Dv = d;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = w.Sq, p.Sk = w.Sk;
    p.window_left = w.left, p.window_right = w.right;
    p.causal = w.causal;
    cases.push_back(p);
  }
  {  // Packed documents with a causal left window (local attention inside each document).
    Problem p;
    p.label = "hopper bwd window varlen";
    p.Dqk = p.Dv = 64;
    p.seqs = documents(27, 8, 400, {1, 17, 1000});
    p.Hq = 8, p.Hkv = 2, p.pad_q = 3, p.pad_k = 3;
    p.window_left = 100;
    p.causal = true;
    cases.push_back(p);
    p.dtype = FLASH4_F16;  // and a two-sided window without causal, d = 128
    p.Dqk = p.Dv = 128;
    p.window_left = 50, p.window_right = 20;
    p.causal = false;
    cases.push_back(p);
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Window, Flash4HopperBackward, ::testing::ValuesIn(window_cases()), test_name);

Problem small(const char* label) {
  Problem p;
  p.label = label;
  p.B = 1, p.Hq = 4, p.Hkv = 2, p.Sq = 200, p.Sk = 260;
  p.causal = true;
  return p;
}

TEST(Flash4HopperBackwardDispatch, OnByDefaultAndZeroSwitchesItOff) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv auto_backend("FLASH4_BACKEND", nullptr);
  {
    ScopedEnv unset("FLASH4_HOPPER_BWD", nullptr);
    EXPECT_EQ(check_backward(small("default")), "hopper");
  }
  ScopedEnv off("FLASH4_HOPPER_BWD", "0");
  EXPECT_EQ(check_backward(small("switched off")), "portable");
}

TEST(Flash4HopperBackwardDispatch, UncoveredCallsRunOnThePortableBackward) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv on("FLASH4_HOPPER_BWD", nullptr);
  ScopedEnv auto_backend("FLASH4_BACKEND", nullptr);
  Problem p = small("deterministic");
  p.deterministic = true;
  EXPECT_EQ(check_backward(p), "portable");
  p = small("softcap");
  p.softcap = 20;
  EXPECT_EQ(check_backward(p), "portable");
  p = small("d = 96");
  p.Dqk = p.Dv = 96;
  EXPECT_EQ(check_backward(p), "portable");
}

TEST(Flash4HopperBackwardDispatch, EnvironmentForcesThePortableBackward) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv on("FLASH4_HOPPER_BWD", nullptr);
  ScopedEnv portable("FLASH4_BACKEND", "portable");
  EXPECT_EQ(check_backward(small("forced portable")), "portable");
}

}  // namespace
}  // namespace flash4_gpu
