// flash4's float32 CPU kernels (FLASH4_BACKEND_CPU, src/cpu): feature by feature against
// the naive formula in float64 on the inputs as the kernels saw them (forward) and against
// the float64 reference backward (gradients), at sizes that take the vector loops and their
// tails; the FMA-unit exp2 against std::exp2; bit identity across thread counts; and which
// backend AUTO picks on the CPU.
#include <omp.h>

#include <cmath>
#include <limits>

#include "cpu/row_ops.hpp"
#include "packed_problem.hpp"

namespace flash4_test {
namespace {

// A problem large enough for the 8-lane loops (and their tails: 37 / 53 / 130 keys).
DenseProblem vector_sized(flash4_dtype dtype = FLASH4_F32) {
  DenseProblem p;
  p.B = 2, p.Sq = 37, p.Sk = 53, p.Hq = 4, p.Hkv = 2, p.Dqk = p.Dv = 40;
  p.options.softmax_scale = 0.2f;
  p.dtype = dtype;
  p.backend = FLASH4_BACKEND_CPU;
  return p;
}

// Three causal sequences packed with padding past the last (rows no sequence covers), f32.
PackedProblem padded_packed() {
  PackedProblem p = PackedProblem::of_lengths({{30, 30}, {1, 7}, {50, 50}});
  p.Tq += 3, p.Tk += 5;
  p.Dqk = p.Dv = 32;
  p.options.causal = 1;
  p.dtype = FLASH4_F32;
  p.backend = FLASH4_BACKEND_CPU;
  return p;
}

class CpuKernels : public Flash4Test {
 protected:
  // Forward on the CPU kernels against the naive formula on the rounded inputs: out within
  // float32 rounding of the sums (2e-6 of the largest |out|), lse to 2e-6 absolute.
  void expect_forward_matches_naive(DenseProblem p) {
    if (!p.sink.empty()) p.sink = random_sink(rng_, p.Hq);
    const DenseInputs in = random_inputs(p, rng_);
    const ForwardResult r = run_forward(p, in);
    ASSERT_EQ(r.status, FLASH4_OK) << r.error;
    EXPECT_STREQ(flash4_last_backend(), "cpu");
    EXPECT_TRUE(r.all_written);
    DenseProblem exact = p;
    exact.dtype = FLASH4_F64;
    const NaiveOutput expected = naive_dense(exact, rounded_to(p.dtype, in));
    const double out_tolerance = p.dtype == FLASH4_F32 ? 2e-6 : (p.dtype == FLASH4_BF16 ? 8e-3 : 1e-3);
    EXPECT_TRUE(close_relative_to_max(r.out, expected.out, out_tolerance));
    EXPECT_TRUE(all_close(r.lse, expected.lse, 2e-6, 2e-6));
  }

  // Backward on the CPU kernels (out and lse from their forward) against the float64
  // reference backward on the same rounded inputs: within 2e-5 of the largest gradient in
  // float32 (sums over up to 53 keys and 2 query heads), bf16 / fp16 output rounding otherwise.
  void expect_backward_matches_reference(DenseProblem p) {
    if (!p.sink.empty()) p.sink = random_sink(rng_, p.Hq);
    const DenseInputs in = random_inputs(p, rng_);
    const std::vector<double> g = random_values(rng_, p.out_numel());
    const BackwardResult r = run_backward(p, in, g);
    ASSERT_EQ(r.status, FLASH4_OK) << r.error;
    EXPECT_STREQ(flash4_last_backend(), "cpu");
    EXPECT_TRUE(r.all_written);
    DenseProblem exact = p;
    exact.dtype = FLASH4_F64;
    exact.backend = FLASH4_BACKEND_REFERENCE;
    HostTensor g_rounded(p.dtype, {int64_t(g.size())});
    g_rounded.assign(g);
    const BackwardResult e = run_backward(exact, rounded_to(p.dtype, in), g_rounded.values());
    ASSERT_EQ(e.status, FLASH4_OK) << e.error;
    const double tolerance = p.dtype == FLASH4_F32 ? 2e-5 : (p.dtype == FLASH4_BF16 ? 1e-2 : 2e-3);
    EXPECT_TRUE(close_relative_to_max(r.dq, e.dq, tolerance)) << "dq";
    EXPECT_TRUE(close_relative_to_max(r.dk, e.dk, tolerance)) << "dk";
    EXPECT_TRUE(close_relative_to_max(r.dv, e.dv, tolerance)) << "dv";
    if (!p.sink.empty()) EXPECT_TRUE(close_relative_to_max(r.dsink, e.dsink, tolerance)) << "dsink";
  }

