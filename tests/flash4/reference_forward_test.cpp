// The CPU reference forward, feature by feature, against the naive formula in float64
// (full score matrix, explicit mask, softmax with sink), and layouts against each other.
#include <set>

#include "packed_problem.hpp"

namespace flash4_test {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

class ReferenceForward : public Flash4Test {
 protected:
  // Runs the problem in float64 and checks out and lse against the naive formula, and
  // that every output element was written.
  void expect_matches_naive(const DenseProblem& p) {
    const DenseInputs in = random_inputs(p, rng_);
    const ForwardResult r = run_forward(p, in);
    ASSERT_EQ(r.status, FLASH4_OK) << r.error;
    EXPECT_TRUE(r.all_written);
    const NaiveOutput expected = naive_dense(p, in);
    EXPECT_TRUE(all_close(r.out, expected.out, 1e-12, 1e-12));
    EXPECT_TRUE(all_close(r.lse, expected.lse, 1e-6, 1e-6));  // lse is fp32
  }
};

TEST_F(ReferenceForward, UnmaskedGqaWithMoreKeysThanQueriesMatchesNaiveFormula) {
  DenseProblem p;
  p.Sq = 5, p.Sk = 9;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, MultiQueryAttentionWithOneKvHeadMatchesNaiveFormula) {
  DenseProblem p;
  p.Hq = 3, p.Hkv = 1;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, CausalWithMoreKeysThanQueriesIsBottomRightAligned) {
  DenseProblem p;
  p.Sq = 3, p.Sk = 8;
  p.options.causal = 1;
  expect_matches_naive(p);
  // The last query sees every key; the first sees keys 0 .. Sk - Sq.
  EXPECT_EQ(naive_visible(2, 7, 3, 8, p.options), true);
  EXPECT_EQ(naive_visible(0, 5, 3, 8, p.options), true);
  EXPECT_EQ(naive_visible(0, 6, 3, 8, p.options), false);
}

TEST_F(ReferenceForward, CausalWithMoreQueriesThanKeysGivesEarlyRowsZeroOutputAndMinusInfinityLse) {
  DenseProblem p;
  p.Sq = 7, p.Sk = 3;  // query i sees keys j <= i - 4: rows 0..3 see nothing
  p.options.causal = 1;
  expect_matches_naive(p);
  const ForwardResult r = run_forward(p, random_inputs(p, rng_));
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t i = 0; i < p.Sq; ++i) {
        const bool empty = i < 4;
        EXPECT_EQ(r.lse[(b * p.Hq + h) * p.Sq + i] == -kInf, empty) << "b=" << b << " h=" << h << " i=" << i;
        for (int64_t d = 0; d < p.Dv; ++d)
          if (empty) EXPECT_EQ(r.out[((b * p.Sq + i) * p.Hq + h) * p.Dv + d], 0.0);
      }
}

TEST_F(ReferenceForward, SlidingWindowLeftMatchesNaiveFormula) {
  DenseProblem p;
  p.Sq = p.Sk = 9;
  p.options.window_left = 2;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, SlidingWindowRightMatchesNaiveFormula) {
  DenseProblem p;
  p.Sq = p.Sk = 9;
  p.options.window_right = 1;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, SlidingWindowBothSidesWithUnequalLengthsMatchesNaiveFormula) {
  DenseProblem p;
  p.Sq = 4, p.Sk = 10;
  p.options.window_left = 3, p.options.window_right = 2;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, CausalSlidingWindowMatchesNaiveFormula) {
  DenseProblem p;
  p.Sq = 6, p.Sk = 9;
  p.options.causal = 1;
  p.options.window_left = 3;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, ZeroWindowOnBothSidesSeesOnlyTheDiagonalKey) {
  DenseProblem p;
  p.Sq = p.Sk = 6;
  p.options.window_left = p.options.window_right = 0;
  expect_matches_naive(p);
  // One visible key: out is exactly that key's value row, lse its score.
  const DenseInputs in = random_inputs(p, rng_);
  const ForwardResult r = run_forward(p, in);
  for (int64_t i = 0; i < p.Sq; ++i)
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t d = 0; d < p.Dv; ++d)
        EXPECT_DOUBLE_EQ(r.out[((0 * p.Sq + i) * p.Hq + h) * p.Dv + d], in.v[((0 * p.Sk + i) * p.Hkv + h / 2) * p.Dv + d]);
}

