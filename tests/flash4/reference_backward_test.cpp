// The CPU reference backward, feature by feature, against central finite differences of
// the naive formula in float64 (loss = sum(out * G) for a random G, so dout = G), and
// layouts and precisions against each other.
#include "packed_problem.hpp"

namespace flash4_test {
namespace {

class ReferenceBackward : public Flash4Test {
 protected:
  // Central differences with step 1e-5 in float64 are accurate to ~1e-10 here (step^2
  // truncation, eps/step cancellation); the tolerance leaves two orders of margin.
  static constexpr double kAtol = 1e-8, kRtol = 1e-6;

  BackwardResult expect_matches_finite_differences(const DenseProblem& p) {
    const DenseInputs in = random_inputs(p, rng_);
    const std::vector<double> g = random_values(rng_, p.out_numel());
    const BackwardResult r = run_backward(p, in, g);
    EXPECT_EQ(r.status, FLASH4_OK) << r.error;
    EXPECT_TRUE(r.all_written);
    const NaiveGradients expected = finite_difference_gradients(p, in, g);
    EXPECT_TRUE(all_close(r.dq, expected.dq, kAtol, kRtol)) << "dq";
    EXPECT_TRUE(all_close(r.dk, expected.dk, kAtol, kRtol)) << "dk";
    EXPECT_TRUE(all_close(r.dv, expected.dv, kAtol, kRtol)) << "dv";
    // dsink is returned in fp32.
    if (!p.sink.empty()) EXPECT_TRUE(all_close(r.dsink, expected.dsink, 1e-6, 1e-6)) << "dsink";
    return r;
  }
};

TEST_F(ReferenceBackward, UnmaskedGqaWithMoreKeysThanQueriesMatchesFiniteDifferences) {
  DenseProblem p;
  p.Sq = 4, p.Sk = 7;
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, CausalBottomRightAlignedMatchesFiniteDifferences) {
  DenseProblem p;
  p.Sq = 4, p.Sk = 7;
  p.options.causal = 1;
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, SlidingWindowBothSidesMatchesFiniteDifferences) {
  DenseProblem p;
  p.Sq = 6, p.Sk = 8;
  p.options.window_left = 2, p.options.window_right = 1;
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, CausalSlidingWindowMatchesFiniteDifferences) {
  DenseProblem p;
  p.Sq = p.Sk = 7;
  p.options.causal = 1, p.options.window_left = 2;
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, SoftcapMatchesFiniteDifferences) {
  DenseProblem p;
  p.options.softmax_scale = 2.0f;
  p.options.softcap = 1.5f;
  p.options.causal = 1;
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, SinkGradientsAndDsinkMatchFiniteDifferences) {
  DenseProblem p;
  p.options.causal = 1;
  p.Sq = 6, p.Sk = 4;  // rows 0 and 1 see only the sink
  p.sink = random_sink(rng_, p.Hq);
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, SoftcapSinkAndWindowTogetherMatchFiniteDifferences) {
  DenseProblem p;
  p.Sq = 5, p.Sk = 8, p.Dqk = 6, p.Dv = 4;
  p.options.softmax_scale = 1.5f, p.options.softcap = 2.0f;
  p.options.causal = 1, p.options.window_left = 3;
  p.seqused_k = {8, 6};
  p.sink = random_sink(rng_, p.Hq);
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, SequsedKMatchesFiniteDifferencesAndGivesUnusedKeysZeroGradients) {
  DenseProblem p;
  p.B = 3, p.Sq = 3, p.Sk = 6;
  p.seqused_k = {6, 2, 0};
  p.options.causal = 1;
  const BackwardResult r = expect_matches_finite_differences(p);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t j = p.seqused_k[b]; j < p.Sk; ++j)
      for (int64_t h = 0; h < p.Hkv; ++h)
        for (int64_t d = 0; d < p.Dqk; ++d) {
          EXPECT_EQ(r.dk[((b * p.Sk + j) * p.Hkv + h) * p.Dqk + d], 0.0);
          EXPECT_EQ(r.dv[((b * p.Sk + j) * p.Hkv + h) * p.Dv + d], 0.0);
        }
}

TEST_F(ReferenceBackward, ValueHeadDimDifferentFromQueryKeyHeadDimMatchesFiniteDifferences) {
  DenseProblem p;
  p.Dqk = 6, p.Dv = 11;
  p.options.causal = 1;
  expect_matches_finite_differences(p);
}

TEST_F(ReferenceBackward, RowsWithNoVisibleKeyGetZeroGradientsAndNoNaN) {
  DenseProblem p;
  p.Sq = 6, p.Sk = 2;  // causal: rows 0..3 see nothing
  p.options.causal = 1;
  const BackwardResult r = expect_matches_finite_differences(p);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t h = 0; h < p.Hq; ++h)
        for (int64_t d = 0; d < p.Dqk; ++d) EXPECT_EQ(r.dq[((b * p.Sq + i) * p.Hq + h) * p.Dqk + d], 0.0);
}

