// flash4's Hopper (sm90a) forward against the float64 CPU reference, on an sm_90 device:
// every case the Hopper kernels cover (dense bf16 / fp16, d = 64, 128 and 256 and the head dims
// they round up to those, GQA / MQA,
// causal or not, sliding windows, softcap, learnable sink, BSHD / BHSD; packed varlen
// batches; seqused_k) must run on them -- flash4_last_backend() says "hopper" -- and match the
// reference; out and lse are NaN-poisoned before each call, and the rows of no sequence
// (varlen: tokens past cu_seqlens[batch]) must keep the poison. Lengths {1, 17, 128, 1000,
// 4097} as Sq = Sk, Sq < Sk and Sq > Sk. Calls the kernels do not cover fall back to the
// portable ones, and FLASH4_BACKEND=portable forces those.
#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/random.hpp"
#include "common/scoped_env.hpp"
#include "flash4_gpu_problem.hpp"
#include "flash4_hopper_test_util.hpp"

namespace flash4_gpu {
namespace {

// p's forward under the switches `env` (name, value; nullptr unsets) for the call: it must run
// on the Hopper kernels and match the float64 reference (check_forward).
void expect_hopper_forward(const Problem& p,
                           std::initializer_list<std::pair<const char*, const char*>> env = {}) {
  std::vector<std::unique_ptr<testing_support::ScopedEnv>> switches;
  for (auto [name, value] : env) switches.push_back(std::make_unique<testing_support::ScopedEnv>(name, value));
  const std::string backend = check_forward(p);
  EXPECT_EQ(backend, "hopper") << "a covered case ran elsewhere (FLASH4_LOG=1 says why)";
}

class Flash4Hopper : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4Hopper, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(GetParam());
}

// Shapes with Sq = Sk, Sq < Sk, Sq > Sk, GQA / MQA (covered_cases and d256_cases).
constexpr Shape kShapes[] = {{2, 4, 2, 128, 128},   {1, 2, 2, 17, 1000},  {2, 2, 1, 1000, 17}, {3, 2, 2, 1, 128},
                             {1, 2, 1, 1000, 1000}, {1, 1, 1, 128, 4097}, {1, 8, 1, 17, 17},   {2, 2, 1, 1, 1}};

// d x dtype x causal over kShapes, lengths {1, 17, 128, 1000, 4097}, and more.
std::vector<Problem> covered_cases() {
  std::vector<Problem> cases = shape_sweep(forward_only(named("hopper")), {64, 128}, kShapes);
  append(cases, length_sweep(forward_only(named("hopper length", 64))));
  // More tiles than SMs: each persistent CTA runs several, of different lengths (causal,
  // and Sq > Sk where whole tiles see no key).
  for (int variant = 0; variant < 4; ++variant) {
    Problem p;
    p.label = "hopper persistent";
    p.dtype = variant % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.Dqk = p.Dv = variant < 2 ? 128 : 64;
    p.B = 3, p.Hq = 8, p.Hkv = 2, p.Sq = 1100, p.Sk = 1100;
    if (variant == 3) p.Sq = 2000, p.Sk = 300;
    p.causal = variant != 1;
    cases.push_back(forward_only(p));
  }
  {  // Three waves of tiles over 64 heads, GQA.
    Problem p;
    p.label = "hopper persistent waves";
    p.Dqk = p.Dv = 64;
    p.B = 4, p.Hq = 16, p.Hkv = 4, p.Sq = 520, p.Sk = 520;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // MQA, BHSD memory order, fp16, d = 128.
    Problem p;
    p.label = "hopper bhsd mqa";
    p.dtype = FLASH4_F16;
    p.B = 2, p.Hq = 6, p.Hkv = 1, p.Sq = 300, p.Sk = 520;
    p.bhsd = true;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // Padded token rows (row stride > H * D).
    Problem p;
    p.label = "hopper row_pad";
    p.B = 2, p.Hq = 2, p.Hkv = 2, p.Sq = 260, p.Sk = 260;
    p.row_pad = 8;
    cases.push_back(forward_only(p));
  }
  // Large logits: the row max grows by more than tau across blocks (rescaling runs), with
  // each FA4 switch.
  for (int variant = 0; variant < 3; ++variant) {
    Problem p;
    p.label = "hopper rescale";
    p.Dqk = p.Dv = variant == 1 ? 64 : 128;
    p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 700, p.Sk = 1500;
    p.q_scale = 6.0;
    p.causal = variant == 2;
    if (variant == 1) p.tuning.exp2_emulation = 2;
    if (variant == 2) p.tuning.rescale_threshold = -1;
    cases.push_back(forward_only(p));
  }
  {  // exp2 emulation on, bf16 d = 128, causal.
    Problem p;
    p.label = "hopper emulated exp2";
    p.B = 2, p.Hq = 2, p.Hkv = 1, p.Sq = 1000, p.Sk = 1000;
    p.causal = true;
    p.tuning.exp2_emulation = 2;
    cases.push_back(forward_only(p));
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Covered, Flash4Hopper, ::testing::ValuesIn(covered_cases()), test_name);

// Packed batches (cu_seqlens): documents of lengths 1, 17, not multiples of the 128-row
// tiles, one of 1000+ tokens, Sq != Sk per sequence (bottom-right causal), empty sequences,
// tokens past cu_seqlens[batch] (pad_q / pad_k: their out / lse rows must keep the poison),
// padded rows, GQA; each batch causal and not, over d {64, 128} x {bf16, fp16}.
std::vector<Problem> varlen_cases() {
  std::vector<Problem> cases =
      batch_sweep(forward_only(named("hopper varlen")),
                  {{{{1, 1}, {17, 17}, {128, 128}, {129, 129}, {300, 300}}, 4, 2, 0, 0},
                   {documents(11, 8, 400), 8, 2, 5, 3},
                   {{{1000, 1000}, {1, 1}, {17, 17}, {255, 255}}, 2, 1, 0, 7},
                   {{{17, 100}, {100, 17}, {1, 300}, {64, 64}, {0, 5}, {5, 0}, {130, 260}}, 4, 1, 3, 0}});
  {  // Many short documents: most tiles cross a sequence end; several tiles per CTA.
    Problem p;
    p.label = "hopper varlen many";
    p.Dqk = p.Dv = 64;
    p.seqs = documents(12, 60, 130, {1, 17});
    p.Hq = 4, p.Hkv = 1;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // adept's shape: GQA 32 / 8, d = 64, causal, documents up to 1500 tokens.
    Problem p;
    p.label = "hopper varlen adept";
    p.Dqk = p.Dv = 64;
    p.seqs = documents(13, 5, 700, {1500, 1});
    p.Hq = 32, p.Hkv = 8;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // More tiles than SMs, d = 128, fp16, GQA 16 / 4.
    Problem p;
    p.label = "hopper varlen waves";
    p.dtype = FLASH4_F16;
    p.seqs = documents(14, 20, 600);
    p.Hq = 16, p.Hkv = 4;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // Padded token rows (row stride > H * D), trailing tokens of no sequence.
    Problem p;
    p.label = "hopper varlen row_pad";
    p.seqs = documents(15, 6, 300, {1});
    p.Hq = 4, p.Hkv = 2, p.pad_q = 9, p.pad_k = 9;
    p.row_pad = 8;
    cases.push_back(forward_only(p));
  }
  {  // Large logits (rescaling) across sequences.
    Problem p;
    p.label = "hopper varlen rescale";
    p.seqs = documents(16, 4, 900);
    p.Hq = 2, p.Hkv = 1;
    p.q_scale = 6.0;
    cases.push_back(forward_only(p));
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Varlen, Flash4Hopper, ::testing::ValuesIn(varlen_cases()), test_name);

// Sliding windows (window_sweep), then packed documents with windows.
std::vector<Problem> window_cases() {
  std::vector<Problem> cases = window_sweep(forward_only(named("hopper window")));
  append(cases,
         packed_window_cases(forward_only(named("hopper window varlen")), documents(17, 10, 500, {1, 17, 1200})));
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Window, Flash4Hopper, ::testing::ValuesIn(window_cases()), test_name);

// d = 256 (tiles of 128 queries x 80 keys, one Q buffer: ForwardSm90Config<256>): the shapes
// of covered_cases over dtype x causal, lengths {1, 17, 128, 1000, 4097} as Sq = Sk, Sq < Sk
// and Sq > Sk, GQA / MQA, more tiles than SMs, BHSD, padded rows, packed documents, windows,
// large logits with each FA4 switch.
std::vector<Problem> d256_cases() {
  auto d256 = [](const char* label, flash4_dtype dtype = FLASH4_BF16) {
    Problem p;
    p.label = label;
    p.dtype = dtype;
    p.Dqk = p.Dv = 256;
    return p;
  };
  std::vector<Problem> cases = shape_sweep(forward_only(d256("hopper d256")), {256}, kShapes);
  int i = 0;
  for (Problem p : length_sweep(forward_only(d256("hopper d256 length")))) {
    p.dtype = i++ % 2 ? FLASH4_F16 : FLASH4_BF16;  // the dtypes in turn
    cases.push_back(p);
  }
  for (int variant = 0; variant < 2; ++variant) {  // several tiles per persistent CTA
    Problem p = d256("hopper d256 persistent", variant ? FLASH4_F16 : FLASH4_BF16);
    p.B = 3, p.Hq = 8, p.Hkv = 2, p.Sq = 1100, p.Sk = 1100;
    if (variant == 1) p.Sq = 2000, p.Sk = 300;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {
    Problem p = d256("hopper d256 bhsd mqa", FLASH4_F16);
    p.B = 2, p.Hq = 6, p.Hkv = 1, p.Sq = 300, p.Sk = 520;
    p.bhsd = true;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {
    Problem p = d256("hopper d256 row_pad");
    p.B = 2, p.Hq = 2, p.Hkv = 2, p.Sq = 260, p.Sk = 260;
    p.row_pad = 8;
    cases.push_back(forward_only(p));
  }
  {  // Packed documents: ends inside an 80-key block, empty sequences, tokens of no sequence.
    Problem p = d256("hopper d256 varlen");
    p.seqs = {{1, 1}, {17, 17}, {80, 80}, {81, 81}, {128, 128}, {129, 129}, {300, 300}};
    p.Hq = 4, p.Hkv = 2;
    for (bool causal : {false, true}) {
      p.causal = causal;
      cases.push_back(forward_only(p));
    }
    p.dtype = FLASH4_F16;
    p.seqs = {{17, 100}, {100, 17}, {1, 300}, {64, 64}, {0, 5}, {5, 0}, {130, 260}};
    p.Hq = 4, p.Hkv = 1, p.pad_q = 3, p.pad_k = 5;
    for (bool causal : {false, true}) {
      p.causal = causal;
      cases.push_back(forward_only(p));
    }
    p.dtype = FLASH4_BF16;
    p.seqs = documents(21, 12, 600, {1000});
    p.Hq = 8, p.Hkv = 2, p.pad_q = 0, p.pad_k = 0;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {
    const Window windows[] = {{1000, 1000, 128, -1, true}, {700, 1500, 64, 64, false}, {1000, 300, 300, 17, false},
                              {300, 1000, 1, 0, true}, {600, 600, 79, 80, false}};
    i = 0;
    for (const Window& w : windows) {
      Problem p = d256("hopper d256 window", i++ % 2 ? FLASH4_F16 : FLASH4_BF16);
      p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = w.Sq, p.Sk = w.Sk;
      p.window_left = w.left, p.window_right = w.right;
      p.causal = w.causal;
      cases.push_back(forward_only(p));
    }
    Problem p = d256("hopper d256 window varlen");
    p.seqs = documents(22, 6, 500, {1, 17, 900});
    p.Hq = 4, p.Hkv = 2, p.pad_q = 2, p.pad_k = 2;
    p.window_left = 100;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  for (int variant = 0; variant < 3; ++variant) {  // large logits: the rescaling runs
    Problem p = d256("hopper d256 rescale");
    p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 700, p.Sk = 1500;
    p.q_scale = 6.0;
    p.causal = variant == 2;
    if (variant == 1) p.tuning.exp2_emulation = 2;
    if (variant == 2) p.tuning.rescale_threshold = -1;
    cases.push_back(forward_only(p));
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(D256, Flash4Hopper, ::testing::ValuesIn(d256_cases()), test_name);

// Softcap (s = c tanh(s / c) before the softmax) at d 64 / 128 / 256: large logits that the
// cap bends (q_scale 4, c = 30) and a hard cap (c = 5), causal and not, both dtypes; with
// windows, packed documents, the exp2 emulation and tau = 0 (rescaling after the cap).
std::vector<Problem> softcap_cases() {
  std::vector<Problem> cases;
  int i = 0;
  for (int d : {64, 128, 256})
    for (float cap : {30.0f, 5.0f}) {
      Problem p;
      p.label = "hopper softcap";
      p.dtype = i % 2 ? FLASH4_F16 : FLASH4_BF16;
      p.Dqk = p.Dv = d;
      p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 700, p.Sk = 900;
      p.softcap = cap;
      p.q_scale = cap > 10 ? 4.0 : 1.0;
      p.causal = i++ % 3 != 1;
      cases.push_back(forward_only(p));
    }
  {
    Problem p;
    p.label = "hopper softcap window";
    p.Dqk = p.Dv = 64;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 1000, p.Sk = 1000;
    p.softcap = 20.0f, p.q_scale = 3.0;
    p.window_left = 200, p.window_right = 50;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {
    Problem p;
    p.label = "hopper softcap varlen";
    p.dtype = FLASH4_F16;
    p.seqs = {{1, 1}, {17, 100}, {100, 17}, {300, 300}, {0, 5}, {5, 0}, {700, 700}};
    p.Hq = 4, p.Hkv = 1, p.pad_q = 3, p.pad_k = 3;
    p.softcap = 15.0f, p.q_scale = 3.0;
    p.causal = true;
    cases.push_back(forward_only(p));
    p.Dqk = p.Dv = 256;
    p.dtype = FLASH4_BF16;
    p.causal = false;
    cases.push_back(forward_only(p));
  }
  for (int variant = 0; variant < 2; ++variant) {
    Problem p;
    p.label = "hopper softcap tuning";
    p.Dqk = p.Dv = 128;
    p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 700, p.Sk = 1500;
    p.softcap = 50.0f, p.q_scale = 8.0;
    p.causal = true;
    if (variant == 0) p.tuning.exp2_emulation = 2;
    if (variant == 1) p.tuning.rescale_threshold = -1;
    cases.push_back(forward_only(p));
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Softcap, Flash4Hopper, ::testing::ValuesIn(softcap_cases()), test_name);

// Learnable sink (a per-head logit in the denominator only) at d 64 / 128 / 256: rows that see
// keys, rows that see none (Sq > Sk causal: the first Sq - Sk rows; a sequence with no keys):
// out 0 and lse = sink there; with softcap, windows, GQA, packed documents, large logits
// (the row max far above the sink) and the rescaling always on.
std::vector<Problem> sink_cases() {
  std::vector<Problem> cases;
  int i = 0;
  for (int d : {64, 128, 256})
    for (bool causal : {false, true}) {
      Problem p;
      p.label = "hopper sink";
      p.dtype = i++ % 2 ? FLASH4_F16 : FLASH4_BF16;
      p.Dqk = p.Dv = d;
      p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 300, p.Sk = 500;
      p.sink = true;
      p.causal = causal;
      cases.push_back(forward_only(p));
      // Rows that see no key (bottom-right alignment, Sq > Sk): causal, rows 0 .. 199; a right
      // window of 5 without causal, rows 0 .. 193.
      p.label = "hopper sink empty rows";
      p.Sq = 300, p.Sk = 100;
      if (!causal) p.window_right = 5;
      cases.push_back(forward_only(p));
    }
  {
    Problem p;
    p.label = "hopper sink varlen";
    p.seqs = {{1, 1}, {17, 17}, {0, 5}, {5, 0}, {130, 260}, {260, 130}};
    p.Hq = 4, p.Hkv = 2, p.pad_q = 3, p.pad_k = 2;
    p.sink = true;
    p.causal = true;
    for (int d : {64, 256}) {
      p.Dqk = p.Dv = d;
      cases.push_back(forward_only(p));
    }
  }
  {
    Problem p;
    p.label = "hopper sink softcap window";
    p.B = 2, p.Hq = 6, p.Hkv = 2, p.Sq = 400, p.Sk = 600;
    p.sink = true, p.softcap = 20.0f, p.q_scale = 3.0;
    p.window_left = 90, p.window_right = 3;
    p.causal = true;
    for (int d : {128, 256}) {
      p.Dqk = p.Dv = d;
      p.dtype = d == 128 ? FLASH4_F16 : FLASH4_BF16;
      cases.push_back(forward_only(p));
    }
  }
  {
    Problem p;
    p.label = "hopper sink large logits";
    p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 700, p.Sk = 1500;
    p.sink = true, p.q_scale = 6.0;
    p.tuning.rescale_threshold = -1;
    cases.push_back(forward_only(p));
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Sink, Flash4Hopper, ::testing::ValuesIn(sink_cases()), test_name);

// seqused_k on the Hopper forward (on by default since scripts/hopper_seqused_check.sh passed);
// the K / V rows past the keys used are NaN in all but one case, and must not reach out or lse.
class Flash4HopperSeqused : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperSeqused, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(forward_only(GetParam()), {{"FLASH4_HOPPER_SEQUSED", nullptr}});
}
INSTANTIATE_TEST_SUITE_P(Seqused, Flash4HopperSeqused, ::testing::ValuesIn(seqused_cases({64, 128, 256})), test_name);

// d = 64 with three consumer warpgroups forced (192-row tiles; FLASH4_HOPPER_FWD_WARPGROUPS=3,
// the default but for short causal / windowed problems) and with two forced (=2): every d = 64
// case of the covered, varlen, window and sink suites, and the softcap ones (which must take
// two warpgroups and still run on Hopper), against float64. More tiles than SMs and tiles past
// Sq (192 does not divide the lengths) come with them. Split-KV of unpacked q is off here
// (FLASH4_HOPPER_SPLIT_KV_UNPACKED=0): it would move the few-tile cases to the packed kernels.
class Flash4HopperThreeWarpgroups : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperThreeWarpgroups, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_FWD_WARPGROUPS", "3"}, {"FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0"}});
}

// Every d = 64 case of the forward suites, its label ending in `suffix`.
std::vector<Problem> d64_cases(const char* suffix) {
  std::vector<Problem> all;
  for (auto cases : {covered_cases(), varlen_cases(), window_cases(), sink_cases(), softcap_cases()})
    append(all, cases);
  std::vector<Problem> d64;
  for (Problem p : all)
    if (p.Dqk == 64) {
      p.label += suffix;
      d64.push_back(p);
    }
  return d64;
}
INSTANTIATE_TEST_SUITE_P(D64, Flash4HopperThreeWarpgroups, ::testing::ValuesIn(d64_cases(" wg3")), test_name);

class Flash4HopperTwoWarpgroups : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperTwoWarpgroups, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_FWD_WARPGROUPS", "2"}, {"FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0"}});
}
INSTANTIATE_TEST_SUITE_P(D64, Flash4HopperTwoWarpgroups, ::testing::ValuesIn(d64_cases(" wg2")), test_name);

// Head dims the kernels round up (padded_head_dim in hopper/host.hpp: D = 64, 128 or 256, TMA
// zero-filling the columns past d_qk / d_v, only d_v columns of O stored): d 32 / 40 / 96 /
// 160 / 192, and d_v != d_qk both ways (192 / 128: V's upper two 64-column boxes wholly out
// of bounds), dense (causal, GQA, a window, lengths past one tile), packed documents, fp16,
// a sink and softcap on one each. A store past d_v would land on the next head's columns of
// out (the head stride is d_v), which the comparison with float64 then catches.
std::vector<Problem> padded_head_dim_cases() {
  struct Dims {
    int qk, v;
  };
  std::vector<Problem> cases;
  const Dims dims[] = {{32, 32}, {40, 40}, {96, 96}, {160, 160}, {192, 192}, {192, 128}, {64, 128}, {128, 96}};
  int i = 0;
  for (Dims d : dims) {
    Problem p;
    p.label = "hopper padded d";
    p.Dqk = d.qk, p.Dv = d.v;
    p.dtype = i % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 300, p.Sk = 300;
    p.causal = true;
    cases.push_back(forward_only(p));
    p.causal = false, p.Sq = 17, p.Sk = 1000;  // Sq < Sk, several key blocks
    cases.push_back(forward_only(p));
    Problem w = p;  // a window, Sq > Sk, row padding
    w.Sq = 520, w.Sk = 200, w.window_left = 50, w.window_right = 0, w.row_pad = 8;
    cases.push_back(forward_only(w));
    Problem v;  // packed documents, GQA 8 / 2, causal
    v.label = "hopper padded d varlen";
    v.Dqk = d.qk, v.Dv = d.v;
    v.dtype = p.dtype;
    v.seqs = documents(40 + i, 5, 400, {1, 17});
    v.Hq = 8, v.Hkv = 2;
    v.causal = true;
    if (i == 2) v.sink = true;
    if (i == 3) v.softcap = 30.0f;
    cases.push_back(forward_only(v));
    ++i;
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Padded, Flash4Hopper, ::testing::ValuesIn(padded_head_dim_cases()), test_name);

// O by register stores (FLASH4_HOPPER_TMA_STORE_O=0, the opt-out): by default the dense
// unpacked d <= 128 kernels write each finished tile into its Q buffer and one thread per
// warpgroup stores it with TMA (rows past Sq and columns past d_v outside the out map, which
// the other suites check untouched: the harness poisons out first); this suite keeps the
// consumers' own 16-byte stores covered on the same cases: every dense case of the covered,
// window, sink, softcap and padded suites with head dims up to 128, both warpgroup counts at d 64
// (split-KV of unpacked q off, so the few-tile cases stay on the dense kernels).
class Flash4HopperRegisterStoreO : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperRegisterStoreO, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_TMA_STORE_O", "0"}, {"FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0"}});
}

std::vector<Problem> tma_store_cases() {
  std::vector<Problem> all;
  for (auto cases : {covered_cases(), window_cases(), sink_cases(), softcap_cases(), padded_head_dim_cases()})
    append(all, cases);
  std::vector<Problem> dense;
  for (Problem p : all)
    if (!p.varlen() && std::max(p.Dqk, p.Dv) <= 128) {
      p.label += " tma-store";
      dense.push_back(p);
    }
  return dense;
}
INSTANTIATE_TEST_SUITE_P(RegisterStore, Flash4HopperRegisterStoreO, ::testing::ValuesIn(tma_store_cases()), test_name);

// The TMA store of O from the producer's store warp (FLASH4_HOPPER_O_STORE_WARP=1, opt-in,
// written without a GPU): the consumers write their rows into the Q buffer and arrive on
// o_full; warp 1 of the producer warpgroup stores the tile, waits for the read and hands the
// buffer back. The same dense cases (more tiles than SMs, tiles that see no key, both
// warpgroup counts at d 64, the static schedule through the harness's defaults elsewhere),
// unpacked so that they stay on the dense kernels. A tile stored before its rows were all
// written, or a buffer handed back before the store read it, shows as a wrong O; a missing
// arrival, as a hang.
class Flash4HopperStoreWarpO : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperStoreWarpO, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_O_STORE_WARP", "1"}, {"FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0"}});
}
// The static round-robin schedule too (the store warp walks the tiles by stride there).
TEST_P(Flash4HopperStoreWarpO, StaticScheduleMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_O_STORE_WARP", "1"},
                                     {"FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0"},
                                     {"FLASH4_HOPPER_SCHEDULE", "static"}});
}
INSTANTIATE_TEST_SUITE_P(StoreWarp, Flash4HopperStoreWarpO, ::testing::ValuesIn(tma_store_cases()), test_name);

// Paged K / V (a page table; forward only): the producer gathers each key block in TMA boxes
// of gcd(page_size, key block) rows from the sequence's shuffled pages. Page sizes 8 (16
// boxes a block), 16, 24 (boxes of 8: a page's boxes never cross it), 64, 128, 256 (a block
// inside one page), 80 (d 256's key block); d 64 / 128 / 256 and a padded 96, bf16 / fp16,
// causal or not, GQA, a window, dense and packed queries, a sink; the slots past each
// sequence's keys NaN (the last page's tail and its whole unused pages), seqused_k 0 and 1.
std::vector<Problem> paged_cases() {
  struct Paged {
    int d, page_size;
  };
  const Paged shapes[] = {{128, 8}, {128, 16}, {64, 24}, {128, 64}, {64, 128}, {256, 80}, {256, 256}, {96, 48}};
  std::vector<Problem> cases;
  int i = 0;
  for (Paged s : shapes) {
    Problem p;
    p.label = "hopper paged";
    p.Dqk = p.Dv = s.d;
    p.dtype = i % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.page_size = s.page_size;
    p.B = 3, p.Hq = 4, p.Hkv = 2, p.Sq = 40, p.Sk = 1000;
    p.seqused = {1000, 17, 300};
    p.nan_unused_keys = true;
    p.causal = i % 3 != 1;
    cases.push_back(forward_only(p));
    p.Sq = 1, p.seqused = {0, 1, 777};  // decode: one query; a sequence with no key
    p.causal = false;
    cases.push_back(forward_only(p));
    p.Sq = 300, p.seqused = {300, 299, 64}, p.window_left = 100, p.window_right = 0;
    cases.push_back(forward_only(p));
    ++i;
  }
  {  // Packed queries (cu_seqlens_q) over paged keys, causal, GQA 8 / 2, a sink.
    Problem p;
    p.label = "hopper paged varlen";
    p.page_size = 32;
    p.seqs = {{5, 400}, {1, 33}, {60, 60}, {200, 700}};
    p.seqused = {400, 33, 60, 700};
    p.nan_unused_keys = true;
    p.Hq = 8, p.Hkv = 2;
    p.causal = true;
    p.sink = true;
    cases.push_back(forward_only(p));
  }
  return cases;
}
// Paged K / V on the Hopper kernels (the default; FLASH4_HOPPER_PAGED=0 opts out); each case
// unpacked and with packed GQA where the rule packs (FLASH4_HOPPER_PACK_GQA=auto: the dense-q
// cases here).
class Flash4HopperPaged : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperPaged, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  for (const char* pack : {"0", "auto"}) {
    SCOPED_TRACE(std::string("FLASH4_HOPPER_PACK_GQA=") + pack);
    expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_PACK_GQA", pack}});
  }
}
INSTANTIATE_TEST_SUITE_P(Paged, Flash4HopperPaged, ::testing::ValuesIn(paged_cases()), test_name);

// Packed GQA (the query heads of one KV head in one tile's rows: forward_q_pack in hopper.cpp):
// decode-like Sq 1 / 5 / 17 / 100 under groups 2 / 4 / 8 / 16, d 64 / 128 / 256 and a padded
// 96, bf16 / fp16, causal (bottom-right, Sq < Sk) or not, a window, a sink, seqused_k with NaN
// past the keys used, paged K / V, BHSD q; and with FLASH4_HOPPER_PACK_GQA=1 a prefill of 300
// tokens (several packed tiles, rows of a tile past Sq). FLASH4_HOPPER_PACK_GQA=auto (the rule,
// the default) packs all but the forced cases (fewer
// tiles); FLASH4_LOG=1 says "packed GQA". Every case also runs with split-KV (flash-decoding:
// the packed kernels cut each tile's key blocks into runs whose partial O / LSE
// split_combine.cu merges, the sink joining there).
class Flash4HopperPackGqa : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperPackGqa, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  const bool forced = GetParam().Sq >= 128;
  // Each case whole and in split-KV runs (4: with 6 key blocks the last run is empty, so its
  // partial rows are -inf / 0 and the merge must ignore them).
  for (const char* splits : {"1", "4"}) {
    SCOPED_TRACE(std::string("FLASH4_HOPPER_SPLIT_KV=") + splits);
    expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_PACK_GQA", forced ? "1" : "auto"},
                                       {"FLASH4_HOPPER_SPLIT_KV", splits}});
  }
}

std::vector<Problem> pack_gqa_cases() {
  struct Group {
    int d, hq, hkv, sq;
  };
  const Group groups[] = {{128, 16, 2, 1}, {64, 8, 4, 5}, {256, 16, 4, 17}, {128, 32, 2, 100}, {96, 8, 1, 3}};
  std::vector<Problem> cases;
  int i = 0;
  for (Group g : groups) {
    Problem p;
    p.label = "hopper pack gqa";
    p.Dqk = p.Dv = g.d;
    p.dtype = i % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.B = 3, p.Hq = g.hq, p.Hkv = g.hkv, p.Sq = g.sq, p.Sk = 700;
    p.causal = true;
    cases.push_back(forward_only(p));
    p.causal = false, p.sink = true;
    cases.push_back(forward_only(p));
    p.sink = false, p.window_left = 90, p.window_right = 0, p.bhsd = i % 2 == 1;
    cases.push_back(forward_only(p));
    Problem u = p;  // seqused_k with NaN past it
    u.window_left = u.window_right = -1, u.bhsd = false, u.causal = true;
    u.seqused = {700, 1, 333}, u.nan_unused_keys = true;
    cases.push_back(forward_only(u));
    u.label = "hopper pack gqa paged";
    u.page_size = 64;
    cases.push_back(forward_only(u));
    ++i;
  }
  {  // Forced on a 300-token prefill (several packed tiles), causal, group 4.
    Problem p;
    p.label = "hopper pack gqa forced";
    p.Dqk = p.Dv = 128;
    p.B = 2, p.Hq = 8, p.Hkv = 2, p.Sq = 300, p.Sk = 300;
    p.causal = true;
    cases.push_back(forward_only(p));
    p.Dqk = p.Dv = 64, p.Sk = 1000, p.causal = false;
    cases.push_back(forward_only(p));
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(PackGqa, Flash4HopperPackGqa, ::testing::ValuesIn(pack_gqa_cases()), test_name);

// Split-KV of unpacked q (the default since its first device run on an H200;
// FLASH4_HOPPER_SPLIT_KV_UNPACKED=0 opts out): the packed-GQA kernels at q_pack 1 for MHA and
// for groups packing does not take (3, 32), so decode with few tiles fills the SMs. Each case
// with the rule (auto: 2 runs for these 3 x 8 tiles of 17 key blocks, runs of >= 8) and with 4
// runs forced;
// d 64 / 96 (padded) / 128 / 256, bf16 / fp16, causal, a window, a sink, BHSD q, seqused_k
// with NaN past it, paged K / V. FLASH4_LOG=1 says "split-KV".
class Flash4HopperSplitKvUnpacked : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperSplitKvUnpacked, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  for (const char* splits : {"auto", "4"}) {
    SCOPED_TRACE(std::string("FLASH4_HOPPER_SPLIT_KV=") + splits);
    expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_SPLIT_KV_UNPACKED", nullptr}, {"FLASH4_HOPPER_SPLIT_KV", splits}});
  }
}

// The covered cases with split-KV of unpacked q off (FLASH4_HOPPER_SPLIT_KV_UNPACKED=0): the
// few-tile shapes (one or two heads over 1000 or 4097 keys) split by default, so this keeps
// the dense kernels (TMA store of O, the d 64 warpgroup rule) covered on them.
class Flash4HopperUnsplit : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperUnsplit, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  expect_hopper_forward(GetParam(), {{"FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0"}});
}

std::vector<Problem> split_unpacked_cases() {
  struct Shape {
    int d, hq, hkv, sq;
  };
  const Shape shapes[] = {{128, 8, 8, 1}, {64, 8, 8, 5}, {128, 6, 2, 17}, {256, 8, 8, 1}, {96, 8, 8, 2}, {64, 32, 1, 3}};
  std::vector<Problem> cases;
  int i = 0;
  for (Shape sh : shapes) {
    Problem p;
    p.label = "hopper split unpacked";
    p.Dqk = p.Dv = sh.d;
    p.dtype = i % 2 ? FLASH4_F16 : FLASH4_BF16;
    p.B = 3, p.Hq = sh.hq, p.Hkv = sh.hkv, p.Sq = sh.sq, p.Sk = 2100;
    p.causal = true;
    cases.push_back(forward_only(p));
    if (i < 3) {
      p.causal = false, p.sink = true;
      cases.push_back(forward_only(p));
      p.sink = false, p.window_left = 90, p.window_right = 0, p.bhsd = i % 2 == 1;
      cases.push_back(forward_only(p));
      Problem u = p;  // seqused_k with NaN past it, contiguous and paged
      u.window_left = u.window_right = -1, u.bhsd = false, u.causal = true;
      u.seqused = {2100, 1, 333}, u.nan_unused_keys = true;
      cases.push_back(forward_only(u));
      u.label = "hopper split unpacked paged";
      u.page_size = 64;
      cases.push_back(forward_only(u));
    }
    ++i;
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(SplitUnpacked, Flash4HopperSplitKvUnpacked, ::testing::ValuesIn(split_unpacked_cases()),
                         test_name);
INSTANTIATE_TEST_SUITE_P(Covered, Flash4HopperUnsplit, ::testing::ValuesIn(covered_cases()), test_name);

// Features the Hopper forward does not cover (yet), or opted out of: paged KV with
// FLASH4_HOPPER_PAGED=0, with a page size not a multiple of 8 or with softcap; seqused_k with
// FLASH4_HOPPER_SEQUSED=0.
TEST(Flash4HopperDispatch, UncoveredFeaturesRunOnThePortableKernels) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  Problem base;
  base.B = 1, base.Hq = 2, base.Hkv = 1, base.Sq = 100, base.Sk = 100;
  Problem p = base;
  p.label = "seqused_k";
  p.seqused = {70};
  {
    testing_support::ScopedEnv off("FLASH4_HOPPER_SEQUSED", "0");
    EXPECT_EQ(check_forward(forward_only(p)), "portable");
  }
  p = base;
  p.label = "paged, FLASH4_HOPPER_PAGED=0";
  p.page_size = 16, p.Sk = 300, p.seqused = {300};
  {
    testing_support::ScopedEnv off("FLASH4_HOPPER_PAGED", "0");
    EXPECT_EQ(check_forward(forward_only(p)), "portable");
  }
  p.label = "paged, page size 12";
  p.page_size = 12;
  EXPECT_EQ(check_forward(forward_only(p)), "portable");
  p.label = "paged, softcap";
  p.page_size = 16, p.softcap = 20.0f;
  EXPECT_EQ(check_forward(forward_only(p)), "portable");
}

TEST(Flash4HopperDispatch, EnvironmentForcesThePortableKernels) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  testing_support::ScopedEnv portable("FLASH4_BACKEND", "portable");
  Problem p;
  p.label = "forced portable";
  p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 200, p.Sk = 200;
  EXPECT_EQ(check_forward(forward_only(p)), "portable");
}

}  // namespace
}  // namespace flash4_gpu
