// flash4's Hopper (sm90a) forward under the dynamic tile schedule (the default since
// 2026-12-01; FLASH4_HOPPER_SCHEDULE=static turns it off; dynamic: persistent CTAs take their tiles from an atomic counter zeroed per call, in a
// head-major order; forward_sm90.cuh), on an sm_90 device. The schedule changes which CTA runs
// a tile and when, never what the tile computes, so:
//  - a representative subset of the forward cases (dense causal / not, GQA / MQA, d 64 / 128 /
//    256, windows, softcap, sink, packed documents, more tiles than SMs) matches the float64
//    reference on the Hopper kernels (Flash4HopperDynamicSchedule);
//  - a problem of many more tiles than SMs (B 4, H 16, S 4096: each CTA takes ~15) gives the
//    same out and lse bits as the static schedule, every element written;
//  - back-to-back calls, and replays of one CUDA graph holding the call, give the same bits
//    (the counter is zeroed on the stream by each call: without the reset the second call's
//    CTAs would find it past the end after their first tile, and rows would keep the NaN
//    poison).
// scripts/hopper_sched_check.sh also runs the whole forward suite with the switch on.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "common/scoped_env.hpp"
#include "flash4_gpu_problem.hpp"
#include "flash4_hopper_test_util.hpp"

namespace flash4_gpu {
namespace {

constexpr const char* kSchedule = "FLASH4_HOPPER_SCHEDULE";

class Flash4HopperDynamicSchedule : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperDynamicSchedule, RunsOnHopperAndMatchesFloat64Reference) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  testing_support::ScopedEnv dynamic(kSchedule, "dynamic");
  const std::string backend = check_forward(GetParam());
  EXPECT_EQ(backend, "hopper") << "a covered case ran elsewhere (FLASH4_LOG=1 says why)";
}

// Sq = Sk, Sq < Sk, Sq > Sk, one query, GQA / MQA.
constexpr Shape kShapes[] = {{2, 4, 2, 128, 128}, {1, 2, 2, 17, 1000},   {2, 2, 1, 1000, 17},
                             {3, 2, 2, 1, 128},   {1, 2, 1, 1000, 1000}, {1, 8, 1, 17, 17}};