TEST_F(ReferenceBackward, BhsdStridesGiveBitIdenticalGradientsToBshd) {
  DenseProblem p;
  p.options.causal = 1;
  p.sink = random_sink(rng_, p.Hq);
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.out_numel());
  const BackwardResult bshd = run_backward(p, in, g);
  p.bhsd = true;
  const BackwardResult bhsd = run_backward(p, in, g);
  ASSERT_EQ(bhsd.status, FLASH4_OK) << bhsd.error;
  EXPECT_TRUE(bhsd.all_written);
  EXPECT_EQ(bshd.dq, bhsd.dq);
  EXPECT_EQ(bshd.dk, bhsd.dk);
  EXPECT_EQ(bshd.dv, bhsd.dv);
  EXPECT_EQ(bshd.dsink, bhsd.dsink);
}

// GQA dK/dV are the sums, over the query heads sharing a KV head, of what those heads
// would get with their own copy of K and V (plain multi-head attention).
TEST_F(ReferenceBackward, GqaKvGradientsAreSumsOverTheQueryHeadsSharingAKvHead) {
  DenseProblem gqa;
  gqa.Hq = 6, gqa.Hkv = 2;
  gqa.options.causal = 1;
  const int64_t group = gqa.Hq / gqa.Hkv;
  const DenseInputs in = random_inputs(gqa, rng_);
  const std::vector<double> g = random_values(rng_, gqa.out_numel());

  DenseProblem mha = gqa;
  mha.Hkv = gqa.Hq;
  DenseInputs replicated{in.q, std::vector<double>(mha.k_numel()), std::vector<double>(mha.v_numel())};
  for (int64_t bj = 0; bj < gqa.B * gqa.Sk; ++bj)
    for (int64_t h = 0; h < gqa.Hq; ++h) {
      for (int64_t d = 0; d < gqa.Dqk; ++d)
        replicated.k[(bj * gqa.Hq + h) * gqa.Dqk + d] = in.k[(bj * gqa.Hkv + h / group) * gqa.Dqk + d];
      for (int64_t d = 0; d < gqa.Dv; ++d)
        replicated.v[(bj * gqa.Hq + h) * gqa.Dv + d] = in.v[(bj * gqa.Hkv + h / group) * gqa.Dv + d];
    }
  const BackwardResult shared = run_backward(gqa, in, g);
  const BackwardResult separate = run_backward(mha, replicated, g);
  std::vector<double> summed_dk(gqa.k_numel(), 0.0), summed_dv(gqa.v_numel(), 0.0);
  for (int64_t bj = 0; bj < gqa.B * gqa.Sk; ++bj)
    for (int64_t h = 0; h < gqa.Hq; ++h) {
      for (int64_t d = 0; d < gqa.Dqk; ++d)
        summed_dk[(bj * gqa.Hkv + h / group) * gqa.Dqk + d] += separate.dk[(bj * gqa.Hq + h) * gqa.Dqk + d];
      for (int64_t d = 0; d < gqa.Dv; ++d)
        summed_dv[(bj * gqa.Hkv + h / group) * gqa.Dv + d] += separate.dv[(bj * gqa.Hq + h) * gqa.Dv + d];
    }
  EXPECT_EQ(shared.dq, separate.dq);
  EXPECT_TRUE(all_close(shared.dk, summed_dk, 1e-13, 1e-13));
  EXPECT_TRUE(all_close(shared.dv, summed_dv, 1e-13, 1e-13));
}