  void expect_forward_and_backward(const DenseProblem& p) {
    expect_forward_matches_naive(p);
    expect_backward_matches_reference(p);
  }
};

// ---- exp2 on the FMA units ----------------------------------------------------------------

TEST(CpuExp2, WithinTwoTenthsOfAMillionthOfStdExp2DownToTheSmallestNormal) {
  double worst = 0;
  float worst_x = 0;
  for (float x = 1.0f; x >= -126.0f; x -= 0.000977f) {  // ~130k points, all fractions
    const double expected = std::exp2(double(x));
    const double error = std::fabs(double(flash4::detail::cpu::exp2_softmax(x)) - expected) / expected;
    if (error > worst) worst = error, worst_x = x;
  }
  EXPECT_LT(worst, 2e-7) << "at x = " << worst_x;
  EXPECT_EQ(flash4::detail::cpu::exp2_softmax(0.0f), 1.0f);
  EXPECT_EQ(flash4::detail::cpu::exp2_softmax(-1.0f), 0.5f);
  EXPECT_EQ(flash4::detail::cpu::exp2_softmax(-200.0f), 0.0f);
  EXPECT_EQ(flash4::detail::cpu::exp2_softmax(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_TRUE(std::isnan(flash4::detail::cpu::exp2_softmax(std::numeric_limits<float>::quiet_NaN())));
}

TEST(CpuExp2, RowFormTakesTheSameValuesAsTheScalarForm) {
  std::vector<float> x(77), y(77);
  for (size_t j = 0; j < x.size(); ++j) x[j] = -0.37f * float(j);
  flash4::detail::cpu::exp2_row(y.data(), x.data(), 1.5f, 0.25f, int64_t(x.size()));
  for (size_t j = 0; j < x.size(); ++j) {
    const float expected = flash4::detail::cpu::exp2_softmax(x[j] * 1.5f - 0.25f);
    EXPECT_NEAR(y[j], expected, 1e-7f * expected) << j;  // FMA contraction may differ by an ulp
  }
}

// ---- forward and backward, feature by feature -------------------------------------------

TEST_F(CpuKernels, UnmaskedAndCausalGqaBottomRightWithMoreKeysAndMoreQueries) {
  DenseProblem p = vector_sized();
  expect_forward_and_backward(p);
  p.options.causal = 1;
  expect_forward_and_backward(p);
  p.Sq = 61, p.Sk = 29;  // early rows see no key: out 0, lse -inf, zero gradients
  expect_forward_and_backward(p);
}

TEST_F(CpuKernels, WindowsSoftcapAndSinkWithDsink) {
  DenseProblem p = vector_sized();
  p.options.window_left = 9, p.options.window_right = 3;
  expect_forward_and_backward(p);
  p.options.causal = 1, p.options.window_right = -1, p.options.softcap = 3.0f;
  p.sink = {0};  // random_sink per call
  expect_forward_and_backward(p);
}

TEST_F(CpuKernels, SinkOnRowsWithNoVisibleKey) {
  DenseProblem p = vector_sized();
  p.options.causal = 1;
  p.Sq = 45, p.Sk = 20;
  p.sink = {0};
  expect_forward_and_backward(p);
}

TEST_F(CpuKernels, SequsedKMqaBhsdAndValueDimOtherThanKeyDim) {
  DenseProblem p = vector_sized();
  p.seqused_k = {53, 11};  // keys past them: zero gradients
  p.Hkv = 1, p.Dv = 24, p.bhsd = true;
  p.options.causal = 1;
  expect_forward_and_backward(p);
}

TEST_F(CpuKernels, Bf16AndF16) {
  for (flash4_dtype dtype : {FLASH4_BF16, FLASH4_F16}) {
    DenseProblem p = vector_sized(dtype);
    p.options.causal = 1;
    expect_forward_and_backward(p);
  }
}

// ---- packed -------------------------------------------------------------------------------

TEST_F(CpuKernels, ForwardPackedWithPaddingMatchesNaiveFormula) {
  const PackedProblem p = padded_packed();  // padding rows: out left untouched
  const DenseInputs in = random_inputs(p, rng_);
  const ForwardResult r = run_packed_forward(p, in);
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  PackedProblem exact = p;
  exact.dtype = FLASH4_F64;
  const NaiveOutput expected = naive_packed(exact, rounded_to(FLASH4_F32, in));
  const int64_t covered_out = p.cu_q.back() * p.Hq * p.Dv;
  const std::vector<double> out(r.out.begin(), r.out.begin() + covered_out),
      want(expected.out.begin(), expected.out.begin() + covered_out);
  EXPECT_TRUE(close_relative_to_max(out, want, 2e-6));
  for (int64_t i = covered_out; i < int64_t(r.out.size()); ++i) EXPECT_TRUE(std::isnan(r.out[i])) << i;
}

TEST_F(CpuKernels, BackwardPackedWithPaddingGivesZerosThere) {
  const PackedProblem p = padded_packed();  // padding rows: zero gradients
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.Tq * p.Hq * p.Dv);
  const BackwardResult r = run_packed_backward(p, in, g);
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  EXPECT_TRUE(r.all_written);
  PackedProblem exact = p;
  exact.dtype = FLASH4_F64;
  exact.backend = FLASH4_BACKEND_REFERENCE;
  HostTensor g_rounded(FLASH4_F32, {int64_t(g.size())});
  g_rounded.assign(g);
  const BackwardResult e = run_packed_backward(exact, rounded_to(FLASH4_F32, in), g_rounded.values());
  EXPECT_TRUE(close_relative_to_max(r.dq, e.dq, 2e-5)) << "dq";
  EXPECT_TRUE(close_relative_to_max(r.dk, e.dk, 2e-5)) << "dk";
  EXPECT_TRUE(close_relative_to_max(r.dv, e.dv, 2e-5)) << "dv";
  for (int64_t i = p.cu_k.back() * p.Hkv * p.Dqk; i < p.Tk * p.Hkv * p.Dqk; ++i) EXPECT_EQ(r.dk[i], 0.0) << i;
}

TEST_F(CpuKernels, OneThreadAndTwoGiveTheSameBits) {
  DenseProblem p = vector_sized();
  p.options.causal = 1;
  p.sink = random_sink(rng_, p.Hq);
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.out_numel());
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const BackwardResult one = run_backward(p, in, g);
  omp_set_num_threads(2);
  const BackwardResult two = run_backward(p, in, g);
  omp_set_num_threads(threads);
  EXPECT_EQ(one.dq, two.dq);
  EXPECT_EQ(one.dk, two.dk);
  EXPECT_EQ(one.dv, two.dv);
  EXPECT_EQ(one.dsink, two.dsink);
}

// ---- which backend runs -------------------------------------------------------------------

TEST_F(CpuKernels, AutoRunsTheCpuKernelsButTheReferenceForFloat64) {
  DenseProblem p = vector_sized();
  p.backend = FLASH4_BACKEND_AUTO;
  const DenseInputs in = random_inputs(p, rng_);
  ASSERT_EQ(run_forward(p, in).status, FLASH4_OK);
  EXPECT_STREQ(flash4_last_backend(), "cpu");
  p.dtype = FLASH4_BF16;
  ASSERT_EQ(run_forward(p, in).status, FLASH4_OK);
  EXPECT_STREQ(flash4_last_backend(), "cpu");
  p.dtype = FLASH4_F64;
  ASSERT_EQ(run_forward(p, in).status, FLASH4_OK);
  EXPECT_STREQ(flash4_last_backend(), "reference");
  p.backend = FLASH4_BACKEND_CPU;  // asked for: float32 sums of float64 tensors
  const ForwardResult r = run_forward(p, in);
  ASSERT_EQ(r.status, FLASH4_OK);
  EXPECT_STREQ(flash4_last_backend(), "cpu");
  EXPECT_TRUE(close_relative_to_max(r.out, naive_dense(p, in).out, 2e-6));
}

}  // namespace
}  // namespace flash4_test
