// Every CPU layer's backward against central finite differences of its forward, in
// float64. The scalar probed is L = Σ out ⊙ R with R random, so dout = R.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "common/random.hpp"
#include "ops/cpu/ops.hpp"

namespace adept::cpu {
namespace {

using testing_support::make_rng;
using testing_support::random_vector;
using Vec = std::vector<double>;

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of loss() with respect to every element of x, against `analytic`.
void expect_matches_finite_differences(Vec& x, const Vec& analytic, const std::function<double()>& loss,
                                       const char* what) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const double h = 1e-6;
  double worst = 0, scale = 1e-3;
  for (size_t i = 0; i < x.size(); ++i) {
    double saved = x[i];
    x[i] = saved + h;
    double up = loss();
    x[i] = saved - h;
    double down = loss();
    x[i] = saved;
    double numeric = (up - down) / (2 * h);
    worst = std::max(worst, std::abs(numeric - analytic[i]));
    scale = std::max(scale, std::abs(numeric));
  }
  EXPECT_LT(worst / scale, 1e-6) << what << ": max |analytic - numeric| = " << worst;
}

TEST(OpsGradient, RmsnormInputAndWeight) {
  auto rng = make_rng(1);
  const int64_t N = 5, C = 12;
  Vec x = random_vector<double>(rng, N * C), w = random_vector<double>(rng, C), R = random_vector<double>(rng, N * C);
  Vec out(N * C), rstd(N), dx(N * C), dw(C, 0.0);
  auto loss = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
    return dot(out, R);
  };
  loss();
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
  expect_matches_finite_differences(x, dx, loss, "rmsnorm dx");
  expect_matches_finite_differences(w, dw, loss, "rmsnorm dweight");
}

TEST(OpsGradient, LinearInputWeightAndBias) {
  auto rng = make_rng(2);
  const int64_t N = 11, IC = 7, OC = 5;  // N not a multiple of the row block
  Vec x = random_vector<double>(rng, N * IC), w = random_vector<double>(rng, OC * IC);
  Vec b = random_vector<double>(rng, OC), R = random_vector<double>(rng, N * OC);
  Vec out(N * OC), dx(N * IC), dw(OC * IC, 0.0), db(OC, 0.0);
  auto loss = [&] {
    linear_forward(out.data(), x.data(), w.data(), b.data(), N, IC, OC);
    return dot(out, R);
  };
  loss();
  linear_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, IC, OC);
  expect_matches_finite_differences(x, dx, loss, "linear dx");
  expect_matches_finite_differences(w, dw, loss, "linear dweight");
  expect_matches_finite_differences(b, db, loss, "linear dbias");
}

TEST(OpsGradient, LinearAccumulatesIntoWeightGradient) {
  auto rng = make_rng(3);
  const int64_t N = 3, IC = 4, OC = 2;
  Vec x = random_vector<double>(rng, N * IC), w = random_vector<double>(rng, OC * IC), R = random_vector<double>(rng, N * OC);
  Vec once(OC * IC, 0.0), twice(OC * IC, 0.0);
  linear_backward<double>(nullptr, once.data(), nullptr, R.data(), x.data(), w.data(), N, IC, OC);
  linear_backward<double>(nullptr, twice.data(), nullptr, R.data(), x.data(), w.data(), N, IC, OC);
  linear_backward<double>(nullptr, twice.data(), nullptr, R.data(), x.data(), w.data(), N, IC, OC);
  for (int64_t i = 0; i < OC * IC; ++i) EXPECT_NEAR(twice[i], 2 * once[i], 1e-12);
}

TEST(OpsGradient, SwigluGateAndUp) {
  auto rng = make_rng(4);
  const int64_t N = 4, C = 9;
  Vec g = random_vector<double>(rng, N * C, 2.0), u = random_vector<double>(rng, N * C), R = random_vector<double>(rng, N * C);
  Vec out(N * C), dg(N * C), du(N * C);
  auto loss = [&] {
    swiglu_forward(out.data(), g.data(), u.data(), N, C);
    return dot(out, R);
  };
  loss();
  swiglu_backward(dg.data(), du.data(), R.data(), g.data(), u.data(), N, C);
  expect_matches_finite_differences(g, dg, loss, "swiglu dgate");
  expect_matches_finite_differences(u, du, loss, "swiglu dup");
}

