// The CPU reference on the decoder's configuration: packed (varlen) sequences, causal,
// GQA, LSE, in float64 and float32, forward against the naive formula and backward
// against central finite differences of the naive formula.
#include "test_util.hpp"

namespace flash4_test {
namespace {

// Three documents packed in one token axis, 4 query heads sharing 2 KV heads.
struct PackedCausalGqa {
  std::vector<int32_t> cu{0, 5, 6, 15};
  int64_t T = 15, Hq = 4, Hkv = 2, D = 8;
  flash4_options options() const {
    flash4_options o{};
    o.causal = 1;
    o.window_left = o.window_right = -1;
    o.softmax_scale = 0.3f;
    return o;
  }
};

flash4::ForwardArgs packed_forward_args(const PackedCausalGqa& p, HostTensor& q, HostTensor& k, HostTensor& v,
                                        HostTensor& out, HostTensor& lse) {
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view();
  a.k = k.view();
  a.v = v.view();
  a.out = out.view();
  a.lse = lse.view();
  a.options = p.options();
  a.varlen.cu_seqlens_q = p.cu.data();
  a.varlen.cu_seqlens_k = p.cu.data();
  a.varlen.batch = int(p.cu.size() - 1);
  a.varlen.max_seqlen_q = a.varlen.max_seqlen_k = 9;
  return a;
}

class ReferenceVarlenCausalGqa : public Flash4Test {};

void check_forward_against_naive(std::mt19937_64& rng, flash4_dtype dtype, double tolerance) {
  PackedCausalGqa p;
  HostTensor q(dtype, {p.T, p.Hq, p.D}), k(dtype, {p.T, p.Hkv, p.D}), v(dtype, {p.T, p.Hkv, p.D});
  HostTensor out(dtype, {p.T, p.Hq, p.D}), lse(FLASH4_F32, {p.Hq, p.T});
  q.assign(random_values(rng, q.numel()));
  k.assign(random_values(rng, k.numel()));
  v.assign(random_values(rng, v.numel()));
  out.poison();
  lse.poison();

  flash4::ForwardArgs a = packed_forward_args(p, q, k, v, out, lse);
  a.backend = FLASH4_BACKEND_REFERENCE;  // AUTO runs f32 on the float32 CPU kernels
  flash4::forward(a);
  EXPECT_STREQ(flash4_last_backend(), "reference");

  const NaiveOutput expected =
      naive_varlen(q.values(), k.values(), v.values(), p.cu, p.cu, {}, p.T, p.Hq, p.Hkv, p.D, p.D, p.options());
  EXPECT_TRUE(out.all_finite());
  EXPECT_TRUE(lse.all_finite());
  EXPECT_TRUE(all_close(out.values(), expected.out, tolerance, tolerance));
  // lse is returned in fp32: one rounding of a value of magnitude ~1.
  EXPECT_TRUE(all_close(lse.values(), expected.lse, 1e-6, 1e-6));
}

TEST_F(ReferenceVarlenCausalGqa, ForwardF64MatchesNaiveFormula) { check_forward_against_naive(rng_, FLASH4_F64, 1e-12); }

TEST_F(ReferenceVarlenCausalGqa, ForwardF32MatchesNaiveFormula) {
  // fp32 output: one rounding (2^-24 relative) of a float64 result.
  check_forward_against_naive(rng_, FLASH4_F32, 1e-6);
}

// Loss = sum(out * G) for a fixed random G; the backward with dout = G must give its
// gradients, which we take by central differences of the naive formula in float64.
TEST_F(ReferenceVarlenCausalGqa, BackwardF64MatchesFiniteDifferences) {
  PackedCausalGqa p;
  const auto qv = random_values(rng_, p.T * p.Hq * p.D), kv = random_values(rng_, p.T * p.Hkv * p.D),
             vv = random_values(rng_, p.T * p.Hkv * p.D), g = random_values(rng_, p.T * p.Hq * p.D);
  HostTensor q(FLASH4_F64, {p.T, p.Hq, p.D}), k(FLASH4_F64, {p.T, p.Hkv, p.D}), v(FLASH4_F64, {p.T, p.Hkv, p.D});
  HostTensor out(FLASH4_F64, {p.T, p.Hq, p.D}), lse(FLASH4_F32, {p.Hq, p.T}), dout(FLASH4_F64, {p.T, p.Hq, p.D});
  HostTensor dq(FLASH4_F64, {p.T, p.Hq, p.D}), dk(FLASH4_F64, {p.T, p.Hkv, p.D}), dv(FLASH4_F64, {p.T, p.Hkv, p.D});
  q.assign(qv);
  k.assign(kv);
  v.assign(vv);
  dout.assign(g);
  flash4::forward(packed_forward_args(p, q, k, v, out, lse));

  dq.poison();
  dk.poison();
  dv.poison();
  flash4::BackwardArgs b = flash4::backward_args();
  b.q = q.view();
  b.k = k.view();
  b.v = v.view();
  b.out = out.view();
  b.dout = dout.view();
  b.lse = lse.view();
  b.dq = dq.view();
  b.dk = dk.view();
  b.dv = dv.view();
  b.options = p.options();
  b.varlen.cu_seqlens_q = b.varlen.cu_seqlens_k = p.cu.data();
  b.varlen.batch = int(p.cu.size() - 1);
  b.deterministic = 1;
  flash4::backward(b);
  ASSERT_TRUE(dq.all_finite() && dk.all_finite() && dv.all_finite());

  auto loss = [&](const std::vector<double>& q_, const std::vector<double>& k_, const std::vector<double>& v_) {
    return dot(naive_varlen(q_, k_, v_, p.cu, p.cu, {}, p.T, p.Hq, p.Hkv, p.D, p.D, p.options()).out, g);
  };
  const auto fd_q = finite_difference_gradient(qv, [&](const auto& x) { return loss(x, kv, vv); });
  const auto fd_k = finite_difference_gradient(kv, [&](const auto& x) { return loss(qv, x, vv); });
  const auto fd_v = finite_difference_gradient(vv, [&](const auto& x) { return loss(qv, kv, x); });
  EXPECT_TRUE(all_close(dq.values(), fd_q, 1e-7, 1e-6));
  EXPECT_TRUE(all_close(dk.values(), fd_k, 1e-7, 1e-6));
  EXPECT_TRUE(all_close(dv.values(), fd_v, 1e-7, 1e-6));
}

TEST_F(ReferenceVarlenCausalGqa, BackwardOverwritesGradientsRatherThanAccumulating) {
  PackedCausalGqa p;
  HostTensor q(FLASH4_F32, {p.T, p.Hq, p.D}), k(FLASH4_F32, {p.T, p.Hkv, p.D}), v(FLASH4_F32, {p.T, p.Hkv, p.D});
  HostTensor out(FLASH4_F32, {p.T, p.Hq, p.D}), lse(FLASH4_F32, {p.Hq, p.T}), dout(FLASH4_F32, {p.T, p.Hq, p.D});
  q.assign(random_values(rng_, q.numel()));
  k.assign(random_values(rng_, k.numel()));
  v.assign(random_values(rng_, v.numel()));
  dout.assign(random_values(rng_, dout.numel()));
  flash4::forward(packed_forward_args(p, q, k, v, out, lse));

  auto run_backward = [&](HostTensor& dq, HostTensor& dk, HostTensor& dv) {
    flash4::BackwardArgs b = flash4::backward_args();
    b.q = q.view(), b.k = k.view(), b.v = v.view(), b.out = out.view(), b.dout = dout.view(), b.lse = lse.view();
    b.dq = dq.view(), b.dk = dk.view(), b.dv = dv.view();
    b.options = p.options();
    b.varlen.cu_seqlens_q = b.varlen.cu_seqlens_k = p.cu.data();
    b.varlen.batch = int(p.cu.size() - 1);
    flash4::backward(b);
  };
  HostTensor dq1(FLASH4_F32, {p.T, p.Hq, p.D}), dk1(FLASH4_F32, {p.T, p.Hkv, p.D}), dv1(FLASH4_F32, {p.T, p.Hkv, p.D});
  HostTensor dq2(FLASH4_F32, {p.T, p.Hq, p.D}), dk2(FLASH4_F32, {p.T, p.Hkv, p.D}), dv2(FLASH4_F32, {p.T, p.Hkv, p.D});
  run_backward(dq1, dk1, dv1);
  dq2.assign(std::vector<double>(dq2.numel(), 7.0));
  dk2.assign(std::vector<double>(dk2.numel(), 7.0));
  dv2.assign(std::vector<double>(dv2.numel(), 7.0));
  run_backward(dq2, dk2, dv2);
  EXPECT_EQ(dq1.values(), dq2.values());
  EXPECT_EQ(dk1.values(), dk2.values());
  EXPECT_EQ(dv1.values(), dv2.values());
}

TEST_F(ReferenceVarlenCausalGqa, KvHeadsThatDoNotDivideQueryHeadsAreRejectedWithBothCounts) {
  const std::vector<int32_t> cu{0, 4};
  HostTensor q(FLASH4_F32, {4, 8, 16}), k(FLASH4_F32, {4, 3, 16}), v(FLASH4_F32, {4, 3, 16});
  HostTensor out(FLASH4_F32, {4, 8, 16});
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
  a.varlen.cu_seqlens_q = a.varlen.cu_seqlens_k = cu.data();
  a.varlen.batch = 1;
  EXPECT_EQ(flash4_forward(&a), FLASH4_INVALID_ARGUMENT);
  EXPECT_STREQ(flash4_last_error(), "flash4_forward: k.shape[1] (Hkv=3) must divide q.shape[1] (Hq=8)");
}

}  // namespace
}  // namespace flash4_test
