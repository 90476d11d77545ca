// flash4's Hopper (sm90a) forward and backward on adept's layout, against the float64 CPU
// reference on the same layout: q, k, v are the column blocks of one fused qkv buffer
// [N, (Hq + 2 Hkv) D] (row stride ld = (Hq + 2 Hkv) D), out [N, Hq, D], lse [Hq, N], and dq,
// dk, dv the column blocks of one fused dqkv buffer; cu_seqlens_q == cu_seqlens_k (device),
// GQA. The documents start at token `lead` (cu_seqlens[0] > 0) and `tail` tokens follow the
// last one. Both calls must run on the Hopper kernels (flash4_last_backend() == "hopper":
// a silent fallback fails), the tokens of no sequence must keep the forward's NaN poison in
// out and lse and get exact zeros in dq, dk, dv, and every other element must match within
// the dtype's tolerance (dq, dk: plus the slack ProblemRunner allows for the 16-bit out that
// D = dO . O reads on the GPU, while the reference recomputes O in float64). Deterministic
// cases (adept's training asks for deterministic = 1) also rerun the backward twice: the
// dqkv buffer must come back the same bits each time.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <flash4/flash4.hpp>

#include "common/random.hpp"
#include "common/scoped_env.hpp"
#include "flash4_gpu_problem.hpp"
#include "flash4_hopper_test_util.hpp"