TEST_F(ReferenceBackward, DeterministicRunsAreBitIdentical) {
  DenseProblem p;
  p.B = 3, p.Sq = p.Sk = 16, p.Hq = 8, p.Hkv = 2;
  p.options.causal = 1;
  p.sink = random_sink(rng_, p.Hq);
  p.dtype = FLASH4_F32;
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.out_numel());
  const BackwardResult first = run_backward(p, in, g, /*deterministic=*/1);
  for (int run = 0; run < 3; ++run) {
    const BackwardResult again = run_backward(p, in, g, /*deterministic=*/1);
    EXPECT_EQ(first.dq, again.dq);
    EXPECT_EQ(first.dk, again.dk);
    EXPECT_EQ(first.dv, again.dv);
    EXPECT_EQ(first.dsink, again.dsink);
  }
}

TEST_F(ReferenceBackward, DsinkMayBeOmittedWithoutChangingTheOtherGradients) {
  DenseProblem p;
  p.options.causal = 1;
  p.sink = random_sink(rng_, p.Hq);
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.out_numel());
  const BackwardResult with_dsink = run_backward(p, in, g);

  DenseTensor q(p.dtype, p.B, p.Sq, p.Hq, p.Dqk, false), k(p.dtype, p.B, p.Sk, p.Hkv, p.Dqk, false);
  DenseTensor v(p.dtype, p.B, p.Sk, p.Hkv, p.Dv, false), out(p.dtype, p.B, p.Sq, p.Hq, p.Dv, false);
  DenseTensor dout(p.dtype, p.B, p.Sq, p.Hq, p.Dv, false), dq(p.dtype, p.B, p.Sq, p.Hq, p.Dqk, false);
  DenseTensor dk(p.dtype, p.B, p.Sk, p.Hkv, p.Dqk, false), dv(p.dtype, p.B, p.Sk, p.Hkv, p.Dv, false);
  HostTensor lse(FLASH4_F32, {p.B, p.Hq, p.Sq});
  q.assign(in.q), k.assign(in.k), v.assign(in.v), dout.assign(g);
  const std::vector<float> sink(p.sink.begin(), p.sink.end());
  flash4::ForwardArgs f = flash4::forward_args();
  f.q = q.view(), f.k = k.view(), f.v = v.view(), f.out = out.view(), f.lse = lse.view();
  f.options = p.options, f.options.sink = sink.data();
  flash4::forward(f);
  flash4::BackwardArgs b = flash4::backward_args();
  b.q = q.view(), b.k = k.view(), b.v = v.view(), b.out = out.view(), b.dout = dout.view(), b.lse = lse.view();
  b.dq = dq.view(), b.dk = dk.view(), b.dv = dv.view();
  b.options = f.options;  // sink set, dsink NULL
  ASSERT_EQ(flash4_backward(&b), FLASH4_OK) << flash4_last_error();
  EXPECT_EQ(dq.values(), with_dsink.dq);
  EXPECT_EQ(dk.values(), with_dsink.dk);
  EXPECT_EQ(dv.values(), with_dsink.dv);
}

