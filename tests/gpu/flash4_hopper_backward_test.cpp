// flash4's Hopper (sm90a) backward against the float64 CPU reference, on an sm_90 device,
// with the kernel on (the default; each test clears FLASH4_HOPPER_BWD and restores it): every
// case it covers (dense bf16 / fp16, d = 64 and 128, GQA / MQA, causal or not, BSHD / BHSD,
// padded rows, sliding windows; packed varlen batches, whose forward must run on the Hopper
// kernels too)
// must run on it -- the GPU backward's flash4_last_backend() says "hopper" -- and dq, dk, dv
// must match the reference within the dtype's tolerance; the gradients are NaN-poisoned
// before each call (ProblemRunner), so an unwritten element fails (varlen: the rows of no
// sequence too, whose reference gradient is 0). Lengths {1, 17, 128, 1000, 4097} as
// Sq = Sk, Sq < Sk and Sq > Sk. Deterministic calls (what adept's training asks for) run on
// it too, match the reference, and repeat bit for bit (Flash4HopperDeterministicBackward).
// Calls the kernel does not cover (a head dim over 128; seqused_k with FLASH4_HOPPER_SEQUSED=0)
// run on the portable backward, as does every call with FLASH4_HOPPER_BWD=0 or
// FLASH4_BACKEND=portable. seqused_k: Seqused/Flash4HopperBackwardSeqused.
// Learnable sink logits (options.sink, random per head) with dsink: the Sink/... suites
// (dense and packed, GQA, causal, windows whose rows see no key so that lse = sink, atomic
// and deterministic dQ) must run on it and match the reference in dq, dk, dv and dsink;
// deterministic calls repeat dsink bit for bit too, and a call without dsink gives the
// gradients of one with it (Flash4HopperBackwardSink). Softcap (the Softcap/... suites:
// dense, window, packed, with a sink, deterministic) likewise.
// Every suite runs twice: with dQ added by float2 atomics (FLASH4_HOPPER_DQ=atomics for the
// test) and, in the suites named ...BulkDq, by bulk reduce-add from shared memory in the
// tensor-map layout with the lock-step hand-over (FLASH4_HOPPER_DQ=bulk); the deterministic
// bulk path must also give the same bits as the deterministic atomics (the same fp32 adds in
// the same order).
// The ...PerWarpgroupDq suites (covered, window, varlen, sink, softcap) run the tensor-map
// layout's FLASH4_HOPPER_DQ=per_warpgroup hand-over; the ...FlatDq suites (covered, window,
// varlen, sink, softcap, padded head dims, deterministic) the flat layout, the default where it
// applies, set explicitly (FLASH4_HOPPER_DQ=flat: d 64 dense at 128-query blocks,
// deterministic too; varlen and d 128 at 64, not deterministic; the other cases take the
// other paths).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/random.hpp"
#include "common/scoped_env.hpp"
#include "flash4_gpu_problem.hpp"
#include "flash4_hopper_test_util.hpp"
#include "hopper/host.hpp"  // kDeterministicD256MinKeys

namespace flash4_gpu {
namespace {

using testing_support::ScopedEnv;

// FLASH4_HOPPER_BWD and FLASH4_BACKEND unset for one scope (the backend choice of a default
// process: the Hopper backward for what it covers), dQ by float2 atomics
// (FLASH4_HOPPER_DQ=atomics; the default is the flat layout's bulk reduce-add).
struct DefaultBackendSwitches {
  ScopedEnv hopper_bwd{"FLASH4_HOPPER_BWD", nullptr};
  ScopedEnv backend{"FLASH4_BACKEND", nullptr};
  ScopedEnv dq{"FLASH4_HOPPER_DQ", "atomics"};
};

// FLASH4_HOPPER_BWD_BM as set (a WideM suite's 128), else 64: the ...BulkDq suites keep the
// BM = 64 kernels covered at d 64, where 128-query blocks are the default (WideM covers those).
struct Bm64UnlessSet {
  std::string value = std::getenv("FLASH4_HOPPER_BWD_BM") ? std::getenv("FLASH4_HOPPER_BWD_BM") : "64";
  ScopedEnv bm{"FLASH4_HOPPER_BWD_BM", value.c_str()};
};

// How a test adds dQ: which switches it sets.
enum class DqPath { atomics, bulk, per_warpgroup, flat };

// DefaultBackendSwitches, then FLASH4_HOPPER_DQ for `dq`: atomics (the defaults' own), bulk
// (lock-step, the ...BulkDq suites, at BM = 64 unless a suite set FLASH4_HOPPER_BWD_BM),
// per_warpgroup (the ...PerWarpgroupDq suites) or flat (the ...FlatDq suites).
struct DqPathSwitches : DefaultBackendSwitches {
  std::optional<ScopedEnv> path;
  std::optional<Bm64UnlessSet> bm;
  explicit DqPathSwitches(DqPath dq) {
    if (dq == DqPath::bulk) path.emplace("FLASH4_HOPPER_DQ", "bulk"), bm.emplace();
    if (dq == DqPath::per_warpgroup) path.emplace("FLASH4_HOPPER_DQ", "per_warpgroup");
    if (dq == DqPath::flat) path.emplace("FLASH4_HOPPER_DQ", "flat");
  }
};

// " (FLASH4_HOPPER_DQ=...)" while a bulk switch is set, for the error lines.
std::string bulk_dq_note() {
  const char* v = std::getenv("FLASH4_HOPPER_DQ");
  if (v == nullptr || std::string(v) == "atomics") return "";
  return std::string(" (FLASH4_HOPPER_DQ=") + v + ")";
}

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
  std::printf("[ errors ] %s | bwd %s%s | dq %.2e dk %.2e dv %.2e (slack dq %.1e dk %.1e)", p.describe().c_str(),
              runner.gpu_backward_backend().c_str(), bulk_dq_note().c_str(), e.dq, e.dk, e.dv, e.dq_slack, e.dk_slack);
  if (p.sink) std::printf(" dsink %.2e (slack %.1e)", e.dsink, e.dsink_slack);
  std::printf("\n");
  const Tolerance tol = tolerance_for(p.dtype);
  EXPECT_LT(e.out, tol.out) << "out (forward)";
  EXPECT_LT(e.dq, tol.grad + e.dq_slack) << "dq (slack for the 16-bit out: " << e.dq_slack << ")";
  EXPECT_LT(e.dk, tol.grad + e.dk_slack) << "dk (slack for the 16-bit out: " << e.dk_slack << ")";
  EXPECT_LT(e.dv, tol.grad) << "dv";
  // dsink (NaN-poisoned before the call, so an unwritten dsink fails): the sum over rows of
  // -exp(sink - lse) D, D from the 16-bit out, as in the portable suites.
  if (p.sink) EXPECT_LT(e.dsink, tol.grad + e.dsink_slack) << "dsink (slack for the 16-bit out: " << e.dsink_slack << ")";
  return runner.gpu_backward_backend();
}

// check_backward under the switches of `dq`, which must run on the Hopper kernel.
void expect_hopper_matches_reference(const Problem& p, DqPath dq) {
  std::string backend;
  {
    DqPathSwitches switches(dq);
    backend = check_backward(p);
  }
  EXPECT_EQ(backend, "hopper") << "a covered case ran elsewhere (FLASH4_LOG=1 says why)";
}

class Flash4HopperBackward : public ::testing::TestWithParam<Problem> {};
class Flash4HopperBackwardBulkDq : public ::testing::TestWithParam<Problem> {};
// FLASH4_HOPPER_DQ=per_warpgroup (the non-deterministic default, set explicitly): bulk
// reduce-add, each consumer warpgroup handed its buffers on barriers of its own;
// deterministic cases take the lock-step bulk path.
class Flash4HopperBackwardPerWarpgroupDq : public ::testing::TestWithParam<Problem> {};
// FLASH4_HOPPER_DQ=flat (the default where it applies, set explicitly): each warpgroup's dQ tile
// stored thread-major and added by one 1-D bulk reduce-add into the flat layout, converted by
// its own finish kernel.
class Flash4HopperBackwardFlatDq : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperBackward, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_matches_reference(GetParam(), DqPath::atomics);
}
TEST_P(Flash4HopperBackwardBulkDq, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_matches_reference(GetParam(), DqPath::bulk);
}
TEST_P(Flash4HopperBackwardPerWarpgroupDq, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_matches_reference(GetParam(), DqPath::per_warpgroup);
}
TEST_P(Flash4HopperBackwardFlatDq, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_matches_reference(GetParam(), DqPath::flat);
}
// FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=0 | 1 (the default: 1 at d 64, 0 at d 128; set explicitly
// so both paths run at both dims): the warpgroup's chunk through the staging buffer and the dQ
// writer, or by float4 atomics straight into the flat layout (not deterministic).
void expect_each_atomic_chunk_setting_matches(const std::function<void()>& check, std::initializer_list<const char*> settings) {
  for (const char* chunks : settings) {
    SCOPED_TRACE(std::string("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=") + chunks);
    ScopedEnv atomic_chunks("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", chunks);
    check();
  }
}
// FLASH4_HOPPER_BWD_HEADS_FIRST=0 | 1 (the default: heads first for causal calls at d 128 /
// 256 up to 8k keys): the dense grid walking the key blocks of one head, or the heads first.
TEST_P(Flash4HopperBackwardFlatDq, UnderEachGridOrderMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  for (const char* heads_first : {"0", "1"}) {
    SCOPED_TRACE(std::string("FLASH4_HOPPER_BWD_HEADS_FIRST=") + heads_first);
    ScopedEnv order("FLASH4_HOPPER_BWD_HEADS_FIRST", heads_first);
    expect_hopper_matches_reference(GetParam(), DqPath::flat);
  }
}
TEST_P(Flash4HopperBackwardFlatDq, UnderEachAtomicChunkSettingMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_each_atomic_chunk_setting_matches([this] { expect_hopper_matches_reference(GetParam(), DqPath::flat); },
                                           {"0", "1"});
}