namespace flash4_gpu {
namespace {

struct FusedCase {
  std::string label;
  flash4_dtype dtype = FLASH4_BF16;
  int D = 64, Hq = 32, Hkv = 8;
  std::vector<int> docs;  // document lengths, packed from token `lead` on
  int lead = 0, tail = 0;
  bool causal = true;
  bool deterministic = false;
};

// The three column blocks (q, k, v or dq, dk, dv) of a fused [N, W] buffer of `element` bytes.
struct Blocks {
  flash4_tensor q, k, v;
};
Blocks column_blocks(void* base, flash4_dtype dtype, int element, int64_t N, int64_t Hq, int64_t Hkv, int64_t D) {
  const int64_t W = (Hq + 2 * Hkv) * D;
  char* b = static_cast<char*>(base);
  return {flash4::strided(b, dtype, {N, Hq, D}, {W, D, 1}),
          flash4::strided(b + Hq * D * element, dtype, {N, Hkv, D}, {W, D, 1}),
          flash4::strided(b + (Hq + Hkv) * D * element, dtype, {N, Hkv, D}, {W, D, 1})};
}

void check_fused(const FusedCase& c) {
  SCOPED_TRACE(c.label);
  auto rng = testing_support::make_rng(std::hash<std::string>{}(c.label));
  std::vector<int32_t> cu = {c.lead};
  int max_len = 0;
  for (int n : c.docs) cu.push_back(cu.back() + n), max_len = std::max(max_len, n);
  const int64_t N = cu.back() + c.tail, Hq = c.Hq, Hkv = c.Hkv, D = c.D, W = (Hq + 2 * Hkv) * D;
  const int batch = int(c.docs.size());
  auto in_sequence = [&](int64_t token) { return token >= cu.front() && token < cu.back(); };

  // Inputs: 16-bit on the device, the same values in float64 on the host.
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<uint16_t> qkv_bits(size_t(N * W)), dout_bits(size_t(N * Hq * D));
  std::vector<double> qkv(qkv_bits.size()), dout(dout_bits.size());
  for (size_t i = 0; i < qkv_bits.size(); ++i) qkv_bits[i] = to_bits(normal(rng), c.dtype), qkv[i] = from_bits(qkv_bits[i], c.dtype);
  for (size_t i = 0; i < dout_bits.size(); ++i)
    dout_bits[i] = to_bits(normal(rng), c.dtype), dout[i] = from_bits(dout_bits[i], c.dtype);
  DeviceMemory d_qkv = upload(qkv_bits), d_dout = upload(dout_bits), d_cu = upload(cu);
  DeviceMemory d_out(size_t(N * Hq * D) * 2), d_lse(size_t(Hq * N) * 4), d_dqkv(size_t(N * W) * 2);
  cudaMemset(d_out.get(), 0xFF, d_out.bytes());  // NaN in bf16, fp16 and fp32
  cudaMemset(d_lse.get(), 0xFF, d_lse.bytes());
  cudaMemset(d_dqkv.get(), 0xFF, d_dqkv.bytes());

  flash4_varlen vl{};
  vl.batch = batch;
  vl.max_seqlen_q = vl.max_seqlen_k = max_len;
  flash4_options o{};
  o.causal = c.causal;
  o.window_left = o.window_right = -1;

  // ---- forward
  const Blocks in_gpu = column_blocks(d_qkv.get(), c.dtype, 2, N, Hq, Hkv, D);
  flash4_forward_args f;
  flash4_forward_args_init(&f);
  f.device = FLASH4_CUDA;
  f.q = in_gpu.q, f.k = in_gpu.k, f.v = in_gpu.v;
  f.out = flash4::strided(d_out.get(), c.dtype, {N, Hq, D}, {Hq * D, D, 1});
  f.lse = flash4::strided(d_lse.get(), FLASH4_F32, {Hq, N}, {N, 1});
  f.options = o;
  f.varlen = vl;
  f.varlen.cu_seqlens_q = f.varlen.cu_seqlens_k = static_cast<const int32_t*>(d_cu.get());
  ASSERT_EQ(flash4_forward(&f), FLASH4_OK) << flash4_last_error();
  EXPECT_STREQ(flash4_last_backend(), "hopper") << "the forward ran elsewhere (FLASH4_LOG=1 says why)";
  FLASH4_TEST_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> out_bits(size_t(N * Hq * D));
  std::vector<float> lse(size_t(Hq * N));
  cudaMemcpy(out_bits.data(), d_out.get(), out_bits.size() * 2, cudaMemcpyDeviceToHost);
  cudaMemcpy(lse.data(), d_lse.get(), lse.size() * 4, cudaMemcpyDeviceToHost);
  std::vector<double> out(out_bits.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = from_bits(out_bits[i], c.dtype);

  const Blocks in_cpu = column_blocks(qkv.data(), FLASH4_F64, 8, N, Hq, Hkv, D);
  std::vector<double> ref_out(out.size(), std::numeric_limits<double>::quiet_NaN());
  std::vector<float> ref_lse(lse.size(), std::numeric_limits<float>::quiet_NaN());
  flash4_forward_args r = f;
  r.device = FLASH4_CPU;
  r.q = in_cpu.q, r.k = in_cpu.k, r.v = in_cpu.v;
  r.out = flash4::strided(ref_out.data(), FLASH4_F64, {N, Hq, D}, {Hq * D, D, 1});
  r.lse = flash4::strided(ref_lse.data(), FLASH4_F32, {Hq, N}, {N, 1});
  r.varlen.cu_seqlens_q = r.varlen.cu_seqlens_k = cu.data();
  ASSERT_EQ(flash4_forward(&r), FLASH4_OK) << flash4_last_error();

  std::vector<char> out_rows(out.size());
  double lse_err = 0;
  for (int64_t n = 0; n < N; ++n) {
    const bool in = in_sequence(n);
    for (int64_t i = 0; i < Hq * D; ++i) {
      const size_t e = size_t(n * Hq * D + i);
      out_rows[e] = in;
      if (in) {
        ASSERT_FALSE(std::isnan(out[e])) << "out token " << n << " element " << i << " was not written";
      } else {
        ASSERT_TRUE(std::isnan(out[e])) << "out token " << n << " belongs to no sequence but was written";
      }
    }
    for (int64_t h = 0; h < Hq; ++h) {
      const float x = lse[size_t(h * N + n)], ref = ref_lse[size_t(h * N + n)];
      if (!in) {
        ASSERT_TRUE(std::isnan(x)) << "lse token " << n << " head " << h << " belongs to no sequence but was written";
        continue;
      }
      ASSERT_TRUE(std::isfinite(x)) << "lse token " << n << " head " << h << ": " << x;
      lse_err = std::max(lse_err, std::fabs(double(x) - double(ref)));
    }
  }
  const Tolerance tol = tolerance_for(c.dtype);
  const double out_err = relative_error(out, ref_out, out_rows);

  // ---- backward (the reference gets the GPU's out and lse)
  const Blocks grad_gpu = column_blocks(d_dqkv.get(), c.dtype, 2, N, Hq, Hkv, D);
  flash4_backward_args b;
  flash4_backward_args_init(&b);
  b.device = FLASH4_CUDA;
  b.q = f.q, b.k = f.k, b.v = f.v, b.out = f.out, b.lse = f.lse;
  b.dout = flash4::strided(d_dout.get(), c.dtype, {N, Hq, D}, {Hq * D, D, 1});
  b.dq = grad_gpu.q, b.dk = grad_gpu.k, b.dv = grad_gpu.v;
  b.options = o;
  b.varlen = f.varlen;
  b.deterministic = c.deterministic;
  ASSERT_EQ(flash4_backward(&b), FLASH4_OK) << flash4_last_error();
  EXPECT_STREQ(flash4_last_backend(), "hopper") << "the backward ran elsewhere (FLASH4_LOG=1 says why)";
  FLASH4_TEST_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> dqkv_bits(size_t(N * W));
  cudaMemcpy(dqkv_bits.data(), d_dqkv.get(), dqkv_bits.size() * 2, cudaMemcpyDeviceToHost);
  for (int run = 2; c.deterministic && run <= 3; ++run) {
    cudaMemset(d_dqkv.get(), 0xFF, d_dqkv.bytes());
    ASSERT_EQ(flash4_backward(&b), FLASH4_OK) << flash4_last_error();
    FLASH4_TEST_CUDA(cudaDeviceSynchronize());
    std::vector<uint16_t> again(dqkv_bits.size());
    cudaMemcpy(again.data(), d_dqkv.get(), again.size() * 2, cudaMemcpyDeviceToHost);
    if (std::memcmp(again.data(), dqkv_bits.data(), again.size() * 2) != 0) {
      const size_t at = size_t(std::mismatch(again.begin(), again.end(), dqkv_bits.begin()).first - again.begin());
      ADD_FAILURE() << "deterministic run " << run << " differs from run 1 at dqkv token " << at / W << " column "
                    << at % W;
    }
  }
  std::vector<double> dqkv(dqkv_bits.size());
  for (size_t i = 0; i < dqkv.size(); ++i) dqkv[i] = from_bits(dqkv_bits[i], c.dtype);

  std::vector<double> ref_dqkv(dqkv.size(), std::numeric_limits<double>::quiet_NaN());
  const Blocks grad_cpu = column_blocks(ref_dqkv.data(), FLASH4_F64, 8, N, Hq, Hkv, D);
  std::vector<float> lse_in = lse;  // only shape-checked: the reference recomputes P and O
  flash4_backward_args rb = b;
  rb.device = FLASH4_CPU;
  rb.stream = nullptr;
  rb.q = in_cpu.q, rb.k = in_cpu.k, rb.v = in_cpu.v;
  rb.out = flash4::strided(out.data(), FLASH4_F64, {N, Hq, D}, {Hq * D, D, 1});
  rb.dout = flash4::strided(dout.data(), FLASH4_F64, {N, Hq, D}, {Hq * D, D, 1});
  rb.lse = flash4::strided(lse_in.data(), FLASH4_F32, {Hq, N}, {N, 1});
  rb.dq = grad_cpu.q, rb.dk = grad_cpu.k, rb.dv = grad_cpu.v;
  rb.varlen.cu_seqlens_q = rb.varlen.cu_seqlens_k = cu.data();
  ASSERT_EQ(flash4_backward(&rb), FLASH4_OK) << flash4_last_error();

  // Column c of a row belongs to dq (c < Hq D), dk or dv; rows of no sequence must be 0.
  std::vector<char> block_of(dqkv.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t col = 0; col < W; ++col) {
      const size_t e = size_t(n * W + col);
      block_of[e] = char(col < Hq * D ? 0 : col < (Hq + Hkv) * D ? 1 : 2);
      ASSERT_FALSE(std::isnan(dqkv[e])) << "dqkv token " << n << " column " << col << " was not written";
      if (!in_sequence(n)) ASSERT_EQ(dqkv[e], 0.0) << "dqkv token " << n << " (no sequence) column " << col;
    }
  double grad_err[3], ref_norm[3];
  for (int which = 0; which < 3; ++which) {
    std::vector<char> use(dqkv.size());
    double r2 = 0;
    for (size_t e = 0; e < use.size(); ++e) {
      use[e] = block_of[e] == which;
      if (use[e]) r2 += ref_dqkv[e] * ref_dqkv[e];
    }
    grad_err[which] = relative_error(dqkv, ref_dqkv, use);
    ref_norm[which] = std::sqrt(r2);
  }
  // Slack for the 16-bit out (ProblemRunner's Errors::dq_slack): D_i moves by about
  // (u / sqrt 3) |dO_i| |O_i| / sqrt(d) per row, allowed 3x that; dq_i then gains scale |dD_i|
  // max_j |k_j| (dk likewise with q).
  const double u = (c.dtype == FLASH4_BF16 ? 1.0 / 256 : 1.0 / 2048) * std::sqrt(3.0 / double(D));
  double dd = 0, max_q = 0, max_k = 0;
  for (int64_t n = cu.front(); n < cu.back(); ++n)
    for (int64_t h = 0; h < Hq; ++h) {
      const double x = u * norm2(&out[size_t((n * Hq + h) * D)], D) * norm2(&dout[size_t((n * Hq + h) * D)], D);
      dd += x * x;
      max_q = std::max(max_q, norm2(&qkv[size_t(n * W + h * D)], D));
      if (h < Hkv) max_k = std::max(max_k, norm2(&qkv[size_t(n * W + (Hq + h) * D)], D));
    }
  const double scale = 1.0 / std::sqrt(double(D));
  const double dq_slack = scale * std::sqrt(dd) * max_k / std::max(ref_norm[0], 1e-30);
  const double dk_slack = scale * std::sqrt(dd) * max_q / std::max(ref_norm[1], 1e-30);
  std::printf("[ errors ] %s | out %.2e lse %.2e | dq %.2e dk %.2e dv %.2e (slack dq %.1e dk %.1e)\n",
              c.label.c_str(), out_err, lse_err, grad_err[0], grad_err[1], grad_err[2], dq_slack, dk_slack);
  EXPECT_LT(out_err, tol.out) << "out";
  EXPECT_LT(lse_err, tol.lse_abs) << "lse (max abs)";
  EXPECT_LT(grad_err[0], tol.grad + dq_slack) << "dq (slack for the 16-bit out: " << dq_slack << ")";
  EXPECT_LT(grad_err[1], tol.grad + dk_slack) << "dk (slack for the 16-bit out: " << dk_slack << ")";
  EXPECT_LT(grad_err[2], tol.grad) << "dv";
}

// Why the Hopper kernels cannot run here or are switched off by the environment ("" when
// they run): the tests skip then.
std::string hopper_off_reason() {
  if (!is_sm90()) return "needs an sm_90 device";
  if (const char* b = std::getenv("FLASH4_BACKEND"); b != nullptr && std::string(b) == "portable")
    return "FLASH4_BACKEND=portable";
  if (const char* b = std::getenv("FLASH4_HOPPER_BWD"); b != nullptr && std::string(b) == "0") return "FLASH4_HOPPER_BWD=0";
  return "";
}

// dQ by float2 atomics (FLASH4_HOPPER_DQ=atomics for the test) ...
class Flash4HopperVarlenFused : public ::testing::TestWithParam<FusedCase> {};

TEST_P(Flash4HopperVarlenFused, FusedQkvColumnBlocksRunOnHopperAndMatchFloat64Reference) {
  if (const std::string why = hopper_off_reason(); !why.empty()) GTEST_SKIP() << why;
  testing_support::ScopedEnv atomics("FLASH4_HOPPER_DQ", "atomics");
  check_fused(GetParam());
}

// ... and by bulk reduce-add from shared memory (FLASH4_HOPPER_DQ=bulk).
class Flash4HopperVarlenFusedBulkDq : public ::testing::TestWithParam<FusedCase> {};

TEST_P(Flash4HopperVarlenFusedBulkDq, FusedQkvColumnBlocksRunOnHopperAndMatchFloat64Reference) {
  if (const std::string why = hopper_off_reason(); !why.empty()) GTEST_SKIP() << why;
  testing_support::ScopedEnv bulk("FLASH4_HOPPER_DQ", "bulk");
  check_fused(GetParam());
}

std::vector<FusedCase> fused_cases() {
  std::vector<FusedCase> cases;
  FusedCase c;
  c.label = "adept bf16 d64 Hq32 Hkv8 causal lead7 tail5";
  c.docs = {1, 17, 300, 129, 700, 64, 2};
  c.lead = 7, c.tail = 5;
  cases.push_back(c);
  c = FusedCase{};
  c.label = "adept bf16 d128 Hq8 Hkv2 causal";
  c.D = 128, c.Hq = 8, c.Hkv = 2;
  c.docs = {200, 1, 1030, 17};
  cases.push_back(c);
  c = FusedCase{};
  c.label = "fp16 d64 Hq4 Hkv1 not causal lead3 tail11";
  c.dtype = FLASH4_F16, c.Hq = 4, c.Hkv = 1, c.causal = false;
  c.docs = {33, 1, 257, 128};
  c.lead = 3, c.tail = 11;
  cases.push_back(c);
  c = FusedCase{};
  c.label = "fp16 d128 Hq4 Hkv4 causal lead64";
  c.dtype = FLASH4_F16, c.D = 128, c.Hq = 4, c.Hkv = 4;
  c.docs = {129, 127, 1};
  c.lead = 64;
  cases.push_back(c);
  // Deterministic (what adept's training asks for): adept's shape, and d = 128 fp16.
  c = FusedCase{};
  c.label = "deterministic adept bf16 d64 Hq32 Hkv8 causal lead7 tail5";
  c.docs = {1, 17, 300, 129, 600, 64, 2};
  c.lead = 7, c.tail = 5;
  c.deterministic = true;
  cases.push_back(c);
  c = FusedCase{};
  c.label = "deterministic fp16 d128 Hq8 Hkv2 not causal tail3";
  c.dtype = FLASH4_F16, c.D = 128, c.Hq = 8, c.Hkv = 2, c.causal = false;
  c.docs = {600, 1, 257, 33};
  c.tail = 3;
  c.deterministic = true;
  cases.push_back(c);
  return cases;
}

std::string fused_name(const ::testing::TestParamInfo<FusedCase>& info) {
  std::string s = std::to_string(info.index) + "_" + info.param.label, out;
  for (char ch : s) out += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return out;
}

INSTANTIATE_TEST_SUITE_P(Adept, Flash4HopperVarlenFused, ::testing::ValuesIn(fused_cases()), fused_name);
INSTANTIATE_TEST_SUITE_P(Adept, Flash4HopperVarlenFusedBulkDq, ::testing::ValuesIn(fused_cases()), fused_name);

}  // namespace
}  // namespace flash4_gpu