TEST_F(ReferenceForward, SoftcapMatchesNaiveFormula) {
  DenseProblem p;
  p.options.softmax_scale = 2.0f;  // large scores, so the cap bends them
  p.options.softcap = 1.5f;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, SinkJoinsTheDenominatorOnly) {
  DenseProblem p;
  p.options.causal = 1;
  p.sink = random_sink(rng_, p.Hq);
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, SinkOnARowWithNoVisibleKeyGivesZeroOutputAndLseEqualToTheSink) {
  DenseProblem p;
  p.B = 1, p.Sq = 4, p.Sk = 2;  // causal: rows 0 and 1 see no key
  p.options.causal = 1;
  p.sink = random_sink(rng_, p.Hq);
  const ForwardResult r = run_forward(p, random_inputs(p, rng_));
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  for (int64_t h = 0; h < p.Hq; ++h)
    for (int64_t i = 0; i < 2; ++i) {
      EXPECT_EQ(r.lse[h * p.Sq + i], float(p.sink[h]));
      for (int64_t d = 0; d < p.Dv; ++d) EXPECT_EQ(r.out[(i * p.Hq + h) * p.Dv + d], 0.0);
    }
}

TEST_F(ReferenceForward, SequsedKLimitsEachDenseSequenceToItsFirstKeys) {
  DenseProblem p;
  p.B = 3, p.Sq = 4, p.Sk = 9;
  p.seqused_k = {9, 5, 1};
  p.options.causal = 1;  // aligned to the used key count
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, ZeroUsedKeysGivesZeroOutputAndMinusInfinityLse) {
  DenseProblem p;
  p.B = 2;
  p.seqused_k = {0, 3};
  const ForwardResult r = run_forward(p, random_inputs(p, rng_));
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  for (int64_t i = 0; i < p.Sq * p.Hq * p.Dv; ++i) EXPECT_EQ(r.out[i], 0.0);
  for (int64_t i = 0; i < p.Hq * p.Sq; ++i) EXPECT_EQ(r.lse[i], -kInf);
}

TEST_F(ReferenceForward, ValueHeadDimDifferentFromQueryKeyHeadDimMatchesNaiveFormula) {
  DenseProblem p;
  p.Dqk = 12, p.Dv = 5;
  p.options.causal = 1;
  expect_matches_naive(p);
}

TEST_F(ReferenceForward, ZeroScaleMeansInverseSqrtOfHeadDim) {
  DenseProblem p;
  p.Dqk = 16;
  const DenseInputs in = random_inputs(p, rng_);
  p.options.softmax_scale = 0;
  const ForwardResult implicit = run_forward(p, in);
  p.options.softmax_scale = 0.25f;
  const ForwardResult explicit_scale = run_forward(p, in);
  EXPECT_TRUE(all_close(implicit.out, explicit_scale.out, 1e-15, 1e-15));
}

TEST_F(ReferenceForward, LseIsOptional) {
  DenseProblem p;
  const DenseInputs in = random_inputs(p, rng_);
  DenseTensor q(p.dtype, p.B, p.Sq, p.Hq, p.Dqk, false), k(p.dtype, p.B, p.Sk, p.Hkv, p.Dqk, false);
  DenseTensor v(p.dtype, p.B, p.Sk, p.Hkv, p.Dv, false), out(p.dtype, p.B, p.Sq, p.Hq, p.Dv, false);
  q.assign(in.q), k.assign(in.k), v.assign(in.v), out.poison();
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
  a.options = p.options;
  ASSERT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
  EXPECT_EQ(out.values(), run_forward(p, in).out);
}

