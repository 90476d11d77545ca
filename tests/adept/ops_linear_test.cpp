// The CPU linear layer (ops/cpu/linear.cpp: register tiles of 4 rows x 16 columns, weight
// panels of 256 output rows) against naive float64 products, at sizes that end inside a tile
// and inside a panel, in float and double, with poisoned outputs (NaN before the call): out,
// din, an accumulated dweight and dbias; and the same bits whatever the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/random.hpp"
#include "ops/cpu/ops.hpp"

namespace adept::cpu {
namespace {

using testing_support::make_rng;
using testing_support::random_vector;

struct Sizes {
  int64_t N, IC, OC;
};

// Naive float64 products: out = in Wᵀ + b, din = dout W, dW = dW0 + doutᵀ in, db = db0 + Σ dout.
struct Reference {
  std::vector<double> out, din, dw, db;
};
Reference reference(const std::vector<double>& in, const std::vector<double>& w, const std::vector<double>& b,
                    const std::vector<double>& dout, const std::vector<double>& dw0, const std::vector<double>& db0,
                    Sizes s) {
  Reference r{std::vector<double>(s.N * s.OC), std::vector<double>(s.N * s.IC), dw0, db0};
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t o = 0; o < s.OC; ++o) {
      double acc = b[o];
      for (int64_t i = 0; i < s.IC; ++i) acc += in[n * s.IC + i] * w[o * s.IC + i];
      r.out[n * s.OC + o] = acc;
    }
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t i = 0; i < s.IC; ++i) {
      double acc = 0;
      for (int64_t o = 0; o < s.OC; ++o) acc += dout[n * s.OC + o] * w[o * s.IC + i];
      r.din[n * s.IC + i] = acc;
    }
  for (int64_t o = 0; o < s.OC; ++o) {
    for (int64_t i = 0; i < s.IC; ++i)
      for (int64_t n = 0; n < s.N; ++n) r.dw[o * s.IC + i] += dout[n * s.OC + o] * in[n * s.IC + i];
    for (int64_t n = 0; n < s.N; ++n) r.db[o] += dout[n * s.OC + o];
  }
  return r;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// max |got - want| / max |want|; infinity on a non-finite element.
template <typename T>
double relative(const std::vector<T>& got, const std::vector<double>& want) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(double(got[i]))) return INFINITY;
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return worst / scale;
}

template <typename T>
void check(Sizes s, double tolerance, uint64_t salt) {
  SCOPED_TRACE(::testing::Message() << "N " << s.N << " IC " << s.IC << " OC " << s.OC);
  auto rng = make_rng(salt);
  const auto in = random_vector<double>(rng, s.N * s.IC), w = random_vector<double>(rng, s.OC * s.IC);
  const auto b = random_vector<double>(rng, s.OC), dout = random_vector<double>(rng, s.N * s.OC);
  const auto dw0 = random_vector<double>(rng, s.OC * s.IC), db0 = random_vector<double>(rng, s.OC);
  const Reference want = reference(in, w, b, dout, dw0, db0, s);

  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> out(s.N * s.OC, nan), din(s.N * s.IC, nan), dw = cast<T>(dw0), db = cast<T>(db0);
  const std::vector<T> in_t = cast<T>(in), w_t = cast<T>(w), b_t = cast<T>(b), dout_t = cast<T>(dout);
  linear_forward(out.data(), in_t.data(), w_t.data(), b_t.data(), s.N, s.IC, s.OC);
  linear_backward(din.data(), dw.data(), db.data(), dout_t.data(), in_t.data(), w_t.data(), s.N, s.IC, s.OC);
  EXPECT_LT(relative(out, want.out), tolerance) << "out";
  EXPECT_LT(relative(din, want.din), tolerance) << "din";
  EXPECT_LT(relative(dw, want.dw), tolerance) << "dweight (accumulated)";
  EXPECT_LT(relative(db, want.db), tolerance) << "dbias (accumulated)";

  // One thread: the same bits (every element is summed by one thread, in order).
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<T> out1(s.N * s.OC, nan), din1(s.N * s.IC, nan), dw1 = cast<T>(dw0), db1 = cast<T>(db0);
  linear_forward(out1.data(), in_t.data(), w_t.data(), b_t.data(), s.N, s.IC, s.OC);
  linear_backward(din1.data(), dw1.data(), db1.data(), dout_t.data(), in_t.data(), w_t.data(), s.N, s.IC, s.OC);
  omp_set_num_threads(threads);
  EXPECT_EQ(std::memcmp(out.data(), out1.data(), out.size() * sizeof(T)), 0) << "out, 1 thread";
  EXPECT_EQ(std::memcmp(din.data(), din1.data(), din.size() * sizeof(T)), 0) << "din, 1 thread";
  EXPECT_EQ(std::memcmp(dw.data(), dw1.data(), dw.size() * sizeof(T)), 0) << "dweight, 1 thread";
}

// Whole tiles; rows and columns ending inside a tile; output rows crossing the 256-row weight
// panel (300, 517); one token (a decode step).
constexpr Sizes kSizes[] = {{32, 64, 48}, {37, 45, 70}, {5, 96, 300}, {1, 33, 517}, {130, 17, 3}};

TEST(OpsLinear, FloatMatchesFloat64ProductsAtTileAndPanelEdges) {
  uint64_t salt = 20;
  for (Sizes s : kSizes) check<float>(s, 2e-5, salt++);
}

TEST(OpsLinear, DoubleMatchesFloat64ProductsAtTileAndPanelEdges) {
  uint64_t salt = 40;
  for (Sizes s : kSizes) check<double>(s, 1e-12, salt++);
}

}  // namespace
}  // namespace adept::cpu