// Packs sequences of uneven (Sq, Sk) with seqused_k and compares each with a dense call.
TEST_F(ReferenceBackward, VarlenEqualsPerSequenceDense) {
  PackedProblem p = PackedProblem::of_lengths({{3, 5}, {4, 2}, {6, 6}});
  p.seqused_k = {4, 2, 6};
  p.Tq += 2, p.Tk += 3;  // padding tokens no sequence covers: zero gradients
  p.options.causal = 1;
  p.sink = random_sink(rng_, p.Hq);
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.Tq * p.Hq * p.Dv);
  const BackwardResult packed = run_packed_backward(p, in, g);
  ASSERT_EQ(packed.status, FLASH4_OK) << packed.error;
  EXPECT_TRUE(packed.all_written);
  std::vector<double> dsink_sum(p.Hq, 0.0);
  for (int b = 0; b < p.batch(); ++b) {
    DenseProblem d;
    d.B = 1, d.Sq = p.cu_q[b + 1] - p.cu_q[b], d.Sk = p.cu_k[b + 1] - p.cu_k[b];
    d.Hq = p.Hq, d.Hkv = p.Hkv, d.Dqk = p.Dqk, d.Dv = p.Dv, d.options = p.options, d.sink = p.sink;
    d.seqused_k = {p.seqused_k[b]};
    auto slice = [](const std::vector<double>& x, int64_t begin, int64_t end, int64_t width) {
      return std::vector<double>(x.begin() + begin * width, x.begin() + end * width);
    };
    const DenseInputs part{slice(in.q, p.cu_q[b], p.cu_q[b + 1], p.Hq * p.Dqk),
                           slice(in.k, p.cu_k[b], p.cu_k[b + 1], p.Hkv * p.Dqk),
                           slice(in.v, p.cu_k[b], p.cu_k[b + 1], p.Hkv * p.Dv)};
    const BackwardResult dense = run_backward(d, part, slice(g, p.cu_q[b], p.cu_q[b + 1], p.Hq * p.Dv));
    EXPECT_EQ(slice(packed.dq, p.cu_q[b], p.cu_q[b + 1], p.Hq * p.Dqk), dense.dq) << "sequence " << b;
    EXPECT_EQ(slice(packed.dk, p.cu_k[b], p.cu_k[b + 1], p.Hkv * p.Dqk), dense.dk) << "sequence " << b;
    EXPECT_EQ(slice(packed.dv, p.cu_k[b], p.cu_k[b + 1], p.Hkv * p.Dv), dense.dv) << "sequence " << b;
    for (int64_t h = 0; h < p.Hq; ++h) dsink_sum[h] += dense.dsink[h];
  }
  // dsink sums over every row of every sequence.
  EXPECT_TRUE(all_close(packed.dsink, dsink_sum, 1e-6, 1e-6));
  // Padding tokens.
  for (int64_t i = p.cu_q.back() * p.Hq * p.Dqk; i < p.Tq * p.Hq * p.Dqk; ++i) EXPECT_EQ(packed.dq[i], 0.0);
  for (int64_t i = p.cu_k.back() * p.Hkv * p.Dqk; i < p.Tk * p.Hkv * p.Dqk; ++i) EXPECT_EQ(packed.dk[i], 0.0);
}

TEST_F(ReferenceBackward, F32GradientsAreWithinFloatRoundingOfFloat64) {
  DenseProblem p;
  p.options.causal = 1;
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.out_numel());
  const BackwardResult exact = run_backward(p, in, g);
  p.dtype = FLASH4_F32;
  const BackwardResult r = run_backward(p, in, g);
  EXPECT_TRUE(close_relative_to_max(r.dq, exact.dq, 1e-6));
  EXPECT_TRUE(close_relative_to_max(r.dk, exact.dk, 1e-6));
  EXPECT_TRUE(close_relative_to_max(r.dv, exact.dv, 1e-6));
}

class ReferenceBackwardLowPrecision : public Flash4Test, public ::testing::WithParamInterface<flash4_dtype> {};

TEST_P(ReferenceBackwardLowPrecision, GradientsAreWithinLowPrecisionToleranceOfFloat64) {
  DenseProblem p;
  p.Dqk = p.Dv = 16, p.Sq = p.Sk = 12;
  p.options.causal = 1;
  p.options.softmax_scale = 0.25f;
  const DenseInputs in = random_inputs(p, rng_);
  const std::vector<double> g = random_values(rng_, p.out_numel());
  const BackwardResult exact = run_backward(p, in, g);
  p.dtype = GetParam();
  const BackwardResult r = run_backward(p, in, g);
  ASSERT_EQ(r.status, FLASH4_OK) << r.error;
  EXPECT_TRUE(r.all_written);
  const double tolerance = GetParam() == FLASH4_BF16 ? 2e-2 : 3e-3;  // bf16 ~1e-2 (spec); fp16 3 bits more
  EXPECT_TRUE(close_relative_to_max(r.dq, exact.dq, tolerance));
  EXPECT_TRUE(close_relative_to_max(r.dk, exact.dk, tolerance));
  EXPECT_TRUE(close_relative_to_max(r.dv, exact.dv, tolerance));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ReferenceBackwardLowPrecision, ::testing::Values(FLASH4_BF16, FLASH4_F16),
                         [](const auto& info) { return info.param == FLASH4_BF16 ? "Bf16" : "F16"; });

}  // namespace
}  // namespace flash4_test