TEST_F(ReferenceForward, BhsdStridesGiveBitIdenticalResultsToBshd) {
  DenseProblem p;
  p.options.causal = 1, p.options.window_left = 3;
  const DenseInputs in = random_inputs(p, rng_);
  const ForwardResult bshd = run_forward(p, in);
  p.bhsd = true;
  const ForwardResult bhsd = run_forward(p, in);
  ASSERT_EQ(bhsd.status, FLASH4_OK) << bhsd.error;
  EXPECT_TRUE(bhsd.all_written);
  EXPECT_EQ(bshd.out, bhsd.out);
  EXPECT_EQ(bshd.lse, bhsd.lse);
}

// Packs sequences of uneven (Sq, Sk), runs them as one varlen call, and compares each
// sequence with a dense call of batch 1.
TEST_F(ReferenceForward, VarlenEqualsPerSequenceDense) {
  PackedProblem p = PackedProblem::of_lengths({{3, 5}, {4, 2}, {6, 6}, {1, 7}});
  p.options.causal = 1, p.options.window_left = 2;
  p.sink = random_sink(rng_, p.Hq);
  const DenseInputs in = random_inputs(p, rng_);
  const ForwardResult packed = run_packed_forward(p, in);
  ASSERT_EQ(packed.status, FLASH4_OK) << packed.error;
  EXPECT_TRUE(packed.all_written);
  for (int b = 0; b < p.batch(); ++b) {
    DenseProblem d;
    d.B = 1, d.Sq = p.cu_q[b + 1] - p.cu_q[b], d.Sk = p.cu_k[b + 1] - p.cu_k[b];
    d.Hq = p.Hq, d.Hkv = p.Hkv, d.Dqk = p.Dqk, d.Dv = p.Dv, d.options = p.options, d.sink = p.sink;
    const DenseInputs slice{
        {in.q.begin() + p.cu_q[b] * p.Hq * p.Dqk, in.q.begin() + p.cu_q[b + 1] * p.Hq * p.Dqk},
        {in.k.begin() + p.cu_k[b] * p.Hkv * p.Dqk, in.k.begin() + p.cu_k[b + 1] * p.Hkv * p.Dqk},
        {in.v.begin() + p.cu_k[b] * p.Hkv * p.Dv, in.v.begin() + p.cu_k[b + 1] * p.Hkv * p.Dv}};
    const ForwardResult dense = run_forward(d, slice);
    const std::vector<double> packed_out(packed.out.begin() + p.cu_q[b] * p.Hq * p.Dv,
                                         packed.out.begin() + p.cu_q[b + 1] * p.Hq * p.Dv);
    EXPECT_EQ(packed_out, dense.out) << "sequence " << b;
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t i = 0; i < d.Sq; ++i)
        EXPECT_EQ(packed.lse[h * p.Tq + p.cu_q[b] + i], dense.lse[h * d.Sq + i]) << "sequence " << b;
  }
}

TEST_F(ReferenceForward, VarlenWithSequsedKMatchesNaiveFormula) {
  PackedProblem p = PackedProblem::of_lengths({{4, 6}, {2, 3}, {5, 5}});
  p.seqused_k = {4, 0, 5};
  p.options.causal = 1;
  const DenseInputs in = random_inputs(p, rng_);
  const ForwardResult r = run_packed_forward(p, in);
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  EXPECT_TRUE(r.all_written);
  const NaiveOutput expected = naive_packed(p, in);
  EXPECT_TRUE(all_close(r.out, expected.out, 1e-12, 1e-12));
  EXPECT_TRUE(all_close(r.lse, expected.lse, 1e-6, 1e-6));
}

// Scatters each sequence's keys into randomly chosen pages of a shared pool (unused
// slots hold NaN, so reading one would show) and compares with contiguous keys.
struct PagedKv {
  int page_size = 3;
  int64_t max_pages = 0, num_pages = 0;
  std::vector<int32_t> page_table;
  HostTensor k, v;
};

