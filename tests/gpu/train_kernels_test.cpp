// Every fused kernel of the CUDA training backend (adept/src/ops/cuda) against the CPU op
// it replaces (adept/src/ops/cpu), on fresh random bf16-representable inputs with the seed
// printed, outputs poisoned with NaN before the kernel runs. Tolerances: bf16 outputs
// ~1e-2 relative; fp32 accumulations of identical inputs ~1e-5.
#include <gtest/gtest.h>

#include <flash4/flash4.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cuda/attention.hpp"
#include "backend/cuda/gemm.hpp"
#include "gpu/train_test_util.hpp"
#include "ops/cpu/ops.hpp"
#include "ops/cuda/ops.hpp"
#include "optim/adamw.hpp"

namespace adept {
namespace {

using testing_support::make_rng;
using namespace train_test;

std::vector<int32_t> random_ids(std::mt19937_64& rng, int64_t n, int32_t lo, int32_t hi) {
  std::uniform_int_distribution<int32_t> pick(lo, hi - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = pick(rng);
  return v;
}

// ---- embedding -------------------------------------------------------------------

TEST(TrainKernelsCpuVsCuda, EmbeddingForwardCopiesTheTokensRows) {
  REQUIRE_GPU();
  auto rng = make_rng(1);
  const int64_t V = 50, C = 64, N = 200;
  std::vector<float> wte = random_bf16_values(rng, V * C);
  std::vector<int32_t> ids = random_ids(rng, N, 0, int32_t(V));
  std::vector<float> want(N * C);
  cpu::embedding_forward(want.data(), ids.data(), wte.data(), N, C);
  DeviceBuffer<bf16> d_wte(to_bf16(wte)), d_out(N * C);
  DeviceBuffer<int32_t> d_ids(ids);
  cuda::embedding_forward(d_out, d_ids, d_wte, N, C, nullptr);
  EXPECT_EQ(to_float(d_out.download()), want);
}

TEST(TrainKernelsCpuVsCuda, EmbeddingBackwardAccumulatesLikeCpuAndIsDeterministic) {
  REQUIRE_GPU();
  auto rng = make_rng(2);
  const int64_t V = 20, C = 72, N = 300;  // few ids: many tokens per row
  std::vector<int32_t> ids = random_ids(rng, N, 0, int32_t(V));
  std::vector<float> dout = random_bf16_values(rng, N * C);
  std::vector<float> start = testing_support::random_vector<float>(rng, V * C);
  std::vector<float> want = start;
  cpu::embedding_backward(want.data(), dout.data(), ids.data(), N, C);

  cuda::EmbeddingSegments seg = cuda::embedding_segments(ids.data(), N);
  DeviceBuffer<int32_t> d_sorted(seg.sorted_tokens), d_start(seg.segment_start), d_id(seg.segment_id);
  DeviceBuffer<int32_t> d_num(std::vector<int32_t>{int32_t(seg.segment_id.size())});
  DeviceBuffer<bf16> d_dout(to_bf16(dout));
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    DeviceBuffer<float> d_dwte(start);
    cuda::embedding_backward(d_dwte, d_dout, d_sorted, d_start, d_id, d_num, N, C, nullptr);
    runs.push_back(d_dwte.download());
  }
  EXPECT_LT(relative_error(runs[0], want), kF32Tolerance);
  EXPECT_EQ(runs[0], runs[1]) << "embedding backward must be bit-identical across runs";
}

// ---- RMSNorm -------------------------------------------------------------------------

TEST(TrainKernelsCpuVsCuda, RmsnormForwardMatchesCpu) {
  REQUIRE_GPU();
  auto rng = make_rng(3);
  for (int64_t C : {96, 2048, 5120}) {
    const int64_t N = 33;
    std::vector<float> x = random_bf16_values(rng, N * C, 2.0), w = random_bf16_values(rng, C, 0.3);
    for (float& v : w) v = round_bf16(1.0f + v);
    std::vector<float> want(N * C), want_rstd(N);
    cpu::rmsnorm_forward(want.data(), want_rstd.data(), x.data(), w.data(), N, C, 1e-5);
    DeviceBuffer<bf16> d_x(to_bf16(x)), d_w(to_bf16(w)), d_out(N * C);
    DeviceBuffer<float> d_rstd(N);
    cuda::rmsnorm_forward(d_out, d_rstd, d_x, d_w, N, C, 1e-5, nullptr);
    EXPECT_LT(relative_error(to_float(d_out.download()), want), kBf16Tolerance) << "C=" << C;
    EXPECT_LT(relative_error(d_rstd.download(), want_rstd), kF32Tolerance) << "C=" << C;
  }
}

TEST(TrainKernelsCpuVsCuda, RmsnormBackwardAddsTheResidualGradientAndAccumulatesTheWeightGradient) {
  REQUIRE_GPU();
  auto rng = make_rng(4);
  // C: 1, 2 and 4 chunks of 8 channels per thread (5120: 160 threads, chunks partly
  // empty), then a row wider than 8192 (the 1024-thread kernel). N = 1037: more rows than
  // the backward's 512 blocks, not a multiple of them (some blocks take one row more).
  for (int64_t C : {64, 2048, 4096, 5120, 8200}) {
    const int64_t N = C == 64 ? 301 : 1037;
    std::vector<float> x = random_bf16_values(rng, N * C, 2.0), w = random_bf16_values(rng, C, 0.3);
    std::vector<float> dy = random_bf16_values(rng, N * C), dres = random_bf16_values(rng, N * C);
    std::vector<float> dw0 = testing_support::random_vector<float>(rng, C);
    std::vector<float> y(N * C), rstd(N);
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6);
    std::vector<float> want_dx(N * C), want_dw = dw0;
    cpu::rmsnorm_backward(want_dx.data(), want_dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
    std::vector<float> want_dx_res = want_dx;
    for (int64_t i = 0; i < N * C; ++i) want_dx_res[i] += dres[i];

    DeviceBuffer<bf16> d_x(to_bf16(x)), d_w(to_bf16(w)), d_dy(to_bf16(dy));
    DeviceBuffer<float> d_rstd(rstd), d_dw(dw0), d_partials(size_t(cuda::kReduceBlocks) * C);
    // The decoder's use: din aliases dresidual (the residual stream's gradient).
    DeviceBuffer<bf16> d_dx(to_bf16(dres));
    cuda::rmsnorm_backward(d_dx, d_dw, d_partials, d_dy, d_x, d_w, d_rstd, d_dx, N, C, nullptr);
    EXPECT_LT(relative_error(to_float(d_dx.download()), want_dx_res), kBf16Tolerance) << "C=" << C;
    const std::vector<float> dw = d_dw.download();
    EXPECT_LT(relative_error(dw, want_dw), 1e-4) << "C=" << C;

    // No residual: din is written in full (it starts poisoned); dweight is bit-identical
    // to the first run's (fixed summation order, scratch poisoned again in between).
    DeviceBuffer<bf16> d_dx_plain(N * C);
    DeviceBuffer<float> d_dw_again(dw0);
    d_partials.poison();
    cuda::rmsnorm_backward(d_dx_plain, d_dw_again, d_partials, d_dy, d_x, d_w, d_rstd, nullptr, N, C, nullptr);
    EXPECT_LT(relative_error(to_float(d_dx_plain.download()), want_dx), kBf16Tolerance) << "C=" << C;
    EXPECT_EQ(d_dw_again.download(), dw) << "C=" << C << ": the weight gradient must be bit-identical across runs";
  }
}

// ---- RoPE and q/k norm ---------------------------------------------------------------

struct QkvLayout {
  int64_t N, Hq, Hkv, D;
  int64_t pad = 0;  // elements after the values in each row
  int64_t ld() const { return (Hq + 2 * Hkv) * D + pad; }
  // Copies heads [h0, h0 + H) of every token out of qkv [N][ld] into [N][H][D].
  std::vector<float> heads(const std::vector<float>& qkv, int64_t h0, int64_t H) const {
    std::vector<float> out(N * H * D);
    for (int64_t n = 0; n < N; ++n)
      std::copy_n(qkv.begin() + n * ld() + h0 * D, H * D, out.begin() + n * H * D);
    return out;
  }
  // The inverse: heads [N][H][D] into heads [h0, h0 + H) of qkv.
  void set_heads(std::vector<float>& qkv, int64_t h0, int64_t H, const std::vector<float>& heads) const {
    for (int64_t n = 0; n < N; ++n)
      std::copy_n(heads.begin() + n * H * D, H * D, qkv.begin() + n * ld() + h0 * D);
  }
};

cpu::RopeTable test_rope_table(int64_t D, int64_t positions) {
  cpu::RopeSpec spec;
  spec.head_dim = D;
  spec.theta = 500000.0;
  spec.scaling_type = "llama3";
  spec.factor = 8.0;
  spec.original_max_position_embeddings = 64;  // small, so that every band is exercised
  return cpu::rope_table(spec, positions);
}

TEST(TrainKernelsCpuVsCuda, RopeForwardAndBackwardRotateQueriesAndKeysOnly) {
  REQUIRE_GPU();
  auto rng = make_rng(5);
  // One case per access width of the kernel: K pairs per thread, the widest that ld, D,
  // D/2 and the qkv pointer (offset elements past an allocation) allow. Head counts that
  // leave the last group of 4 heads part full; N odd.
  struct Case {
    QkvLayout s;
    int64_t offset;
    int K;
  };
  const Case cases[] = {
      {{40, 4, 2, 32}, 0, 8},       // 4 threads per head, 6 heads
      {{67, 4, 1, 128}, 0, 8},      // 8 threads per head
      {{37, 6, 3, 64, 4}, 0, 4},    // ld = 772 = 4 mod 8
      {{33, 4, 2, 32, 2}, 0, 2},    // ld = 258 = 2 mod 4
      {{29, 3, 1, 6}, 0, 1},        // D/2 = 3
      {{31, 2, 2, 32, 1}, 0, 1},    // odd ld
      {{35, 4, 2, 64}, 1, 1},       // qkv one element past an aligned address
  };
  for (const Case& cs : cases) {
    const QkvLayout& s = cs.s;
    const int64_t P = 200;
    cpu::RopeTable table = test_rope_table(s.D, P);
    std::vector<float> cos(table.cos.begin(), table.cos.end()), sin(table.sin.begin(), table.sin.end());
    std::vector<int32_t> pos = random_ids(rng, s.N, 0, int32_t(P));
    std::vector<float> qkv = random_bf16_values(rng, s.N * s.ld());
    DeviceBuffer<float> d_cos(cos), d_sin(sin);
    DeviceBuffer<int32_t> d_pos(pos);
    for (int direction = 0; direction < 2; ++direction) {
      std::vector<float> q = s.heads(qkv, 0, s.Hq), k = s.heads(qkv, s.Hq, s.Hkv);
      if (direction == 0) {
        cpu::rope_forward(q.data(), pos.data(), table, s.N, s.Hq, s.D);
        cpu::rope_forward(k.data(), pos.data(), table, s.N, s.Hkv, s.D);
      } else {
        cpu::rope_backward(q.data(), pos.data(), table, s.N, s.Hq, s.D);
        cpu::rope_backward(k.data(), pos.data(), table, s.N, s.Hkv, s.D);
      }
      std::vector<float> padded(cs.offset, 7.0f);
      padded.insert(padded.end(), qkv.begin(), qkv.end());
      DeviceBuffer<bf16> d_buffer(to_bf16(padded));
      bf16* d_qkv = d_buffer.get() + cs.offset;
      if (direction == 0)
        cuda::rope_forward(d_qkv, d_pos, d_cos, d_sin, s.N, s.ld(), s.Hq, s.Hkv, s.D, nullptr);
      else
        cuda::rope_backward(d_qkv, d_pos, d_cos, d_sin, s.N, s.ld(), s.Hq, s.Hkv, s.D, nullptr);
      std::vector<float> all = to_float(d_buffer.download());
      const std::string where = "D=" + std::to_string(s.D) + " ld=" + std::to_string(s.ld()) +
                                " offset=" + std::to_string(cs.offset) + " (K=" + std::to_string(cs.K) +
                                "), direction " + std::to_string(direction);
      EXPECT_TRUE(std::all_of(all.begin(), all.begin() + cs.offset, [](float v) { return v == 7.0f; })) << where;
      std::vector<float> got(all.begin() + cs.offset, all.end());
      EXPECT_LT(relative_error(s.heads(got, 0, s.Hq), q), kBf16Tolerance) << where;
      EXPECT_LT(relative_error(s.heads(got, s.Hq, s.Hkv), k), kBf16Tolerance) << where;
      // Everything but the q and k heads (values, row padding) must not move.
      s.set_heads(got, 0, s.Hq + s.Hkv, s.heads(qkv, 0, s.Hq + s.Hkv));
      EXPECT_EQ(got, qkv) << where << ": values and padding must not move";
    }
  }
}

TEST(TrainKernelsCpuVsCuda, QkNormRopeForwardAndBackwardMatchRmsnormThenRope) {
  REQUIRE_GPU();
  auto rng = make_rng(6);
  for (int64_t D : {64, 128}) {
    const QkvLayout s{37, 4, 2, D};
    const int64_t P = 100, H = s.Hq + s.Hkv;
    cpu::RopeTable table = test_rope_table(D, P);
    std::vector<float> cos(table.cos.begin(), table.cos.end()), sin(table.sin.begin(), table.sin.end());
    std::vector<int32_t> pos = random_ids(rng, s.N, 0, int32_t(P));
    std::vector<float> raw = random_bf16_values(rng, s.N * s.ld(), 1.5);
    std::vector<float> qw = random_bf16_values(rng, D, 0.2), kw = random_bf16_values(rng, D, 0.2);
    for (float& v : qw) v = round_bf16(1.0f + v);
    for (float& v : kw) v = round_bf16(1.0f + v);

    // CPU: rmsnorm per head, then rope (decoder.cpp's order).
    std::vector<float> q_raw = s.heads(raw, 0, s.Hq), k_raw = s.heads(raw, s.Hq, s.Hkv);
    std::vector<float> q(q_raw.size()), k(k_raw.size()), rq(s.N * s.Hq), rk(s.N * s.Hkv);
    cpu::rmsnorm_forward(q.data(), rq.data(), q_raw.data(), qw.data(), s.N * s.Hq, D, 1e-6);
    cpu::rmsnorm_forward(k.data(), rk.data(), k_raw.data(), kw.data(), s.N * s.Hkv, D, 1e-6);
    cpu::rope_forward(q.data(), pos.data(), table, s.N, s.Hq, D);
    cpu::rope_forward(k.data(), pos.data(), table, s.N, s.Hkv, D);

    DeviceBuffer<float> d_cos(cos), d_sin(sin), d_rstd(s.N * H);
    DeviceBuffer<int32_t> d_pos(pos);
    DeviceBuffer<bf16> d_raw(to_bf16(raw)), d_out(s.N * s.ld()), d_qw(to_bf16(qw)), d_kw(to_bf16(kw));
    cuda::qk_norm_rope_forward(d_out, d_rstd, d_raw, d_qw, d_kw, d_pos, d_cos, d_sin, s.N, s.ld(), s.Hq, s.Hkv, D,
                               1e-6, nullptr);
    std::vector<float> got = to_float(d_out.download());
    EXPECT_LT(relative_error(s.heads(got, 0, s.Hq), q), kBf16Tolerance) << "D=" << D;
    EXPECT_LT(relative_error(s.heads(got, s.Hq, s.Hkv), k), kBf16Tolerance) << "D=" << D;
    EXPECT_EQ(s.heads(got, H, s.Hkv), s.heads(raw, H, s.Hkv)) << "values are copied";
    std::vector<float> want_rstd(s.N * H);
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t h = 0; h < H; ++h) want_rstd[n * H + h] = h < s.Hq ? rq[n * s.Hq + h] : rk[n * s.Hkv + h - s.Hq];
    EXPECT_LT(relative_error(d_rstd.download(), want_rstd), kF32Tolerance);

    // Backward: ropeᵀ then rmsnormᵀ; weight gradients accumulate onto a nonzero start.
    std::vector<float> dqkv = random_bf16_values(rng, s.N * s.ld());
    std::vector<float> dq = s.heads(dqkv, 0, s.Hq), dk = s.heads(dqkv, s.Hq, s.Hkv);
    cpu::rope_backward(dq.data(), pos.data(), table, s.N, s.Hq, D);
    cpu::rope_backward(dk.data(), pos.data(), table, s.N, s.Hkv, D);
    std::vector<float> dqw0 = testing_support::random_vector<float>(rng, D), dkw0 = dqw0;
    std::vector<float> want_dqw = dqw0, want_dkw = dkw0, want_dq(dq.size()), want_dk(dk.size());
    cpu::rmsnorm_backward(want_dq.data(), want_dqw.data(), dq.data(), q_raw.data(), qw.data(), rq.data(),
                          s.N * s.Hq, D);
    cpu::rmsnorm_backward(want_dk.data(), want_dkw.data(), dk.data(), k_raw.data(), kw.data(), rk.data(),
                          s.N * s.Hkv, D);
    DeviceBuffer<bf16> d_dqkv(to_bf16(dqkv));
    DeviceBuffer<float> d_dqw(dqw0), d_dkw(dkw0), d_rstd_cpu(want_rstd),
        d_partials(2 * size_t(cuda::kReduceBlocks) * D);
    cuda::qk_norm_rope_backward(d_dqkv, d_dqw, d_dkw, d_partials, d_raw, d_qw, d_kw, d_rstd_cpu, d_pos, d_cos, d_sin,
                                s.N, s.ld(), s.Hq, s.Hkv, D, nullptr);
    std::vector<float> dgot = to_float(d_dqkv.download());
    EXPECT_LT(relative_error(s.heads(dgot, 0, s.Hq), want_dq), kBf16Tolerance) << "D=" << D;
    EXPECT_LT(relative_error(s.heads(dgot, s.Hq, s.Hkv), want_dk), kBf16Tolerance) << "D=" << D;
    EXPECT_LT(relative_error(d_dqw.download(), want_dqw), 1e-4) << "D=" << D;
    EXPECT_LT(relative_error(d_dkw.download(), want_dkw), 1e-4) << "D=" << D;
  }
}

// ---- SwiGLU --------------------------------------------------------------------------

TEST(TrainKernelsCpuVsCuda, SwigluForwardAndBackwardOverTheFusedGateUpProjection) {
  REQUIRE_GPU();
  auto rng = make_rng(7);
  const int64_t N = 37, I = 136;
  std::vector<float> gate = random_bf16_values(rng, N * I, 2.0), up = random_bf16_values(rng, N * I, 2.0);
  std::vector<float> dy = random_bf16_values(rng, N * I);
  std::vector<float> gateup(N * 2 * I);
  for (int64_t n = 0; n < N; ++n) {
    std::copy_n(gate.begin() + n * I, I, gateup.begin() + n * 2 * I);
    std::copy_n(up.begin() + n * I, I, gateup.begin() + n * 2 * I + I);
  }
  std::vector<float> want(N * I), want_dg(N * I), want_du(N * I);
  cpu::swiglu_forward(want.data(), gate.data(), up.data(), N, I);
  cpu::swiglu_backward(want_dg.data(), want_du.data(), dy.data(), gate.data(), up.data(), N, I);
  DeviceBuffer<bf16> d_gateup(to_bf16(gateup)), d_act(N * I), d_dy(to_bf16(dy)), d_dgateup(N * 2 * I);
  cuda::swiglu_forward(d_act, d_gateup, N, I, nullptr);
  cuda::swiglu_backward(d_dgateup, d_dy, d_gateup, N, I, nullptr);
  EXPECT_LT(relative_error(to_float(d_act.download()), want), kBf16Tolerance);
  std::vector<float> dgu = to_float(d_dgateup.download()), dg(N * I), du(N * I);
  for (int64_t n = 0; n < N; ++n) {
    std::copy_n(dgu.begin() + n * 2 * I, I, dg.begin() + n * I);
    std::copy_n(dgu.begin() + n * 2 * I + I, I, du.begin() + n * I);
  }
  EXPECT_LT(relative_error(dg, want_dg), kBf16Tolerance);
  EXPECT_LT(relative_error(du, want_du), kBf16Tolerance);
}

// ---- cross-entropy -------------------------------------------------------------------

TEST(TrainKernelsCpuVsCuda, CrossEntropyLossAndGradientSkipIgnoredTargets) {
  REQUIRE_GPU();
  auto rng = make_rng(8);
  const int64_t N = 29, V = 1000;
  // bf16 logits, as the head GEMM writes them; the reference sees the same values.
  std::vector<float> logits = random_bf16_values(rng, N * V, 3.0);
  std::vector<int32_t> targets = random_ids(rng, N, 0, int32_t(V));
  for (int64_t n : {0, 5, 6, 20}) targets[n] = -100;
  int64_t count = 0;
  for (int32_t t : targets) count += t != -100;
  const double scale = 1.0 / double(count);
  std::vector<float> want_d(N * V);
  cpu::CrossEntropyResult want = cpu::cross_entropy(want_d.data(), logits.data(), targets.data(), N, V, -100, scale);

  DeviceBuffer<bf16> d_logits(to_bf16(logits));
  DeviceBuffer<float> d_loss(N), d_scale(std::vector<float>{float(scale)});
  DeviceBuffer<int32_t> d_targets(targets);
  DeviceBuffer<bf16> d_dlogits(N * V);
  DeviceBuffer<double> d_sum(std::vector<double>{0.0});
  DeviceBuffer<int64_t> d_count(std::vector<int64_t>{0});
  cuda::cross_entropy_forward_backward(d_dlogits, d_loss, d_logits, d_targets, N, V, -100, d_scale, nullptr);
  cuda::loss_accumulate(d_sum, d_count, d_loss, d_targets, N, -100, nullptr);
  EXPECT_EQ(d_count.download()[0], want.count);
  EXPECT_NEAR(d_sum.download()[0], want.loss_sum, 1e-5 * want.loss_sum);
  std::vector<float> got_d = to_float(d_dlogits.download());
  EXPECT_LT(relative_error(got_d, want_d), kBf16Tolerance);
  for (int64_t v = 0; v < V; ++v) ASSERT_EQ(got_d[5 * V + v], 0.0f) << "ignored rows have zero gradient";
}

// ---- GEMM wrapper (cuBLASLt) ----------------------------------------------------------

TEST(TrainKernelsCpuVsCuda, LinearLayersThroughCublasLtMatchCpuIncludingColumnBlocks) {
  REQUIRE_GPU();
  auto rng = make_rng(9);
  const int64_t N = 45, IC = 72, OC = 40, wide = 3 * OC;  // output written into columns [OC, 2·OC)
  std::vector<float> x = random_bf16_values(rng, N * IC), w = random_bf16_values(rng, OC * IC, 0.2);
  std::vector<float> b = random_bf16_values(rng, OC), r = random_bf16_values(rng, N * OC);
  std::vector<float> want(N * OC);
  cpu::linear_forward(want.data(), x.data(), w.data(), b.data(), N, IC, OC);
  for (int64_t i = 0; i < N * OC; ++i) want[i] += r[i];
  DeviceBuffer<char> workspace(32 << 20);
  cuda::Gemm gemm(workspace.get(), 32 << 20);
  // The residual is read with the output's leading dimension (one GEMM: C and D share a layout).
  std::vector<float> r_wide(N * wide, 0.0f);
  for (int64_t n = 0; n < N; ++n) std::copy_n(r.begin() + n * OC, OC, r_wide.begin() + n * wide + OC);
  DeviceBuffer<bf16> d_x(to_bf16(x)), d_w(to_bf16(w)), d_b(to_bf16(b)), d_r(to_bf16(r_wide)), d_y(N * wide);
  cuda::linear_forward(gemm, d_y.get() + OC, wide, d_x, IC, d_w, d_b, d_r.get() + OC, N, IC, OC, nullptr);
  std::vector<float> y = to_float(d_y.download()), block(N * OC);
  for (int64_t n = 0; n < N; ++n) std::copy_n(y.begin() + n * wide + OC, OC, block.begin() + n * OC);
  EXPECT_LT(relative_error(block, want), kBf16Tolerance);

  std::vector<float> dy = random_bf16_values(rng, N * OC), dw0 = testing_support::random_vector<float>(rng, OC * IC);
  std::vector<float> want_dx(N * IC), want_dw = dw0;
  cpu::linear_backward(want_dx.data(), want_dw.data(), (float*)nullptr, dy.data(), x.data(), w.data(), N, IC, OC);
  DeviceBuffer<bf16> d_dy(to_bf16(dy)), d_dx(N * IC);
  DeviceBuffer<float> d_dw(dw0);
  cuda::linear_backward_input(gemm, d_dx, IC, d_dy, OC, d_w, N, IC, OC, 0.0f, nullptr);
  cuda::linear_backward_weight(gemm, d_dw, d_dy, OC, d_x, IC, N, IC, OC, nullptr);
  EXPECT_LT(relative_error(to_float(d_dx.download()), want_dx), kBf16Tolerance);
  EXPECT_LT(relative_error(d_dw.download(), want_dw), 1e-4);
}

// ---- AdamW ---------------------------------------------------------------------------

// A store of four tensors (one with per-row multipliers, one without decay, one at an odd
// offset, one frozen) stepped by the CPU AdamW and by the multi-tensor kernel from the same
// gradients. The kernel moves four elements at a time where a chunk starts 4-aligned: w
// (70100 elements, several chunks) takes that path, b (99) that path and a 3-element tail, c
// (offset 70199 in both layouts) the element-wise path.
struct OptimizerCase {
  ParameterStore<float> store;
  int w, b, c, frozen;
  OptimizerCase() {
    w = store.add("w", {701, 100}, true);
    b = store.add("b", {99}, false);
    c = store.add("c", {3, 7}, true);
    frozen = store.add("frozen", {16}, true);
    store.allocate();
    store.set_trainable(frozen, false);
    store.allocate_gradients();
    store.info(w).lr_multiplier = 0.5f;
    store.info(b).lr_multiplier = 2.0f;
  }
};

struct DeviceOptimizer {
  std::vector<cuda::AdamWTensor> tensors;
  std::vector<cuda::AdamWChunk> chunks;
  std::vector<float> rows;
  int64_t weights = 0, state = 0;
  explicit DeviceOptimizer(const ParameterStore<float>& s, float wd) {
    for (int i = 0; i < s.size(); ++i) {
      const ParameterInfo& p = s.info(i);
      if (!p.trainable) continue;
      cuda::AdamWTensor t;
      t.weight_offset = p.offset;
      t.state_offset = p.grad_offset;
      t.numel = p.numel;
      t.row_len = p.numel / p.shape[0];
      t.lr_multiplier = p.lr_multiplier;
      t.weight_decay = p.weight_decay ? wd : 0.0f;
      if (!p.row_multiplier.empty()) {
        t.row_multiplier_offset = int64_t(rows.size());
        rows.insert(rows.end(), p.row_multiplier.begin(), p.row_multiplier.end());
      }
      for (int64_t c = 0; c < p.numel; c += 32768)
        chunks.push_back({int32_t(tensors.size()), c, std::min(p.numel, c + 32768)});
      tensors.push_back(t);
    }
    if (rows.empty()) rows.push_back(1.0f);
  }
};

TEST(TrainKernelsCpuVsCuda, MultiTensorAdamWMatchesCpuWithClippingMultipliersAndFrozenTensors) {
  REQUIRE_GPU();
  auto rng = make_rng(10);
  OptimizerCase cpu_case;
  ParameterStore<float>& s = cpu_case.store;
  std::vector<float> rowm = testing_support::random_vector<float>(rng, s.info(cpu_case.w).shape[0]);
  for (float& r : rowm) r = std::abs(r);
  rowm[3] = 0.0f;  // a row with multiplier 0 must not move at all
  s.info(cpu_case.w).row_multiplier = rowm;
  std::vector<float> init = random_bf16_values(rng, s.total_numel(), 0.5);
  s.values() = init;
  AdamWConfig ac;
  AdamW cpu_opt(ac);
  DeviceOptimizer dev(s, float(ac.weight_decay));

  // Device state: weights (bf16) laid out like values(); master / grads / m / v like gradients().
  DeviceBuffer<bf16> d_weights(to_bf16(init));
  std::vector<float> master(s.trainable_numel());
  for (int i = 0; i < s.size(); ++i)
    if (s.grad(i)) std::copy_n(s.value(i), s.info(i).numel, master.begin() + s.info(i).grad_offset);
  DeviceBuffer<float> d_master(master), d_grads(s.trainable_numel());
  DeviceBuffer<float> d_m(std::vector<float>(s.trainable_numel(), 0.0f)), d_v(std::vector<float>(s.trainable_numel(), 0.0f));
  DeviceBuffer<cuda::AdamWTensor> d_tensors(dev.tensors);
  DeviceBuffer<cuda::AdamWChunk> d_chunks(dev.chunks);
  DeviceBuffer<float> d_rows(dev.rows);
  DeviceBuffer<double> d_partials(cuda::kReduceBlocks);
  DeviceBuffer<cuda::StepState> d_state(std::vector<cuda::StepState>{cuda::StepState{}});

  const double lr = 3e-3, max_norm = 1.0;
  for (int step = 0; step < 3; ++step) {
    std::vector<float> g = testing_support::random_vector<float>(rng, s.trainable_numel(), step == 1 ? 0.001 : 1.0);
    s.gradients() = g;  // step 0 and 2 clip (norm ≫ 1), step 1 does not
    d_grads.upload(g);
    double want_norm = clip_gradient_norm(s, max_norm);
    cpu_opt.step(s, lr);

    cuda::StepState st = d_state.download()[0];
    st.lr = lr, st.max_norm = max_norm, st.loss_sum = 1.0;
    d_state.upload({st});
    cuda::grad_norm_partials(d_partials, d_grads, s.trainable_numel(), nullptr);
    cuda::grad_norm_finalize(d_state, d_partials, float(ac.beta1), float(ac.beta2), nullptr);
    cuda::adamw_update(d_master, d_weights, d_grads, d_m, d_v, d_tensors, d_chunks, int64_t(dev.chunks.size()), d_rows,
                       d_state, float(ac.beta1), float(ac.beta2), float(ac.eps), nullptr);
    st = d_state.download()[0];
    EXPECT_NEAR(st.grad_norm, want_norm, 1e-6 * want_norm) << "step " << step;
    EXPECT_EQ(st.skip, 0);
    EXPECT_EQ(st.t, step + 1);
  }
  std::vector<float> got_master = d_master.download(), want_master(s.trainable_numel());
  for (int i = 0; i < s.size(); ++i)
    if (s.grad(i)) std::copy_n(s.value(i), s.info(i).numel, want_master.begin() + s.info(i).grad_offset);
  EXPECT_LT(relative_error(got_master, want_master), kF32Tolerance);
  EXPECT_LT(relative_error(d_m.download(), cpu_opt.first_moment()), kF32Tolerance);
  EXPECT_LT(relative_error(d_v.download(), cpu_opt.second_moment()), kF32Tolerance);
  std::vector<float> got_w = to_float(d_weights.download());
  const ParameterInfo& fw = s.info(cpu_case.frozen);
  for (int64_t j = 0; j < fw.numel; ++j) EXPECT_EQ(got_w[fw.offset + j], init[fw.offset + j]) << "frozen moved";
  const ParameterInfo& pw = s.info(cpu_case.w);
  for (int64_t j = 0; j < pw.numel / pw.shape[0]; ++j)
    EXPECT_EQ(got_w[pw.offset + 3 * (pw.numel / pw.shape[0]) + j], init[pw.offset + 3 * (pw.numel / pw.shape[0]) + j]);
  for (int64_t j = 0; j < pw.numel; ++j)
    ASSERT_EQ(got_w[pw.offset + j], round_bf16(got_master[pw.grad_offset + j])) << "bf16 copy = rounded master";
}

TEST(TrainKernelsCpuVsCuda, NonFiniteGradientOrLossSkipsTheUpdateAndKeepsTheStepCount) {
  REQUIRE_GPU();
  auto rng = make_rng(11);
  OptimizerCase c;
  ParameterStore<float>& s = c.store;
  std::vector<float> init = random_bf16_values(rng, s.total_numel());
  DeviceOptimizer dev(s, 0.1f);
  std::vector<float> master(s.trainable_numel(), 0.5f);
  DeviceBuffer<bf16> d_weights(to_bf16(init));
  DeviceBuffer<float> d_master(master), d_m(std::vector<float>(master.size(), 0.0f)),
      d_v(std::vector<float>(master.size(), 0.0f));
  DeviceBuffer<cuda::AdamWTensor> d_tensors(dev.tensors);
  DeviceBuffer<cuda::AdamWChunk> d_chunks(dev.chunks);
  DeviceBuffer<float> d_rows(dev.rows);
  DeviceBuffer<double> d_partials(cuda::kReduceBlocks);
  for (int which = 0; which < 2; ++which) {
    std::vector<float> g = testing_support::random_vector<float>(rng, master.size());
    cuda::StepState st;
    st.lr = 1e-3, st.max_norm = 1.0, st.t = 7, st.loss_sum = 2.0;
    if (which == 0) g[1234] = NAN;
    else st.loss_sum = INFINITY;
    DeviceBuffer<float> d_grads(g);
    DeviceBuffer<cuda::StepState> d_state(std::vector<cuda::StepState>{st});
    cuda::grad_norm_partials(d_partials, d_grads, int64_t(g.size()), nullptr);
    cuda::grad_norm_finalize(d_state, d_partials, 0.9f, 0.95f, nullptr);
    cuda::adamw_update(d_master, d_weights, d_grads, d_m, d_v, d_tensors, d_chunks, int64_t(dev.chunks.size()), d_rows,
                       d_state, 0.9f, 0.95f, 1e-8f, nullptr);
    cuda::StepState after = d_state.download()[0];
    EXPECT_EQ(after.skip, 1) << (which == 0 ? "NaN gradient" : "infinite loss");
    EXPECT_EQ(after.t, 7);
    EXPECT_EQ(d_master.download(), master);
    EXPECT_EQ(to_float(d_weights.download()), init);
  }
}

// ---- attention fallback (materialised scores) vs flash4's CPU reference ----------------

struct AttentionCase {
  int64_t N, Hq, Hkv, D;
  std::vector<int32_t> cu;
  int window_left;
};

void check_attention(const AttentionCase& a, cuda::AttentionImpl impl, uint64_t salt) {
  auto rng = make_rng(salt);
  const int64_t ld = (a.Hq + 2 * a.Hkv) * a.D, HqD = a.Hq * a.D;
  int32_t max_len = 0;
  for (size_t d = 0; d + 1 < a.cu.size(); ++d) max_len = std::max(max_len, a.cu[d + 1] - a.cu[d]);
  std::vector<float> qkv = random_bf16_values(rng, a.N * ld), dout = random_bf16_values(rng, a.N * HqD);
  QkvLayout layout{a.N, a.Hq, a.Hkv, a.D};
  std::vector<float> q = layout.heads(qkv, 0, a.Hq), k = layout.heads(qkv, a.Hq, a.Hkv),
                     v = layout.heads(qkv, a.Hq + a.Hkv, a.Hkv);
  const float scale = float(1.0 / std::sqrt(double(a.D)));

  // CPU reference (float64 accumulation) on the same bf16 values.
  std::vector<float> out(a.N * HqD), lse(a.Hq * a.N), dq(q.size()), dk(k.size()), dv(v.size());
  flash4::ForwardArgs f = flash4::forward_args();
  f.q = flash4::contiguous(q.data(), FLASH4_F32, {a.N, a.Hq, a.D});
  f.k = flash4::contiguous(k.data(), FLASH4_F32, {a.N, a.Hkv, a.D});
  f.v = flash4::contiguous(v.data(), FLASH4_F32, {a.N, a.Hkv, a.D});
  f.out = flash4::contiguous(out.data(), FLASH4_F32, {a.N, a.Hq, a.D});
  f.lse = flash4::contiguous(lse.data(), FLASH4_F32, {a.Hq, a.N});
  f.options.causal = 1;
  f.options.softmax_scale = scale;
  f.options.window_left = a.window_left;
  f.varlen.cu_seqlens_q = f.varlen.cu_seqlens_k = a.cu.data();
  f.varlen.batch = int(a.cu.size() - 1);
  f.varlen.max_seqlen_q = f.varlen.max_seqlen_k = max_len;
  flash4::forward(f);
  flash4::BackwardArgs b = flash4::backward_args();
  b.q = f.q, b.k = f.k, b.v = f.v, b.out = f.out, b.lse = f.lse;
  b.dout = flash4::contiguous(dout.data(), FLASH4_F32, {a.N, a.Hq, a.D});
  b.dq = flash4::contiguous(dq.data(), FLASH4_F32, {a.N, a.Hq, a.D});
  b.dk = flash4::contiguous(dk.data(), FLASH4_F32, {a.N, a.Hkv, a.D});
  b.dv = flash4::contiguous(dv.data(), FLASH4_F32, {a.N, a.Hkv, a.D});
  b.options = f.options;
  b.varlen = f.varlen;
  flash4::backward(b);

  cuda::AttentionShape shape{a.Hq, a.Hkv, a.D, scale, a.window_left};
  cuda::AttentionScratchSize z = cuda::attention_scratch_size(shape, a.N, max_len);
  DeviceBuffer<float> scores(z.scores_floats), dks(z.dkv_floats), dvs(z.dkv_floats), delta(z.delta_floats);
  DeviceBuffer<bf16> probs(z.probs_elems);
  DeviceBuffer<char> workspace(32 << 20);
  cuda::Gemm gemm(workspace.get(), 32 << 20);
  cuda::Attention attention(shape, gemm, {scores, probs, dks, dvs, delta}, impl);
  DeviceBuffer<int32_t> d_cu(a.cu);
  cuda::AttentionDocuments docs;
  docs.cu_seqlens_device = d_cu;
  docs.cu_seqlens = a.cu;
  docs.max_len = max_len;
  DeviceBuffer<bf16> d_qkv(to_bf16(qkv)), d_out(a.N * HqD), d_dout(to_bf16(dout)), d_dqkv(a.N * ld);
  DeviceBuffer<float> d_lse(a.Hq * a.N);
  attention.forward(d_out, d_lse, d_qkv, ld, a.N, docs, nullptr);
  // backward reads the forward's output as flash4 would: the bf16 out.
  attention.backward(d_dqkv, d_qkv, ld, d_out, d_dout, d_lse, a.N, docs, nullptr);
  EXPECT_EQ(attention.forward_impl(), impl);
  EXPECT_EQ(attention.backward_impl(), impl);
  std::string what = std::string(cuda::attention_impl_name(attention.forward_impl())) + " / " +
                     cuda::attention_impl_name(attention.backward_impl());
  EXPECT_LT(relative_error(to_float(d_out.download()), out), kBf16Tolerance) << what;
  EXPECT_LT(relative_error(d_lse.download(), lse), 1e-4) << what;
  std::vector<float> g = to_float(d_dqkv.download());
  EXPECT_LT(relative_error(layout.heads(g, 0, a.Hq), dq), 2 * kBf16Tolerance) << what;
  EXPECT_LT(relative_error(layout.heads(g, a.Hq, a.Hkv), dk), 2 * kBf16Tolerance) << what;
  EXPECT_LT(relative_error(layout.heads(g, a.Hq + a.Hkv, a.Hkv), dv), 2 * kBf16Tolerance) << what;
}

TEST(TrainKernelsCpuVsCuda, AttentionFallbackMatchesFlash4ReferenceOnPackedDocumentsWithGqa) {
  REQUIRE_GPU();
  check_attention({50, 4, 2, 16, {0, 17, 50}, -1}, cuda::AttentionImpl::fallback, 12);
  check_attention({96, 8, 2, 64, {0, 1, 40, 96}, 7}, cuda::AttentionImpl::fallback, 13);  // sliding window
}

TEST(TrainKernelsCpuVsCuda, Flash4CudaAttentionInTheDecoderLayoutMatchesReference) {
  REQUIRE_GPU();
  cuda::AttentionShape shape{8, 2, 64, 0.125f, -1};
  std::string why;
  if (!cuda::flash4_cuda_supports(shape, &why)) GTEST_SKIP() << "flash4 has no CUDA kernel yet: " << why;
  check_attention({300, 8, 2, 64, {0, 100, 300}, -1}, cuda::AttentionImpl::flash4, 14);
  check_attention({300, 32, 8, 64, {0, 300}, -1}, cuda::AttentionImpl::flash4, 15);
}

}  // namespace
}  // namespace adept