// d x dtype x causal over shapes with Sq = Sk, Sq < Sk, Sq > Sk and GQA, lengths {1, 17, 128,
// 1000, 4097}, and more.
std::vector<Problem> covered_cases() {
  constexpr Shape shapes[] = {{2, 4, 2, 128, 128},   {1, 2, 2, 17, 1000}, {2, 2, 1, 1000, 17}, {3, 2, 2, 1, 128},
                              {1, 2, 1, 1000, 1000}, {1, 1, 1, 128, 300}, {1, 8, 1, 17, 17},   {2, 2, 1, 1, 1}};
  std::vector<Problem> cases = shape_sweep(named("hopper bwd"), {64, 128}, shapes);
  append(cases, length_sweep(named("hopper bwd length", 64)));
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
INSTANTIATE_TEST_SUITE_P(Covered, Flash4HopperBackwardBulkDq, ::testing::ValuesIn(covered_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Covered, Flash4HopperBackwardPerWarpgroupDq, ::testing::ValuesIn(covered_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Covered, Flash4HopperBackwardFlatDq, ::testing::ValuesIn(covered_cases()), test_name);

// seqused_k on the Hopper backward (on by default since scripts/hopper_seqused_check.sh passed).
// Every dQ path; the K / V rows past the keys used are NaN in all but one case, and their
// dK / dV rows must come out 0 (the reference's).
class Flash4HopperBackwardSeqused : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperBackwardSeqused, BothDqPathsRunOnHopperAndMatchFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv by_default("FLASH4_HOPPER_SEQUSED", nullptr);
  expect_hopper_matches_reference(GetParam(), DqPath::atomics);
  expect_hopper_matches_reference(GetParam(), DqPath::bulk);
  expect_hopper_matches_reference(GetParam(), DqPath::per_warpgroup);
}
INSTANTIATE_TEST_SUITE_P(Seqused, Flash4HopperBackwardSeqused, ::testing::ValuesIn(seqused_cases({64, 128})),
                         test_name);

// Packed batches: the forward and the backward must both run on the Hopper kernels.
void expect_varlen_on_hopper_matches_reference(const Problem& p, DqPath dq) {
  std::string forward, backward;
  {
    DqPathSwitches switches(dq);
    backward = check_backward(p, &forward);
  }
  EXPECT_EQ(forward, "hopper") << "the varlen forward ran elsewhere (FLASH4_LOG=1 says why)";
  EXPECT_EQ(backward, "hopper") << "the varlen backward ran elsewhere (FLASH4_LOG=1 says why)";
}

class Flash4HopperVarlenBackward : public ::testing::TestWithParam<Problem> {};
class Flash4HopperVarlenBackwardBulkDq : public ::testing::TestWithParam<Problem> {};
class Flash4HopperVarlenBackwardPerWarpgroupDq : public ::testing::TestWithParam<Problem> {};
class Flash4HopperVarlenBackwardFlatDq : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperVarlenBackward, ForwardAndBackwardRunOnHopperAndMatchFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_varlen_on_hopper_matches_reference(GetParam(), DqPath::atomics);
}
TEST_P(Flash4HopperVarlenBackwardBulkDq, ForwardAndBackwardRunOnHopperAndMatchFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_varlen_on_hopper_matches_reference(GetParam(), DqPath::bulk);
}
TEST_P(Flash4HopperVarlenBackwardPerWarpgroupDq, ForwardAndBackwardRunOnHopperAndMatchFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_varlen_on_hopper_matches_reference(GetParam(), DqPath::per_warpgroup);
}
TEST_P(Flash4HopperVarlenBackwardFlatDq, ForwardAndBackwardRunOnHopperAndMatchFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_varlen_on_hopper_matches_reference(GetParam(), DqPath::flat);
}
TEST_P(Flash4HopperVarlenBackwardFlatDq, UnderEachAtomicChunkSettingMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_each_atomic_chunk_setting_matches(
      [this] { expect_varlen_on_hopper_matches_reference(GetParam(), DqPath::flat); }, {"0", "1"});
}

// Packed batches (cu_seqlens): documents of lengths 1, 17, not multiples of the tiles (128
// keys, 64 queries), one of 1000+ tokens, Sq != Sk per sequence (bottom-right causal),
// empty sequences (a key block no query sees: dk = dv = 0), tokens past cu_seqlens[batch]
// (their dq / dk / dv rows must be written as 0), padded rows, GQA; each batch causal and
// not, over d {64, 128} x {bf16, fp16}.
std::vector<Problem> varlen_cases() {
  std::vector<Problem> cases =
      batch_sweep(named("hopper bwd varlen"),
                  {{{{1, 1}, {17, 17}, {64, 64}, {129, 129}, {300, 300}}, 4, 2, 0, 0},
                   {documents(21, 8, 400), 8, 2, 5, 3},
                   {{{1000, 1000}, {1, 1}, {17, 17}, {255, 255}}, 2, 1, 0, 7},
                   {{{17, 100}, {100, 17}, {1, 300}, {65, 65}, {0, 5}, {5, 0}, {130, 260}}, 4, 1, 3, 0}});
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
INSTANTIATE_TEST_SUITE_P(Varlen, Flash4HopperVarlenBackwardBulkDq, ::testing::ValuesIn(varlen_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Varlen, Flash4HopperVarlenBackwardPerWarpgroupDq, ::testing::ValuesIn(varlen_cases()),
                         test_name);
INSTANTIATE_TEST_SUITE_P(Varlen, Flash4HopperVarlenBackwardFlatDq, ::testing::ValuesIn(varlen_cases()), test_name);

// Sliding windows (window_sweep), then packed documents with windows.
std::vector<Problem> window_cases() {
  std::vector<Problem> cases = window_sweep(named("hopper bwd window"));
  append(cases, packed_window_cases(named("hopper bwd window varlen"), documents(27, 8, 400, {1, 17, 1000})));
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Window, Flash4HopperBackward, ::testing::ValuesIn(window_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Window, Flash4HopperBackwardBulkDq, ::testing::ValuesIn(window_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Window, Flash4HopperBackwardPerWarpgroupDq, ::testing::ValuesIn(window_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Window, Flash4HopperBackwardFlatDq, ::testing::ValuesIn(window_cases()), test_name);

// ---- deterministic dQ ----------------------------------------------------------------------

// Deterministic calls (flash4_backward_args.deterministic = 1): each case runs once against
// the float64 reference (...MatchesFloat64Reference) and three times on the GPU alone, whose
// dq, dk, dv must be the same bits (...ThreeRunsGiveTheSameBits). Most cases have several key
// blocks per query block (the dQ tiles whose order is fixed): dense Sq = Sk, Sq < Sk, Sq > Sk,
// causal and not, sliding windows (left only, right only, both, with causal), GQA / MQA, BHSD,
// d 64 and 128, bf16 and fp16; packed batches with empty sequences, Sq != Sk, tokens of no
// sequence, adept's GQA shape.
std::vector<Problem> deterministic_cases() {
  struct Dense {
    int d;
    flash4_dtype dtype;
    int B, Hq, Hkv, Sq, Sk;
    bool causal;
    int left, right;
  };
  const Dense dense[] = {
      {64, FLASH4_BF16, 1, 4, 2, 1000, 1000, false, -1, -1},  {64, FLASH4_F16, 1, 4, 2, 1000, 1000, true, -1, -1},
      {128, FLASH4_BF16, 1, 4, 1, 700, 1500, true, -1, -1},   {128, FLASH4_F16, 2, 2, 2, 1000, 300, false, -1, -1},
      {64, FLASH4_BF16, 2, 2, 1, 17, 1000, true, -1, -1},     {128, FLASH4_BF16, 2, 2, 1, 1, 1, false, -1, -1},
      {64, FLASH4_BF16, 1, 4, 2, 1000, 1000, true, 128, -1},  {128, FLASH4_F16, 1, 4, 2, 700, 1500, false, 64, 64},
      {64, FLASH4_F16, 1, 4, 2, 600, 600, false, -1, 5},      {128, FLASH4_BF16, 1, 4, 2, 1000, 1000, true, 200, 50},
      {64, FLASH4_BF16, 1, 4, 2, 1000, 1000, false, 300, -1},
  };
  std::vector<Problem> cases;
  for (const Dense& c : dense) {
    Problem p;
    p.label = "hopper bwd deterministic";
    p.deterministic = true;
    p.dtype = c.dtype;
    p.Dqk = p.Dv = c.d;
    p.B = c.B, p.Hq = c.Hq, p.Hkv = c.Hkv, p.Sq = c.Sq, p.Sk = c.Sk;
    p.causal = c.causal;
    p.window_left = c.left, p.window_right = c.right;
    cases.push_back(p);
  }
  {  // MQA, BHSD memory order.
    Problem p;
    p.label = "hopper bwd deterministic bhsd mqa";
    p.deterministic = true;
    p.dtype = FLASH4_F16;
    p.B = 2, p.Hq = 6, p.Hkv = 1, p.Sq = 300, p.Sk = 520;
    p.bhsd = true;
    p.causal = true;
    cases.push_back(p);
  }
  struct Packed {
    std::vector<std::pair<int, int>> seqs;
    int d;
    flash4_dtype dtype;
    int Hq, Hkv, pad_q, pad_k;
    bool causal;
    int left;
  };
  const Packed packed[] = {
      {{{1, 1}, {17, 17}, {64, 64}, {129, 129}, {300, 300}}, 64, FLASH4_BF16, 4, 2, 0, 0, true, -1},
      {documents(21, 8, 400), 128, FLASH4_F16, 8, 2, 5, 3, false, -1},
      {{{17, 100}, {100, 17}, {1, 300}, {65, 65}, {0, 5}, {5, 0}, {130, 260}}, 128, FLASH4_BF16, 4, 1, 3, 0, true, -1},
      {documents(23, 4, 400, {900, 1}), 64, FLASH4_BF16, 16, 4, 0, 0, true, -1},  // adept's GQA 4, causal
      {documents(27, 6, 400, {1, 1000}), 64, FLASH4_F16, 4, 2, 3, 3, true, 100},
  };
  for (const Packed& c : packed) {
    Problem p;
    p.label = "hopper bwd deterministic varlen";
    p.deterministic = true;
    p.dtype = c.dtype;
    p.Dqk = p.Dv = c.d;
    p.seqs = c.seqs;
    p.Hq = c.Hq, p.Hkv = c.Hkv, p.pad_q = c.pad_q, p.pad_k = c.pad_k;
    p.causal = c.causal;
    p.window_left = c.left;
    cases.push_back(p);
  }
  return cases;
}

// One problem on the GPU alone (no reference, so long sequences stay cheap): random 16-bit
// inputs from a fixed seed in contiguous tensors (dense [B, S, H, D], packed [T, H, D]), the
// forward once, then backward calls whose dq, dk, dv (and dsink, with p.sink: random sink
// logits) come back as raw bits. Each backward first fills dq, dk, dv, dsink with NaN.
class GpuOnlyProblem {
 public:
  struct Gradients {
    std::vector<uint16_t> dq, dk, dv;
    std::vector<uint32_t> dsink;  // fp32 bits [Hq]; empty without a sink or when not asked for
    std::string backend;          // flash4_last_backend() of the call
  };

  explicit GpuOnlyProblem(const Problem& p) : p_(p) {}

  void setup() {
    const Problem& p = p_;
    const int64_t Hq = p.Hq, Hkv = p.Hkv, D = p.Dqk;
    if (p.varlen()) {
      std::vector<int32_t> cu_q = {0}, cu_k = {0};
      int max_q = 0, max_k = 0;
      for (auto [sq, sk] : p.seqs) {
        cu_q.push_back(cu_q.back() + sq), cu_k.push_back(cu_k.back() + sk);
        max_q = std::max(max_q, sq), max_k = std::max(max_k, sk);
      }
      const int64_t Tq = cu_q.back() + p.pad_q, Tk = cu_k.back() + p.pad_k;
      q_ = tensor({Tq, Hq, D}), out_ = tensor({Tq, Hq, D}), dout_ = tensor({Tq, Hq, D}), dq_ = tensor({Tq, Hq, D});
      k_ = tensor({Tk, Hkv, D}), v_ = tensor({Tk, Hkv, D}), dk_ = tensor({Tk, Hkv, D}), dv_ = tensor({Tk, Hkv, D});
      lse_ = tensor({Hq, Tq}, /*fp32=*/true);
      cu_q_ = upload(cu_q), cu_k_ = upload(cu_k);
      varlen_.cu_seqlens_q = static_cast<const int32_t*>(cu_q_.get());
      varlen_.cu_seqlens_k = static_cast<const int32_t*>(cu_k_.get());
      varlen_.batch = p.batch();
      varlen_.max_seqlen_q = max_q, varlen_.max_seqlen_k = max_k;
    } else {
      const int64_t B = p.B, Sq = p.Sq, Sk = p.Sk;
      q_ = tensor({B, Sq, Hq, D}), out_ = tensor({B, Sq, Hq, D}), dout_ = tensor({B, Sq, Hq, D}), dq_ = tensor({B, Sq, Hq, D});
      k_ = tensor({B, Sk, Hkv, D}), v_ = tensor({B, Sk, Hkv, D}), dk_ = tensor({B, Sk, Hkv, D}), dv_ = tensor({B, Sk, Hkv, D});
      lse_ = tensor({B, Hq, Sq}, /*fp32=*/true);
    }
    options_.causal = p.causal;
    options_.window_left = p.window_left, options_.window_right = p.window_right;
    std::mt19937_64 rng(std::hash<std::string>{}(p.describe()));
    for (DeviceTensor* t : {&q_, &k_, &v_, &dout_}) fill(*t, rng);
    if (p.sink) {
      std::normal_distribution<double> normal(0.0, 1.0);
      std::vector<float> sink(size_t(p.Hq));
      for (float& x : sink) x = float(normal(rng));
      sink_ = upload(sink);
      dsink_ = DeviceMemory(sink.size() * 4);
      options_.sink = static_cast<const float*>(sink_.get());
    }

    flash4_forward_args f;
    flash4_forward_args_init(&f);
    f.device = FLASH4_CUDA;
    f.q = q_.view, f.k = k_.view, f.v = v_.view, f.out = out_.view, f.lse = lse_.view;
    f.options = options_;
    f.varlen = varlen_;
    ASSERT_EQ(flash4_forward(&f), FLASH4_OK) << flash4_last_error();
    FLASH4_TEST_CUDA(cudaDeviceSynchronize());
  }

  // `want_dsink`: pass dsink when the problem has a sink (else dsink = NULL).
  void backward(bool deterministic, Gradients* g, bool want_dsink = true) {
    for (DeviceTensor* t : {&dq_, &dk_, &dv_}) FLASH4_TEST_CUDA(cudaMemset(t->memory.get(), 0xFF, t->memory.bytes()));
    const bool dsink = p_.sink && want_dsink;
    if (dsink) FLASH4_TEST_CUDA(cudaMemset(dsink_.get(), 0xFF, dsink_.bytes()));
    flash4_backward_args b;
    flash4_backward_args_init(&b);
    b.device = FLASH4_CUDA;
    b.q = q_.view, b.k = k_.view, b.v = v_.view, b.out = out_.view, b.dout = dout_.view, b.lse = lse_.view;
    b.dq = dq_.view, b.dk = dk_.view, b.dv = dv_.view;
    b.options = options_;
    b.varlen = varlen_;
    b.deterministic = deterministic;
    b.dsink = dsink ? static_cast<float*>(dsink_.get()) : nullptr;
    ASSERT_EQ(flash4_backward(&b), FLASH4_OK) << flash4_last_error();
    g->backend = flash4_last_backend();
    FLASH4_TEST_CUDA(cudaDeviceSynchronize());
    for (auto [t, bits] : {std::pair{&dq_, &g->dq}, {&dk_, &g->dk}, {&dv_, &g->dv}}) {
      bits->resize(t->memory.bytes() / 2);
      FLASH4_TEST_CUDA(cudaMemcpy(bits->data(), t->memory.get(), t->memory.bytes(), cudaMemcpyDeviceToHost));
    }
    g->dsink.clear();
    if (dsink) {
      g->dsink.resize(size_t(p_.Hq));
      FLASH4_TEST_CUDA(cudaMemcpy(g->dsink.data(), dsink_.get(), g->dsink.size() * 4, cudaMemcpyDeviceToHost));
    }
  }

  flash4_dtype dtype() const { return p_.dtype; }

 private:
  // A contiguous tensor of `shape`: the problem's 16-bit dtype, or fp32 (lse).
  DeviceTensor tensor(const std::vector<int64_t>& shape, bool fp32 = false) {
    return contiguous_tensor(shape, fp32 ? FLASH4_F32 : p_.dtype);
  }
  void fill(DeviceTensor& t, std::mt19937_64& rng) {
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<uint16_t> bits(t.memory.bytes() / 2);
    for (uint16_t& x : bits) x = to_bits(normal(rng), p_.dtype);
    cudaMemcpy(t.memory.get(), bits.data(), t.memory.bytes(), cudaMemcpyHostToDevice);
  }

  Problem p_;
  DeviceTensor q_, k_, v_, out_, dout_, lse_, dq_, dk_, dv_;
  DeviceMemory cu_q_, cu_k_, sink_, dsink_;
  flash4_varlen varlen_{};
  flash4_options options_{};
};

// Every run of a deterministic backward after the first must give its dq, dk, dv bits.
void expect_same_bits(const GpuOnlyProblem::Gradients& first, const GpuOnlyProblem::Gradients& again, int run) {
  for (auto [name, a, b] : {std::tuple{"dq", &first.dq, &again.dq}, std::tuple{"dk", &first.dk, &again.dk},
                            std::tuple{"dv", &first.dv, &again.dv}}) {
    const int64_t at = first_difference(*a, *b);
    EXPECT_EQ(at, -1) << name << " of run " << run << " differs from run 1 at element " << at;
  }
  const int64_t at = first_difference(first.dsink, again.dsink);
  EXPECT_EQ(at, -1) << "dsink of run " << run << " differs from run 1 at head " << at;
}

// Three deterministic backwards of `gpu` (set up): the first's gradients into *first (on the
// Hopper kernel), each later run's compared with them bit for bit. Returns early on a fatal
// failure (the caller checks HasFatalFailure).
void expect_three_runs_same_bits(GpuOnlyProblem& gpu, GpuOnlyProblem::Gradients* first) {
  gpu.backward(true, first);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_EQ(first->backend, "hopper");
  for (int run = 2; run <= 3; ++run) {
    GpuOnlyProblem::Gradients again;
    gpu.backward(true, &again);
    if (::testing::Test::HasFatalFailure()) return;
    expect_same_bits(*first, again, run);
  }
}

// ||a - r|| / ||r|| of two 16-bit gradients, NaN when a has a NaN.
double relative_difference(const std::vector<uint16_t>& a, const std::vector<uint16_t>& r, flash4_dtype dtype) {
  std::vector<double> x(a.size()), y(r.size());
  for (size_t i = 0; i < a.size(); ++i) x[i] = from_bits(a[i], dtype), y[i] = from_bits(r[i], dtype);
  return relative_error(x, y);
}

// Three deterministic runs of p on the GPU under the switches of `dq`: the same bits.
void expect_deterministic_runs_same_bits(const Problem& p, DqPath dq) {
  SCOPED_TRACE(p.describe());
  DqPathSwitches switches(dq);
  GpuOnlyProblem gpu(p);
  gpu.setup();
  if (::testing::Test::HasFatalFailure()) return;
  GpuOnlyProblem::Gradients first;
  expect_three_runs_same_bits(gpu, &first);
}

class Flash4HopperDeterministicBackward : public ::testing::TestWithParam<Problem> {};
class Flash4HopperDeterministicBackwardBulkDq : public ::testing::TestWithParam<Problem> {};
// FLASH4_HOPPER_DQ=flat on deterministic calls: the d 64 cases at 128-query blocks (each
// warpgroup's rows a slot of their own) take it; the others keep the lock-step bulk path.
class Flash4HopperDeterministicBackwardFlatDq : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperDeterministicBackwardFlatDq, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_matches_reference(GetParam(), DqPath::flat);
}
TEST_P(Flash4HopperDeterministicBackwardFlatDq, ThreeRunsGiveTheSameBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_deterministic_runs_same_bits(GetParam(), DqPath::flat);
}

TEST_P(Flash4HopperDeterministicBackward, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_matches_reference(GetParam(), DqPath::atomics);
}
TEST_P(Flash4HopperDeterministicBackwardBulkDq, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_matches_reference(GetParam(), DqPath::bulk);
}

TEST_P(Flash4HopperDeterministicBackward, ThreeRunsGiveTheSameBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_deterministic_runs_same_bits(GetParam(), DqPath::atomics);
}
TEST_P(Flash4HopperDeterministicBackwardBulkDq, ThreeRunsGiveTheSameBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_deterministic_runs_same_bits(GetParam(), DqPath::bulk);
}

// The deterministic bulk path adds the same fp32 tiles (the d = 64 halves combined the same
// way) in the same key-block order as the deterministic atomics, and the zeros it adds to
// rows past a sequence leave them unchanged: dq, dk, dv must be the same bits. (A difference
// would mean the bulk reduction rounds differently from a float atomic -- e.g. subnormals.)
TEST_P(Flash4HopperDeterministicBackwardBulkDq, SameBitsAsTheDeterministicAtomics) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  SCOPED_TRACE(GetParam().describe());
  DefaultBackendSwitches defaults;
  GpuOnlyProblem gpu(GetParam());
  gpu.setup();
  if (::testing::Test::HasFatalFailure()) return;
  GpuOnlyProblem::Gradients atomics, bulk;
  gpu.backward(true, &atomics);
  if (::testing::Test::HasFatalFailure()) return;
  {
    ScopedEnv bulk_dq("FLASH4_HOPPER_DQ", "bulk");
    Bm64UnlessSet bm;  // as the atomics: BM = 128 sums a block's dQ over 128 keys, another order
    gpu.backward(true, &bulk);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_EQ(atomics.backend, "hopper");
  EXPECT_EQ(bulk.backend, "hopper");
  expect_same_bits(atomics, bulk, 2);
}
INSTANTIATE_TEST_SUITE_P(Deterministic, Flash4HopperDeterministicBackward, ::testing::ValuesIn(deterministic_cases()),
                         test_name);
INSTANTIATE_TEST_SUITE_P(Deterministic, Flash4HopperDeterministicBackwardBulkDq,
                         ::testing::ValuesIn(deterministic_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Deterministic, Flash4HopperDeterministicBackwardFlatDq,
                         ::testing::ValuesIn(deterministic_cases()), test_name);

// Long chains of dQ tiles under contention: Sq = Sk = 4097 (33 key blocks, 65 query blocks),
// so a query block waits for up to 32 key blocks' tiles, with more CTAs than an H200 has SMs
// (132): not causal (every query block takes a tile from all 33 key blocks), causal (chains
// that start at the diagonal) and a causal GQA group of 4. Three deterministic runs must give
// the same bits, and the atomic backward the same gradients up to the order of the fp32 sums
// (a quarter of the tolerance; dk and dv do not depend on the dQ order at all).
void expect_contention_cases_repeat_bit_for_bit(DqPath dq) {
  DefaultBackendSwitches defaults;
  std::optional<ScopedEnv> bulk;
  if (dq == DqPath::bulk) bulk.emplace("FLASH4_HOPPER_DQ", "bulk");
  struct Case {
    int d;
    flash4_dtype dtype;
    int B, Hq, Hkv;
    bool causal;
  };
  // 33 key blocks x Hkv x B CTAs: 264, 264, 264.
  const Case cases[] = {{64, FLASH4_BF16, 2, 8, 4, false}, {128, FLASH4_F16, 1, 8, 8, true}, {64, FLASH4_BF16, 4, 8, 2, true}};
  for (const Case& c : cases) {
    Problem p;
    p.label = "hopper bwd deterministic contention";
    p.deterministic = true;
    p.dtype = c.dtype;
    p.Dqk = p.Dv = c.d;
    p.B = c.B, p.Hq = c.Hq, p.Hkv = c.Hkv, p.Sq = p.Sk = 4097;
    p.causal = c.causal;
    SCOPED_TRACE(p.describe());
    GpuOnlyProblem gpu(p);
    gpu.setup();
    if (::testing::Test::HasFatalFailure()) return;
    GpuOnlyProblem::Gradients first, atomic;
    expect_three_runs_same_bits(gpu, &first);
    if (::testing::Test::HasFatalFailure()) return;
    gpu.backward(false, &atomic);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_EQ(atomic.backend, "hopper");
    const double limit = tolerance_for(p.dtype).grad / 4;
    const double dq = relative_difference(first.dq, atomic.dq, p.dtype), dk = relative_difference(first.dk, atomic.dk, p.dtype),
                 dv = relative_difference(first.dv, atomic.dv, p.dtype);
    std::printf("[ errors ] %s | deterministic vs atomic%s: dq %.2e dk %.2e dv %.2e\n", p.describe().c_str(),
                bulk_dq_note().c_str(), dq, dk, dv);
    EXPECT_LT(dq, limit) << "dq, deterministic vs atomic";
    EXPECT_LT(dk, limit) << "dk, deterministic vs atomic";
    EXPECT_LT(dv, limit) << "dv, deterministic vs atomic";
  }
}

TEST(Flash4HopperDeterministicBackwardContention, LongSequencesWithMoreTilesThanSmsRepeatBitForBit) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_contention_cases_repeat_bit_for_bit(DqPath::atomics);
}
// The same with dQ by bulk reduce-add (both the deterministic and the atomic-mode runs).
TEST(Flash4HopperDeterministicBackwardContentionBulkDq, LongSequencesWithMoreTilesThanSmsRepeatBitForBit) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_contention_cases_repeat_bit_for_bit(DqPath::bulk);
}

// base as a packed batch with empty sequences, Sq != Sk (causal: rows before the diagonal
// see no key), tokens of no sequence and GQA, d 64, causal: the sink and softcap suites'
// packed case.
Problem ragged_packed(Problem base, const char* label) {
  base.label = label;
  base.Dqk = base.Dv = 64;
  base.seqs = {{17, 100}, {100, 17}, {1, 300}, {65, 65}, {0, 5}, {5, 0}, {130, 260}};
  base.Hq = 4, base.Hkv = 2, base.pad_q = 3, base.pad_k = 2;
  base.causal = true;
  return base;
}

// Deterministic dQ with a sink: dense (causal Sq > Sk: rows that see no key; a window; GQA)
// and packed (empty sequences, tokens of no sequence), d 64 / 128, bf16 / fp16. Also run by
// Sink/Flash4HopperDeterministicBackward...: three runs give the same dq, dk, dv and dsink
// bits, and the bulk dQ path the bits of the atomics.
std::vector<Problem> sink_deterministic_cases() {
  std::vector<Problem> cases;
  Problem p = named("hopper bwd sink deterministic", 64);
  p.sink = true, p.deterministic = true;
  p.B = 1, p.Hq = 4, p.Hkv = 2, p.Sq = 1000, p.Sk = 700;
  p.causal = true;
  cases.push_back(p);
  p.dtype = FLASH4_F16;
  p.Dqk = p.Dv = 128;
  p.B = 2, p.Hq = 4, p.Hkv = 1, p.Sq = 600, p.Sk = 600;
  p.causal = false;
  p.window_left = 64, p.window_right = 64;
  cases.push_back(p);
  p.label = "hopper bwd sink deterministic varlen";
  p.dtype = FLASH4_BF16;
  p.Dqk = p.Dv = 128;
  p.seqs = {{1, 1}, {17, 17}, {0, 5}, {129, 129}, {300, 100}};
  p.Hq = 4, p.Hkv = 2, p.pad_q = 3, p.pad_k = 1;
  p.window_left = -1, p.window_right = -1;
  p.causal = true;
  cases.push_back(p);
  p.dtype = FLASH4_F16;
  p.Dqk = p.Dv = 64;
  p.seqs = documents(33, 4, 400, {900, 1});
  p.Hq = 16, p.Hkv = 4, p.pad_q = 0, p.pad_k = 0;  // adept's GQA 4
  cases.push_back(p);
  return cases;
}

// ---- sink logits and dsink ------------------------------------------------------------------

// Learnable sink logits (random per head, never 0) with dsink asked for: dense shape sweep
// (d 64 / 128 x bf16 / fp16 x causal, GQA / MQA, Sq > Sk causal so that the first rows see
// no key: lse = sink, P = 0, their dsink term -D), windows whose rows see no key, large
// logits (the row max far above the sink), packed batches (empty sequences, Sq != Sk,
// tokens of no sequence: their dsink term 0) with and without windows, and deterministic dQ
// dense and packed. Each must run on the Hopper kernel and match the reference in dq, dk,
// dv and dsink.
std::vector<Problem> sink_cases() {
  // shape_sweep gives the first two shapes to the cases without causal, the last two to the
  // causal ones: 500 x 200 causal, rows 0 .. 299 see no key.
  constexpr Shape shapes[] = {{2, 4, 2, 300, 300}, {2, 2, 1, 17, 700}, {1, 4, 1, 500, 200}, {1, 8, 2, 600, 600}};
  Problem base = named("hopper bwd sink");
  base.sink = true;
  std::vector<Problem> cases = shape_sweep(base, {64, 128}, shapes);
  {  // Windows: rows 0 .. 682 see no key (the right edge 17 stops before key 0), d 64 bf16.
    Problem p = base;
    p.label = "hopper bwd sink window empty rows";
    p.Dqk = p.Dv = 64;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 1000, p.Sk = 300;
    p.window_left = 300, p.window_right = 17;
    cases.push_back(p);
  }
  {  // A causal window of one key each side, Sq < Sk, fp16 d 128.
    Problem p = base;
    p.label = "hopper bwd sink window";
    p.dtype = FLASH4_F16;
    p.B = 1, p.Hq = 4, p.Hkv = 1, p.Sq = 300, p.Sk = 1000;
    p.window_left = 1, p.window_right = 0;
    p.causal = true;
    cases.push_back(p);
  }
  {  // Large logits: lse far above the sink, exp(sink - lse) tiny.
    Problem p = base;
    p.label = "hopper bwd sink large logits";
    p.Dqk = p.Dv = 64;
    p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 700, p.Sk = 1500;
    p.q_scale = 4.0;
    cases.push_back(p);
  }
  {  // Packed: empty sequences, Sq != Sk (causal: rows before the diagonal see no key),
     // tokens of no sequence, GQA; d 64 bf16 causal and d 128 fp16 not.
    Problem p = ragged_packed(base, "hopper bwd sink varlen");
    cases.push_back(p);
    p.dtype = FLASH4_F16;
    p.Dqk = p.Dv = 128;
    p.seqs = documents(31, 8, 400, {1, 1000});
    p.Hq = 8, p.Hkv = 2, p.pad_q = 5, p.pad_k = 0;
    p.causal = false;
    cases.push_back(p);
  }
  Problem windowed = named("hopper bwd sink window varlen");
  windowed.sink = true;
  append(cases, packed_window_cases(windowed, documents(32, 6, 400, {1, 17})));
  append(cases, sink_deterministic_cases());
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Sink, Flash4HopperBackward, ::testing::ValuesIn(sink_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Sink, Flash4HopperBackwardBulkDq, ::testing::ValuesIn(sink_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Sink, Flash4HopperBackwardPerWarpgroupDq, ::testing::ValuesIn(sink_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Sink, Flash4HopperBackwardFlatDq, ::testing::ValuesIn(sink_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Sink, Flash4HopperDeterministicBackward, ::testing::ValuesIn(sink_deterministic_cases()),
                         test_name);
INSTANTIATE_TEST_SUITE_P(Sink, Flash4HopperDeterministicBackwardBulkDq,
                         ::testing::ValuesIn(sink_deterministic_cases()), test_name);

// ---- softcap ---------------------------------------------------------------------------------

// Softcap c (x = c tanh(s scale / c)): dS gains the factor 1 - tanh^2. Dense sweep (d 64 / 128
// x bf16 / fp16 x causal, GQA / MQA) at caps where the tanh bends the logits (q scaled up so
// |s scale| reaches several c), a window, packed batches, deterministic dQ dense and packed,
// and softcap with a sink. Each must run on the Hopper kernel and match the reference.
std::vector<Problem> softcap_deterministic_cases() {
  std::vector<Problem> cases;
  Problem p = named("hopper bwd softcap deterministic", 64);
  p.softcap = 10.0f, p.q_scale = 3.0, p.deterministic = true;
  p.B = 1, p.Hq = 4, p.Hkv = 2, p.Sq = 1000, p.Sk = 700;
  p.causal = true;
  cases.push_back(p);
  p.label = "hopper bwd softcap deterministic varlen";
  p.dtype = FLASH4_F16;
  p.Dqk = p.Dv = 128;
  p.seqs = {{1, 1}, {17, 17}, {0, 5}, {129, 129}, {300, 100}};
  p.Hq = 4, p.Hkv = 2, p.pad_q = 3, p.pad_k = 1;
  cases.push_back(p);
  return cases;
}

std::vector<Problem> softcap_cases() {
  constexpr Shape shapes[] = {{2, 4, 2, 300, 300}, {2, 2, 1, 17, 700}, {1, 4, 1, 500, 200}, {1, 8, 2, 600, 600}};
  Problem base = named("hopper bwd softcap");
  base.softcap = 20.0f, base.q_scale = 4.0;
  std::vector<Problem> cases = shape_sweep(base, {64, 128}, shapes);
  for (size_t i = 0; i < cases.size(); i += 3) cases[i].softcap = 5.0f;  // deep in the tanh's flat part
  {  // A window (left 64, right 17), d 64 bf16.
    Problem p = base;
    p.label = "hopper bwd softcap window";
    p.Dqk = p.Dv = 64;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 700, p.Sk = 700;
    p.window_left = 64, p.window_right = 17;
    cases.push_back(p);
  }
  {  // Packed: empty sequences, Sq != Sk, tokens of no sequence, GQA; causal d 64 bf16.
    cases.push_back(ragged_packed(base, "hopper bwd softcap varlen"));
  }
  {  // Softcap and a sink together (dsink too), fp16 d 128.
    Problem p = base;
    p.label = "hopper bwd softcap sink";
    p.dtype = FLASH4_F16;
    p.Dqk = p.Dv = 128;
    p.B = 1, p.Hq = 4, p.Hkv = 1, p.Sq = 500, p.Sk = 200;
    p.causal = true;
    p.sink = true;
    cases.push_back(p);
  }
  append(cases, softcap_deterministic_cases());
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Softcap, Flash4HopperBackward, ::testing::ValuesIn(softcap_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Softcap, Flash4HopperBackwardBulkDq, ::testing::ValuesIn(softcap_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Softcap, Flash4HopperBackwardPerWarpgroupDq, ::testing::ValuesIn(softcap_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Softcap, Flash4HopperBackwardFlatDq, ::testing::ValuesIn(softcap_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Softcap, Flash4HopperDeterministicBackward,
                         ::testing::ValuesIn(softcap_deterministic_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Softcap, Flash4HopperDeterministicBackwardBulkDq,
                         ::testing::ValuesIn(softcap_deterministic_cases()), test_name);

// dsink = NULL with a sink (the sink a constant): the same kernels, only the dsink terms are
// skipped, so a deterministic call gives the dq, dk, dv bits of one that asks for dsink --
// dense and packed, on the Hopper kernel both times.
TEST(Flash4HopperBackwardSink, WithoutDsinkGivesTheGradientsOfACallWithIt) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  DefaultBackendSwitches defaults;
  for (const Problem& p : sink_deterministic_cases()) {
    SCOPED_TRACE(p.describe());
    GpuOnlyProblem gpu(p);
    gpu.setup();
    if (::testing::Test::HasFatalFailure()) return;
    GpuOnlyProblem::Gradients with, without;
    gpu.backward(true, &with, /*want_dsink=*/true);
    if (::testing::Test::HasFatalFailure()) return;
    gpu.backward(true, &without, /*want_dsink=*/false);
    if (::testing::Test::HasFatalFailure()) return;
    EXPECT_EQ(with.backend, "hopper");
    EXPECT_EQ(without.backend, "hopper");
    EXPECT_EQ(with.dsink.size(), size_t(p.Hq));
    EXPECT_TRUE(without.dsink.empty());
    for (auto [name, a, b] : {std::tuple{"dq", &with.dq, &without.dq}, std::tuple{"dk", &with.dk, &without.dk},
                              std::tuple{"dv", &with.dv, &without.dv}}) {
      const int64_t at = first_difference(*a, *b);
      EXPECT_EQ(at, -1) << name << " without dsink differs from the call with it at element " << at;
    }
  }
}

// dsink is written, not accumulated: a call with no query token still writes dsink = 0 (as
// the portable backward does; the Hopper backward leaves empty problems to it), and a packed
// call whose tokens all belong to no sequence runs on the Hopper kernel and writes dsink = 0
// and zero gradients. dsink starts as NaN.
TEST(Flash4HopperBackwardSink, CallsWithoutQueryRowsWriteZeroDsink) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  DefaultBackendSwitches defaults;
  Problem empty = named("hopper bwd sink no tokens", 64);
  empty.sink = true;
  empty.B = 1, empty.Hq = 4, empty.Hkv = 2, empty.Sq = 0, empty.Sk = 0;
  Problem outside = named("hopper bwd sink no sequence rows", 64);
  outside.sink = true;
  outside.seqs = {{0, 0}, {0, 0}};
  outside.Hq = 4, outside.Hkv = 2, outside.pad_q = 70, outside.pad_k = 130;
  for (const Problem& p : {empty, outside}) {
    SCOPED_TRACE(p.describe());
    for (bool deterministic : {false, true}) {
      GpuOnlyProblem gpu(p);
      gpu.setup();
      if (::testing::Test::HasFatalFailure()) return;
      GpuOnlyProblem::Gradients g;
      gpu.backward(deterministic, &g);
      if (::testing::Test::HasFatalFailure()) return;
      if (p.varlen()) EXPECT_EQ(g.backend, "hopper");
      ASSERT_EQ(g.dsink.size(), size_t(p.Hq));
      for (size_t h = 0; h < g.dsink.size(); ++h) EXPECT_EQ(g.dsink[h], 0u) << "dsink[" << h << "] bits";
      for (auto [name, bits] : {std::pair{"dq", &g.dq}, {"dk", &g.dk}, {"dv", &g.dv}})
        EXPECT_EQ(std::count(bits->begin(), bits->end(), uint16_t(0)), int64_t(bits->size()))
            << name << ": rows of no sequence must be 0";
    }
  }
}

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

// Head dims the backward rounds up (padded_head_dim in hopper/host.hpp: the d 64 or d 128
// kernel, TMA zero-filling Q / K / V / dO past d_qk / d_v; dK, dV stored to d_qk / d_v
// columns, dQ added to a [tokens][Hq][d_qk] workspace, the bulk reduce-adds clipped by its
// tensor map): d 32 / 40 / 96 / 120, d_v != d_qk both ways, dense (causal, GQA, a window) and
// packed, every dQ path, deterministic too. A write past d_qk / d_v lands on the next head's
// columns (the head stride is the real d), which the comparison with float64 catches.
std::vector<Problem> padded_head_dim_cases() {
  struct Dims {
    int qk, v;
  };
  const Dims dims[] = {{32, 32}, {40, 40}, {96, 96}, {120, 120}, {64, 96}, {128, 64}, {48, 80}};
  std::vector<Problem> cases;
  int i = 0;
  for (Dims d : dims) {
    Problem p;
    p.label = "hopper bwd padded d";
    p.Dqk = d.qk, p.Dv = d.v;
    p.dtype = i % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 300, p.Sk = 300;
    p.causal = true;
    cases.push_back(p);
    p.causal = false, p.Sq = 17, p.Sk = 700;
    p.window_left = i % 3 == 0 ? 100 : -1;
    cases.push_back(p);
    Problem v;
    v.label = "hopper bwd padded d varlen";
    v.Dqk = d.qk, v.Dv = d.v;
    v.dtype = p.dtype;
    v.seqs = documents(60 + i, 5, 300, {1, 17});
    v.Hq = 8, v.Hkv = 2;
    v.causal = true;
    cases.push_back(v);
    ++i;
  }
  return cases;
}
std::vector<Problem> padded_head_dim_deterministic_cases() {
  std::vector<Problem> cases;
  for (Problem p : padded_head_dim_cases()) {
    p.deterministic = true;
    cases.push_back(p);
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Padded, Flash4HopperBackward, ::testing::ValuesIn(padded_head_dim_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Padded, Flash4HopperBackwardBulkDq, ::testing::ValuesIn(padded_head_dim_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Padded, Flash4HopperBackwardPerWarpgroupDq, ::testing::ValuesIn(padded_head_dim_cases()),
                         test_name);
INSTANTIATE_TEST_SUITE_P(Padded, Flash4HopperBackwardFlatDq, ::testing::ValuesIn(padded_head_dim_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Padded, Flash4HopperDeterministicBackward,
                         ::testing::ValuesIn(padded_head_dim_deterministic_cases()), test_name);
INSTANTIATE_TEST_SUITE_P(Padded, Flash4HopperDeterministicBackwardBulkDq,
                         ::testing::ValuesIn(padded_head_dim_deterministic_cases()), test_name);

TEST(Flash4HopperBackwardDispatch, UncoveredCallsRunOnThePortableBackward) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  DefaultBackendSwitches defaults;
  Problem p = small("deterministic d = 256, short sequences");  // the d 256 kernel's ordered dQ: long ones only
  p.deterministic = true;
  p.Dqk = p.Dv = 256;
  EXPECT_EQ(check_backward(p), "portable");
  p = small("d = 192/128, FLASH4_HOPPER_BWD_D256=0");
  p.Dqk = 192, p.Dv = 128;
  ScopedEnv d256_off("FLASH4_HOPPER_BWD_D256", "0");
  EXPECT_EQ(check_backward(p), "portable");
  {
    ScopedEnv off("FLASH4_HOPPER_SEQUSED", "0");
    p = small("seqused_k");
    p.seqused = {130};
    EXPECT_EQ(check_backward(p), "portable");
  }
}

TEST(Flash4HopperBackwardDispatch, EnvironmentForcesThePortableBackward) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv on("FLASH4_HOPPER_BWD", nullptr);
  ScopedEnv portable("FLASH4_BACKEND", "portable");
  EXPECT_EQ(check_backward(small("forced portable")), "portable");
}


// d = 64 at BM = 128 (FA3's 128 x 128 tile, each warpgroup's dQ over all 128 keys for its 64
// query rows, one staging buffer; the lock-step bulk dQ): the default at d 64 but for varlen
// without determinism, forced here (FLASH4_HOPPER_BWD_BM=128); the ...BulkDq suites pin BM = 64. Every d <= 64 case of the covered, window, varlen, sink, padded and
// deterministic suites (softcap stays on BM = 64: not here), against float64; the
// deterministic ones also three runs, the same bits.
std::vector<Problem> wide_m_cases(bool deterministic) {
  std::vector<Problem> all;
  auto take = [&](const std::vector<Problem>& cases) {
    for (const Problem& p : cases)
      if (p.Dqk <= 64 && p.Dv <= 64 && !(p.softcap > 0)) all.push_back(p);
  };
  if (deterministic) {
    take(deterministic_cases());
    take(sink_deterministic_cases());
  } else {
    take(covered_cases());
    take(window_cases());
    take(varlen_cases());
    take(sink_cases());
    take(padded_head_dim_cases());
  }
  return all;
}

class Flash4HopperBackwardWideM : public ::testing::TestWithParam<Problem> {};
class Flash4HopperDeterministicBackwardWideM : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperBackwardWideM, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv wide("FLASH4_HOPPER_BWD_BM", "128");
  expect_hopper_matches_reference(GetParam(), DqPath::bulk);
}
TEST_P(Flash4HopperDeterministicBackwardWideM, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv wide("FLASH4_HOPPER_BWD_BM", "128");
  expect_hopper_matches_reference(GetParam(), DqPath::bulk);
}
TEST_P(Flash4HopperDeterministicBackwardWideM, ThreeRunsGiveTheSameBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv wide("FLASH4_HOPPER_BWD_BM", "128");
  expect_deterministic_runs_same_bits(GetParam(), DqPath::bulk);
}
INSTANTIATE_TEST_SUITE_P(WideM, Flash4HopperBackwardWideM, ::testing::ValuesIn(wide_m_cases(false)), test_name);

// dK / dV by quad stores (FLASH4_HOPPER_BWD_QUAD_STORE=1, the default, pinned here: a
// 4 x 4 transpose within each quad, 16 bytes a lane, as the forward's O): the covered, window,
// varlen (rows past a sequence's keys skipped, the next sequence's rows untouched), padded
// (only d_qk / d_v columns) and sink cases, at BM = 64 and, for d <= 64, at BM = 128 too.
class Flash4HopperBackwardQuadStore : public ::testing::TestWithParam<Problem> {};

// p with FLASH4_HOPPER_BWD_QUAD_STORE=quad, at BM = 64 or (wide, d <= 64 without softcap
// only: skipped otherwise) BM = 128, against float64 (lock-step bulk dQ).
void expect_dk_dv_stores_match_reference(const Problem& p, const char* quad, bool wide) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  if (wide && (p.Dqk > 64 || p.Dv > 64 || p.softcap > 0)) GTEST_SKIP() << "BM = 128 is d <= 64, no softcap";
  ScopedEnv stores("FLASH4_HOPPER_BWD_QUAD_STORE", quad);
  std::optional<ScopedEnv> bm;
  if (wide) bm.emplace("FLASH4_HOPPER_BWD_BM", "128");
  expect_hopper_matches_reference(p, DqPath::bulk);
}

TEST_P(Flash4HopperBackwardQuadStore, RunsOnHopperAndMatchesFloat64Reference) {
  expect_dk_dv_stores_match_reference(GetParam(), "1", false);
}
TEST_P(Flash4HopperBackwardQuadStore, At128QueryBlocksMatchesFloat64Reference) {
  expect_dk_dv_stores_match_reference(GetParam(), "1", true);
}
std::vector<Problem> quad_store_cases() {
  std::vector<Problem> all;
  for (auto cases : {covered_cases(), window_cases(), varlen_cases(), padded_head_dim_cases(), sink_cases()})
    for (const Problem& p : cases) all.push_back(p);
  return all;
}
INSTANTIATE_TEST_SUITE_P(QuadStore, Flash4HopperBackwardQuadStore, ::testing::ValuesIn(quad_store_cases()), test_name);

// The opt-out, 4-byte stores of dK / dV (FLASH4_HOPPER_BWD_QUAD_STORE=0), kept covered now that
// quad stores are the default: the covered cases at BM = 64 and, d <= 64, BM = 128.
class Flash4HopperBackwardFourByteStore : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperBackwardFourByteStore, RunsOnHopperAndMatchesFloat64Reference) {
  expect_dk_dv_stores_match_reference(GetParam(), "0", false);
}
TEST_P(Flash4HopperBackwardFourByteStore, At128QueryBlocksMatchesFloat64Reference) {
  expect_dk_dv_stores_match_reference(GetParam(), "0", true);
}
INSTANTIATE_TEST_SUITE_P(FourByteStore, Flash4HopperBackwardFourByteStore, ::testing::ValuesIn(covered_cases()),
                         test_name);
INSTANTIATE_TEST_SUITE_P(WideM, Flash4HopperDeterministicBackwardWideM, ::testing::ValuesIn(wide_m_cases(true)),
                         test_name);

// d 256: the split-head-dim kernel (the default; the suites set FLASH4_HOPPER_BWD_D256=1 so
// that short deterministic cases take it too: 64-key CTAs, both consumer warpgroups on the same keys, each with half the head dim of dK /
// dV / dQ; dQ by float2 atomics here, the flat layout in the ...D256FlatDq suite). Every d 128 case of the covered,
// window, varlen, sink, softcap and seqused suites at d 256 (varlen: work lists of 64-key
// blocks); padded head dims 136 / 192 and d_qk != d_v both ways (the kernel's halves then
// hold columns past d on one side); deterministic calls (dense and packed) against float64
// and three runs bit for bit. The dispatch test: which calls take it by default.
// The d 128 cases of `suites`, at d 256.
std::vector<Problem> at_d256(std::initializer_list<std::vector<Problem>> suites) {
  std::vector<Problem> all;
  for (const std::vector<Problem>& cases : suites)
    for (Problem p : cases)
      if (p.Dqk == 128 && p.Dv == 128) {
        p.Dqk = p.Dv = 256;
        p.label += " d256";
        all.push_back(p);
      }
  return all;
}
std::vector<Problem> d256_cases() {
  std::vector<Problem> all =
      at_d256({covered_cases(), window_cases(), varlen_cases(), sink_cases(), softcap_cases(), seqused_cases({128})});
  struct Dims {
    int qk, v;
  };
  for (Dims d : {Dims{136, 136}, Dims{192, 192}, Dims{192, 128}, Dims{64, 256}}) {
    Problem p = small("hopper bwd d256 padded");
    p.Dqk = d.qk, p.Dv = d.v;
    all.push_back(p);
    p.causal = false, p.dtype = FLASH4_F16, p.Hq = 4, p.Hkv = 1, p.Sq = 333, p.Sk = 77;
    all.push_back(p);
  }
  return all;
}
std::vector<Problem> d256_deterministic_cases() {
  std::vector<Problem> all = at_d256({deterministic_cases()});
  Problem p = small("hopper bwd d256 padded deterministic");
  p.deterministic = true;
  p.Dqk = 192, p.Dv = 160;
  p.Sq = 700, p.Sk = 900;
  all.push_back(p);
  return all;
}

class Flash4HopperBackwardD256 : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperBackwardD256, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv d256("FLASH4_HOPPER_BWD_D256", "1");
  expect_hopper_matches_reference(GetParam(), DqPath::atomics);
}
INSTANTIATE_TEST_SUITE_P(D256, Flash4HopperBackwardD256, ::testing::ValuesIn(d256_cases()), test_name);

// The same cases with dQ in the flat layout (the non-deterministic default at d 256, set
// explicitly): each warpgroup's two 64-column parts a step by float4 atomics (the default) or
// through one staging buffer the two warpgroups fill in turn.
class Flash4HopperBackwardD256FlatDq : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperBackwardD256FlatDq, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv d256("FLASH4_HOPPER_BWD_D256", "1");
  expect_hopper_matches_reference(GetParam(), DqPath::flat);
}
// FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=0 | 1 | 2 (the default 2): none, the first or both of each
// warpgroup's chunks by float4 atomics into the flat layout, the rest through the buffer.
TEST_P(Flash4HopperBackwardD256FlatDq, UnderEachAtomicChunkSettingMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv d256("FLASH4_HOPPER_BWD_D256", "1");
  expect_each_atomic_chunk_setting_matches([this] { expect_hopper_matches_reference(GetParam(), DqPath::flat); },
                                           {"0", "1", "2"});
}
// The split-query step (the default with both dQ chunks by atomics; set explicitly): each
// warpgroup computes S^T / dP^T for its own 32 of a step's 64 queries, P^T and dS^T shared
// through shared memory; and FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES=0, the step of both
// warpgroups computing all 64. Dense, varlen, windows, sinks, softcap, seqused and padded
// head dims, as the suite.
TEST_P(Flash4HopperBackwardD256FlatDq, WithQueriesSplitMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv d256("FLASH4_HOPPER_BWD_D256", "1");
  ScopedEnv split("FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES", "1");
  ScopedEnv atomic_chunks("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", "2");
  expect_hopper_matches_reference(GetParam(), DqPath::flat);
}
TEST_P(Flash4HopperBackwardD256FlatDq, WithoutQueriesSplitMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv d256("FLASH4_HOPPER_BWD_D256", "1");
  ScopedEnv split("FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES", "0");
  ScopedEnv atomic_chunks("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", "2");
  expect_hopper_matches_reference(GetParam(), DqPath::flat);
}
INSTANTIATE_TEST_SUITE_P(D256, Flash4HopperBackwardD256FlatDq, ::testing::ValuesIn(d256_cases()), test_name);

class Flash4HopperDeterministicBackwardD256 : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperDeterministicBackwardD256, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv d256("FLASH4_HOPPER_BWD_D256", "1");
  expect_hopper_matches_reference(GetParam(), DqPath::atomics);
}
TEST_P(Flash4HopperDeterministicBackwardD256, ThreeRunsGiveTheSameBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  ScopedEnv d256("FLASH4_HOPPER_BWD_D256", "1");
  expect_deterministic_runs_same_bits(GetParam(), DqPath::atomics);
}
INSTANTIATE_TEST_SUITE_P(D256, Flash4HopperDeterministicBackwardD256, ::testing::ValuesIn(d256_deterministic_cases()),
                         test_name);

TEST(Flash4HopperBackwardD256Dispatch, DefaultDenseAndVarlenButShortDeterministicSequences) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  DefaultBackendSwitches defaults;
  ScopedEnv unset("FLASH4_HOPPER_BWD_D256", nullptr);
  Problem p = small("d256 default");
  p.Dqk = p.Dv = 256;
  EXPECT_EQ(check_backward(p), "hopper");
  Problem packed = p;
  packed.label = "d256 varlen";
  packed.seqs = {{100, 130}, {17, 17}};
  EXPECT_EQ(check_backward(packed), "hopper") << "varlen at d 256 (64-key work lists)";
  Problem det = p;
  det.label = "d256 deterministic, short";
  det.deterministic = true;
  EXPECT_EQ(check_backward(det), "portable") << "ordered dQ over short sequences: the portable backward";
  det.label = "d256 deterministic, long";
  det.B = 1, det.Hq = 2, det.Hkv = 1, det.Sq = 128, det.Sk = int(flash4::detail::kDeterministicD256MinKeys);
  EXPECT_EQ(check_backward(det), "hopper");
  {
    ScopedEnv on("FLASH4_HOPPER_BWD_D256", "1");
    det.Sk = 300;
    EXPECT_EQ(check_backward(det), "hopper") << "FLASH4_HOPPER_BWD_D256=1 forces";
  }
  ScopedEnv off("FLASH4_HOPPER_BWD_D256", "0");
  EXPECT_EQ(check_backward(p), "portable") << "FLASH4_HOPPER_BWD_D256=0 turns it off";
}

}  // namespace
}  // namespace flash4_gpu