PagedKv scatter_into_pages(std::mt19937_64& rng, const std::vector<double>& k, const std::vector<double>& v,
                           int64_t B, int64_t Sk, int64_t Hkv, int64_t Dqk, int64_t Dv, flash4_dtype dtype) {
  PagedKv paged;
  paged.max_pages = (Sk + paged.page_size - 1) / paged.page_size;
  paged.num_pages = B * paged.max_pages + 3;
  std::vector<int32_t> pages(paged.num_pages);
  for (int32_t i = 0; i < int32_t(pages.size()); ++i) pages[i] = i;
  std::shuffle(pages.begin(), pages.end(), rng);
  paged.page_table.assign(pages.begin(), pages.begin() + B * paged.max_pages);
  paged.k = HostTensor(dtype, {paged.num_pages, paged.page_size, Hkv, Dqk});
  paged.v = HostTensor(dtype, {paged.num_pages, paged.page_size, Hkv, Dv});
  paged.k.poison();
  paged.v.poison();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < Sk; ++j) {
      const int64_t page = paged.page_table[b * paged.max_pages + j / paged.page_size], slot = j % paged.page_size;
      for (int64_t h = 0; h < Hkv; ++h) {
        for (int64_t d = 0; d < Dqk; ++d)
          paged.k.set(((page * paged.page_size + slot) * Hkv + h) * Dqk + d, k[((b * Sk + j) * Hkv + h) * Dqk + d]);
        for (int64_t d = 0; d < Dv; ++d)
          paged.v.set(((page * paged.page_size + slot) * Hkv + h) * Dv + d, v[((b * Sk + j) * Hkv + h) * Dv + d]);
      }
    }
  return paged;
}

// On the reference (f64) and on the float32 CPU kernels (f32), the same bits either way.
TEST_F(ReferenceForward, PagedKvEqualsContiguousKv) {
  for (flash4_backend backend : {FLASH4_BACKEND_REFERENCE, FLASH4_BACKEND_CPU}) {
    SCOPED_TRACE(backend == FLASH4_BACKEND_CPU ? "cpu kernels" : "reference");
    DenseProblem p;
    p.B = 3, p.Sq = 4, p.Sk = 10, p.Dv = 6;
    p.seqused_k = {10, 7, 2};
    p.options.causal = 1;
    p.backend = backend;
    p.dtype = backend == FLASH4_BACKEND_CPU ? FLASH4_F32 : FLASH4_F64;
    const DenseInputs in = random_inputs(p, rng_);
    const ForwardResult contiguous = run_forward(p, in);
    ASSERT_EQ(contiguous.status, FLASH4_OK) << contiguous.error;

    PagedKv paged = scatter_into_pages(rng_, in.k, in.v, p.B, p.Sk, p.Hkv, p.Dqk, p.Dv, p.dtype);
    DenseTensor q(p.dtype, p.B, p.Sq, p.Hq, p.Dqk, false), out(p.dtype, p.B, p.Sq, p.Hq, p.Dv, false);
    HostTensor lse(FLASH4_F32, {p.B, p.Hq, p.Sq});
    q.assign(in.q), out.poison(), lse.poison();
    flash4::ForwardArgs a = flash4::forward_args();
    a.q = q.view(), a.k = paged.k.view(), a.v = paged.v.view(), a.out = out.view(), a.lse = lse.view();
    a.options = p.options;
    a.varlen.seqused_k = p.seqused_k.data();
    a.paged.page_table = paged.page_table.data();
    a.paged.max_pages_per_seq = paged.max_pages;
    a.paged.page_size = paged.page_size;
    a.backend = backend;
    ASSERT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
    EXPECT_EQ(out.values(), contiguous.out);
    EXPECT_EQ(lse.values(), contiguous.lse);
  }
}