std::vector<Problem> dynamic_cases() {
  // d 64 / 128 / 256 x dtype x causal over the shapes.
  std::vector<Problem> cases = shape_sweep(forward_only(named("dynamic")), {64, 128, 256}, kShapes);
  // More tiles than SMs (132 on an H100 / H200), so CTAs take several from the counter:
  // GQA 16 / 4 causal at d 64 (9 x 64 = 576 tiles), MHA not causal at d 128 fp16, d 256
  // causal, and Sq > Sk (whole tiles see no key).
  {
    Problem p = named("dynamic waves", 64);
    p.B = 4, p.Hq = 16, p.Hkv = 4, p.Sq = 1100, p.Sk = 1100;
    p.causal = true;
    cases.push_back(forward_only(p));
    p = named("dynamic waves", 128);
    p.dtype = FLASH4_F16;
    p.B = 2, p.Hq = 16, p.Hkv = 16, p.Sq = 1100, p.Sk = 1100;
    cases.push_back(forward_only(p));
    p = named("dynamic waves", 256);
    p.B = 2, p.Hq = 16, p.Hkv = 2, p.Sq = 1100, p.Sk = 1100;
    p.causal = true;
    cases.push_back(forward_only(p));
    p = named("dynamic waves sq>sk", 128);
    p.B = 3, p.Hq = 8, p.Hkv = 2, p.Sq = 2000, p.Sk = 300;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // One long sequence, causal: 33 query blocks of very different cost per head.
    Problem p = named("dynamic long", 128);
    p.B = 1, p.Hq = 2, p.Hkv = 1, p.Sq = 4097, p.Sk = 4097;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // MQA, BHSD memory order, fp16.
    Problem p = named("dynamic bhsd mqa", 128);
    p.dtype = FLASH4_F16;
    p.B = 2, p.Hq = 6, p.Hkv = 1, p.Sq = 300, p.Sk = 520;
    p.bhsd = true;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  append(cases, window_sweep(forward_only(named("dynamic window"))));
  {
    Problem p = named("dynamic window", 256);
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 1000, p.Sk = 1000;
    p.window_left = 128;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  for (int d : {128, 256}) {  // softcap, large logits
    Problem p = named("dynamic softcap", d);
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 700, p.Sk = 900;
    p.softcap = 30.0f, p.q_scale = 4.0;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // sink, rows that see no key (Sq > Sk, causal)
    Problem p = named("dynamic sink", 64);
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 300, p.Sk = 100;
    p.sink = true;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  {  // packed documents (the work list's order), empty sequences, tokens of no sequence
    Problem p = named("dynamic varlen", 64);
    p.seqs = {{1, 1}, {17, 100}, {100, 17}, {0, 5}, {5, 0}, {1000, 1000}, {130, 260}};
    p.Hq = 4, p.Hkv = 1, p.pad_q = 3, p.pad_k = 3;
    p.causal = true;
    cases.push_back(forward_only(p));
    p = named("dynamic varlen waves", 128);
    p.dtype = FLASH4_F16;
    p.seqs = documents(31, 20, 600);
    p.Hq = 16, p.Hkv = 4;
    p.causal = true;
    cases.push_back(forward_only(p));
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Dynamic, Flash4HopperDynamicSchedule, ::testing::ValuesIn(dynamic_cases()), test_name);

// One dense forward on the GPU alone (no reference, so long sequences stay cheap): contiguous
// [B, S, H, D] tensors of random 16-bit values from a fixed seed. Each call first fills out
// and lse with NaN (0xFF bytes) and returns their bits.
class GpuForward {
 public:
  struct Outputs {
    std::vector<uint16_t> out;
    std::vector<uint32_t> lse;  // fp32 bits
    std::string backend;
  };

  explicit GpuForward(const Problem& p) : p_(p) {}

  void setup() {
    const int64_t B = p_.B, Sq = p_.Sq, Sk = p_.Sk, Hq = p_.Hq, Hkv = p_.Hkv, D = p_.Dqk;
    q_ = tensor({B, Sq, Hq, D}), out_ = tensor({B, Sq, Hq, D});
    k_ = tensor({B, Sk, Hkv, D}), v_ = tensor({B, Sk, Hkv, D});
    lse_ = tensor({B, Hq, Sq}, /*fp32=*/true);
    std::mt19937_64 rng(std::hash<std::string>{}(p_.describe()));
    for (DeviceTensor* t : {&q_, &k_, &v_}) fill(*t, rng);
    FLASH4_TEST_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~GpuForward() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // The forward on this object's stream, or, with `graph_replays` > 0, captured once into a
  // CUDA graph replayed that many times (outputs poisoned before each replay; the last
  // replay's bits returned).
  void run(Outputs* o, int graph_replays = 0) {
    flash4_forward_args a;
    flash4_forward_args_init(&a);
    a.device = FLASH4_CUDA;
    a.q = q_.view, a.k = k_.view, a.v = v_.view, a.out = out_.view, a.lse = lse_.view;
    a.options.causal = p_.causal;
    a.options.window_left = p_.window_left, a.options.window_right = p_.window_right;
    a.stream = stream_;
    if (graph_replays == 0) {
      poison();
      ASSERT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
      o->backend = flash4_last_backend();
    } else {
      cudaGraph_t graph = nullptr;
      FLASH4_TEST_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      const flash4_status status = flash4_forward(&a);
      FLASH4_TEST_CUDA(cudaStreamEndCapture(stream_, &graph));
      ASSERT_EQ(status, FLASH4_OK) << flash4_last_error();
      o->backend = flash4_last_backend();
      cudaGraphExec_t exec = nullptr;
      FLASH4_TEST_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      for (int replay = 0; replay < graph_replays; ++replay) {
        poison();
        FLASH4_TEST_CUDA(cudaGraphLaunch(exec, stream_));
      }
      FLASH4_TEST_CUDA(cudaStreamSynchronize(stream_));
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
    FLASH4_TEST_CUDA(cudaStreamSynchronize(stream_));
    o->out.resize(out_.memory.bytes() / 2);
    o->lse.resize(lse_.memory.bytes() / 4);
    FLASH4_TEST_CUDA(cudaMemcpy(o->out.data(), out_.memory.get(), out_.memory.bytes(), cudaMemcpyDeviceToHost));
    FLASH4_TEST_CUDA(cudaMemcpy(o->lse.data(), lse_.memory.get(), lse_.memory.bytes(), cudaMemcpyDeviceToHost));
  }

 private:
  // A contiguous tensor of `shape`: the problem's 16-bit dtype, or fp32 (lse).
  DeviceTensor tensor(const std::vector<int64_t>& shape, bool fp32 = false) {
    return contiguous_tensor(shape, fp32 ? FLASH4_F32 : p_.dtype);
  }
  // Uniform values in [-2, 2) rounded to the dtype (cheap for 30M+ elements).
  void fill(DeviceTensor& t, std::mt19937_64& rng) {
    std::uniform_real_distribution<double> uniform(-2.0, 2.0);
    std::vector<uint16_t> bits(t.memory.bytes() / 2);
    for (uint16_t& x : bits) x = to_bits(uniform(rng), p_.dtype);
    cudaMemcpy(t.memory.get(), bits.data(), t.memory.bytes(), cudaMemcpyHostToDevice);
  }
  void poison() {
    cudaMemsetAsync(out_.memory.get(), 0xFF, out_.memory.bytes(), stream_);
    cudaMemsetAsync(lse_.memory.get(), 0xFF, lse_.memory.bytes(), stream_);
  }

  Problem p_;
  DeviceTensor q_, k_, v_, out_, lse_;
  cudaStream_t stream_ = nullptr;
};

void expect_same_bits(const GpuForward::Outputs& a, const GpuForward::Outputs& b, const char* what) {
  const int64_t out_at = first_difference(a.out, b.out), lse_at = first_difference(a.lse, b.lse);
  EXPECT_EQ(out_at, -1) << what << ": out differs at element " << out_at;
  EXPECT_EQ(lse_at, -1) << what << ": lse differs at element " << lse_at;
}

// Every element written: no NaN poison left (0xFFFF is a NaN in bf16 and fp16; a written lse
// is finite here, every row sees a key).
void expect_all_written(const GpuForward::Outputs& o, const char* what) {
  int64_t unwritten = 0;
  for (uint16_t x : o.out) unwritten += x == 0xFFFFu;
  EXPECT_EQ(unwritten, 0) << what << ": out elements still NaN-poisoned";
  unwritten = 0;
  for (uint32_t x : o.lse) unwritten += x == 0xFFFFFFFFu;
  EXPECT_EQ(unwritten, 0) << what << ": lse elements still NaN-poisoned";
}

// B 4, Hq 16, S 4096: 32 x 64 = 2048 tiles (~15 per CTA on 132 SMs).
std::vector<Problem> many_tile_cases() {
  std::vector<Problem> cases;
  Problem p = named("many tiles", 128);
  p.B = 4, p.Hq = 16, p.Hkv = 4, p.Sq = 4096, p.Sk = 4096;
  p.causal = true;
  cases.push_back(forward_only(p));
  p.Dqk = p.Dv = 64, p.dtype = FLASH4_F16, p.causal = false;
  cases.push_back(forward_only(p));
  p.Dqk = p.Dv = 256, p.dtype = FLASH4_BF16, p.causal = true;
  cases.push_back(forward_only(p));
  p = named("many tiles window", 64);
  p.B = 4, p.Hq = 16, p.Hkv = 16, p.Sq = 4096, p.Sk = 4096;
  p.window_left = 1000;
  p.causal = true;
  cases.push_back(forward_only(p));
  return cases;
}

class Flash4HopperScheduleBits : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4HopperScheduleBits, DynamicGivesTheStaticScheduleBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  SCOPED_TRACE(GetParam().describe());
  GpuForward gpu(GetParam());
  gpu.setup();
  if (HasFatalFailure()) return;
  GpuForward::Outputs fixed, dynamic;
  {
    testing_support::ScopedEnv schedule(kSchedule, "static");
    gpu.run(&fixed);
  }
  {
    testing_support::ScopedEnv schedule(kSchedule, "dynamic");
    gpu.run(&dynamic);
  }
  if (HasFatalFailure()) return;
  EXPECT_EQ(fixed.backend, "hopper");
  EXPECT_EQ(dynamic.backend, "hopper");
  expect_all_written(fixed, "static");
  expect_all_written(dynamic, "dynamic");
  expect_same_bits(fixed, dynamic, "dynamic vs static");
}

TEST_P(Flash4HopperScheduleBits, BackToBackDynamicCallsGiveTheSameBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  SCOPED_TRACE(GetParam().describe());
  testing_support::ScopedEnv schedule(kSchedule, "dynamic");
  GpuForward gpu(GetParam());
  gpu.setup();
  if (HasFatalFailure()) return;
  GpuForward::Outputs first;
  gpu.run(&first);
  if (HasFatalFailure()) return;
  expect_all_written(first, "call 1");
  for (int call = 2; call <= 3; ++call) {
    GpuForward::Outputs again;
    gpu.run(&again);
    if (HasFatalFailure()) return;
    const std::string what = "call " + std::to_string(call);
    expect_all_written(again, what.c_str());
    expect_same_bits(first, again, what.c_str());
  }
}

TEST_P(Flash4HopperScheduleBits, GraphReplaysOfADynamicCallGiveTheSameBits) {
  if (!is_sm90()) GTEST_SKIP() << "needs an sm_90 device";
  SCOPED_TRACE(GetParam().describe());
  testing_support::ScopedEnv schedule(kSchedule, "dynamic");
  GpuForward gpu(GetParam());
  gpu.setup();
  if (HasFatalFailure()) return;
  GpuForward::Outputs eager, replayed;
  gpu.run(&eager);
  gpu.run(&replayed, /*graph_replays=*/3);
  if (HasFatalFailure()) return;
  expect_all_written(replayed, "third graph replay");
  expect_same_bits(eager, replayed, "third graph replay vs eager");
}

INSTANTIATE_TEST_SUITE_P(ManyTiles, Flash4HopperScheduleBits, ::testing::ValuesIn(many_tile_cases()), test_name);

}  // namespace
}  // namespace flash4_gpu