TEST(OpsGradient, RopeIsARotationAndItsBackwardIsTheTranspose) {
  auto rng = make_rng(5);
  const int64_t N = 6, H = 3, D = 8;
  RopeSpec spec;
  spec.head_dim = D;
  spec.theta = 500.0;
  RopeTable table = rope_table(spec, 32);
  std::vector<int32_t> pos = {0, 3, 1, 31, 7, 2};
  Vec x = random_vector<double>(rng, N * H * D), R = random_vector<double>(rng, N * H * D);
  Vec dx = R;
  rope_backward(dx.data(), pos.data(), table, N, H, D);
  auto loss = [&] {
    Vec y = x;
    rope_forward(y.data(), pos.data(), table, N, H, D);
    return dot(y, R);
  };
  expect_matches_finite_differences(x, dx, loss, "rope dx");
  Vec y = x;  // a rotation keeps every pair's length
  rope_forward(y.data(), pos.data(), table, N, H, D);
  for (int64_t i = 0; i < N * H; ++i)
    for (int64_t j = 0; j < D / 2; ++j) {
      const double* a = x.data() + i * D;
      const double* b = y.data() + i * D;
      EXPECT_NEAR(a[j] * a[j] + a[j + D / 2] * a[j + D / 2], b[j] * b[j] + b[j + D / 2] * b[j + D / 2], 1e-12);
    }
}

TEST(OpsGradient, RopeMatchesHandComputedAngle) {
  RopeSpec spec;
  spec.head_dim = 4;
  spec.theta = 100.0;
  RopeTable table = rope_table(spec, 4);
  // Frequencies: 100^(0/4) = 1 and 100^(-2/4) = 0.1; position 3 gives angles 3 and 0.3.
  Vec x = {1.0, 2.0, 3.0, 4.0};
  int32_t pos = 3;
  rope_forward(x.data(), &pos, table, 1, 1, 4);
  EXPECT_NEAR(x[0], 1.0 * std::cos(3.0) - 3.0 * std::sin(3.0), 1e-12);
  EXPECT_NEAR(x[1], 2.0 * std::cos(0.3) - 4.0 * std::sin(0.3), 1e-12);
  EXPECT_NEAR(x[2], 3.0 * std::cos(3.0) + 1.0 * std::sin(3.0), 1e-12);
  EXPECT_NEAR(x[3], 4.0 * std::cos(0.3) + 2.0 * std::sin(0.3), 1e-12);
}

TEST(OpsGradient, Llama3RopeScalingKeepsHighAndSlowsLowFrequencies) {
  RopeSpec spec;
  spec.head_dim = 64;
  spec.theta = 500000.0;
  RopeSpec scaled = spec;
  scaled.scaling_type = "llama3";
  scaled.factor = 8.0;
  scaled.low_freq_factor = 1.0;
  scaled.high_freq_factor = 4.0;
  scaled.original_max_position_embeddings = 8192;
  Vec plain = rope_inverse_frequencies(spec), llama3 = rope_inverse_frequencies(scaled);
  EXPECT_DOUBLE_EQ(llama3.front(), plain.front());       // wavelength 2π < 2048: kept
  EXPECT_DOUBLE_EQ(llama3.back(), plain.back() / 8.0);  // wavelength > 8192: divided by factor
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_LE(llama3[i], plain[i]);
    EXPECT_GE(llama3[i], plain[i] / 8.0 - 1e-18);
  }
}

TEST(OpsGradient, EmbeddingScattersIntoUsedRows) {
  auto rng = make_rng(6);
  const int64_t V = 5, C = 3, N = 6;
  std::vector<int32_t> ids = {4, 0, 4, 2, 4, 0};
  Vec wte = random_vector<double>(rng, V * C), R = random_vector<double>(rng, N * C), out(N * C), dw(V * C, 0.0);
  auto loss = [&] {
    embedding_forward(out.data(), ids.data(), wte.data(), N, C);
    return dot(out, R);
  };
  loss();
  embedding_backward(dw.data(), R.data(), ids.data(), N, C);
  expect_matches_finite_differences(wte, dw, loss, "embedding dweight");
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dw[1 * C + c], 0.0);  // row 1 unused
}

TEST(OpsGradient, CrossEntropyLogitsWithIgnoredTargets) {
  auto rng = make_rng(7);
  const int64_t N = 6, V = 7;
  Vec z = random_vector<double>(rng, N * V, 3.0), dz(N * V);
  std::vector<int32_t> t = {1, -100, 6, 0, -100, 3};
  auto loss = [&] { return cross_entropy<double>(nullptr, z.data(), t.data(), N, V, -100, 0.0).loss; };
  CrossEntropyResult r = cross_entropy(dz.data(), z.data(), t.data(), N, V, -100, 1.0 / 4.0);
  EXPECT_EQ(r.count, 4);
  expect_matches_finite_differences(z, dz, loss, "cross-entropy dlogits");
  for (int64_t v = 0; v < V; ++v) EXPECT_EQ(dz[1 * V + v], 0.0);
}

TEST(OpsGradient, CrossEntropyOfUniformLogitsIsLogV) {
  const int64_t V = 10;
  Vec z(V, 0.37);
  int32_t t = 4;
  EXPECT_NEAR((cross_entropy<double>(nullptr, z.data(), &t, 1, V, -100, 0.0).loss), std::log(10.0), 1e-12);
}

}  // namespace
}  // namespace adept::cpu