TEST_F(ReferenceForward, PagedKvWithPackedQueriesMatchesNaiveFormula) {
  const int64_t B = 3, Sk = 8, Hq = 4, Hkv = 2, D = 8;
  const std::vector<int32_t> cu_q{0, 3, 4, 9}, seqused_k{8, 5, 6};
  flash4_options o = no_mask_options();
  o.causal = 1;
  const auto qv = random_values(rng_, 9 * Hq * D), kv = random_values(rng_, B * Sk * Hkv * D),
             vv = random_values(rng_, B * Sk * Hkv * D);
  PagedKv paged = scatter_into_pages(rng_, kv, vv, B, Sk, Hkv, D, D, FLASH4_F64);
  HostTensor q(FLASH4_F64, {9, Hq, D}), out(FLASH4_F64, {9, Hq, D}), lse(FLASH4_F32, {Hq, 9});
  q.assign(qv), out.poison(), lse.poison();
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view(), a.k = paged.k.view(), a.v = paged.v.view(), a.out = out.view(), a.lse = lse.view();
  a.options = o;
  a.varlen.cu_seqlens_q = cu_q.data();
  a.varlen.seqused_k = seqused_k.data();
  a.varlen.batch = int(B);
  a.paged.page_table = paged.page_table.data();
  a.paged.max_pages_per_seq = paged.max_pages;
  a.paged.page_size = paged.page_size;
  ASSERT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
  const std::vector<int32_t> cu_k{0, int32_t(Sk), int32_t(2 * Sk), int32_t(3 * Sk)};
  const NaiveOutput expected = naive_varlen(qv, kv, vv, cu_q, cu_k, seqused_k, 9, Hq, Hkv, D, D, o);
  EXPECT_TRUE(all_close(out.values(), expected.out, 1e-12, 1e-12));
  EXPECT_TRUE(all_close(lse.values(), expected.lse, 1e-6, 1e-6));
}

// Low precision: the reference computes in float64 from the rounded inputs and rounds
// each output once, so the error against the naive formula on the same rounded inputs is
// at most half an ulp (unit roundoff u: bf16 2^-8, fp16 2^-11; subnormal fp16 2^-25).
class ReferenceForwardLowPrecision : public Flash4Test, public ::testing::WithParamInterface<flash4_dtype> {
 protected:
  double unit_roundoff() const { return GetParam() == FLASH4_BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11); }
  // bf16 vs float64 ~1e-2 relative (spec); fp16 carries 3 more bits.
  double tolerance_vs_float64() const { return GetParam() == FLASH4_BF16 ? 2e-2 : 3e-3; }
};

TEST_P(ReferenceForwardLowPrecision, OutputIsTheFloat64ResultOfTheRoundedInputsRoundedOnce) {
  DenseProblem p;
  p.dtype = GetParam();
  p.Dqk = p.Dv = 16;
  p.options.causal = 1;
  p.options.softmax_scale = 0.25f;
  const DenseInputs in = random_inputs(p, rng_);
  const ForwardResult r = run_forward(p, in);
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  EXPECT_TRUE(r.all_written);
  // The inputs as the library saw them: rounded to the dtype.
  const DenseInputs rounded = rounded_to(p.dtype, in);
  p.dtype = FLASH4_F64;
  const NaiveOutput expected = naive_dense(p, rounded);
  EXPECT_TRUE(all_close(r.out, expected.out, std::ldexp(1.0, -25), unit_roundoff()));
}

TEST_P(ReferenceForwardLowPrecision, OutputIsWithinLowPrecisionToleranceOfFloat64) {
  DenseProblem p;
  p.Dqk = p.Dv = 16;
  p.options.causal = 1;
  p.options.softmax_scale = 0.25f;
  const DenseInputs in = random_inputs(p, rng_);
  const NaiveOutput expected = naive_dense(p, in);
  p.dtype = GetParam();
  const ForwardResult r = run_forward(p, in);
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  EXPECT_TRUE(close_relative_to_max(r.out, expected.out, tolerance_vs_float64()));
  EXPECT_TRUE(close_relative_to_max(r.lse, expected.lse, tolerance_vs_float64()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ReferenceForwardLowPrecision, ::testing::Values(FLASH4_BF16, FLASH4_F16),
                         [](const auto& info) { return info.param == FLASH4_BF16 ? "Bf16" : "F16"; });

TEST_F(ReferenceForward, F32OutputIsWithinFloatRoundingOfFloat64) {
  DenseProblem p;
  p.options.causal = 1;
  const DenseInputs in = random_inputs(p, rng_);
  const NaiveOutput expected = naive_dense(p, in);
  p.dtype = FLASH4_F32;
  const ForwardResult r = run_forward(p, in);
  EXPECT_TRUE(close_relative_to_max(r.out, expected.out, 1e-6));
}

}  // namespace
}  // namespace flash4_test
