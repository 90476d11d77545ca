// Split-KV's merge (hopper/split_merge.hpp, which split_combine.cu runs on the GPU) against a
// float64 softmax over all of a row's keys at once: random scores and values, the keys cut
// into runs at random points (empty runs included), each run reduced to its normalised output
// and natural-log LSE in float32 as the split kernel writes them, then merged.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "hopper/split_merge.hpp"
#include "test_util.hpp"

namespace flash4_test {
namespace {

using flash4::hopper::split_lse;
using flash4::hopper::split_merge;
using flash4::hopper::split_weight;
using flash4::hopper::SplitMerge;

constexpr int kDim = 8;
constexpr float kNoSink = -std::numeric_limits<float>::infinity();

struct Merged {
  std::vector<double> out;
  double lse;
};

// The float64 reference: softmax over the keys (and the sink, which has no value).
Merged reference(const std::vector<double>& score, const std::vector<std::vector<double>>& value, double sink) {
  double top = sink;
  for (double x : score) top = std::max(top, x);
  Merged m{std::vector<double>(kDim, 0.0), -std::numeric_limits<double>::infinity()};
  if (top == -std::numeric_limits<double>::infinity()) return m;
  double sum = std::exp(sink - top);
  for (double x : score) sum += std::exp(x - top);
  for (size_t j = 0; j < score.size(); ++j)
    for (int c = 0; c < kDim; ++c) m.out[c] += std::exp(score[j] - top) / sum * value[j][c];
  m.lse = top + std::log(sum);
  return m;
}

// The runs [cut[s], cut[s + 1]) as the split kernel leaves them (float32), then the merge.
Merged split_and_merge(const std::vector<double>& score, const std::vector<std::vector<double>>& value,
                       const std::vector<int>& cut, float sink) {
  const int splits = int(cut.size()) - 1;
  std::vector<float> lse(splits), out(size_t(splits) * kDim, 0.0f);
  for (int s = 0; s < splits; ++s) {
    double top = -std::numeric_limits<double>::infinity();
    for (int j = cut[s]; j < cut[s + 1]; ++j) top = std::max(top, score[j]);
    if (cut[s] == cut[s + 1]) {
      lse[s] = -std::numeric_limits<float>::infinity();  // a run without keys
      continue;
    }
    double sum = 0;
    for (int j = cut[s]; j < cut[s + 1]; ++j) sum += std::exp(score[j] - top);
    for (int j = cut[s]; j < cut[s + 1]; ++j)
      for (int c = 0; c < kDim; ++c) out[s * kDim + c] += float(std::exp(score[j] - top) / sum * value[j][c]);
    lse[s] = float(top + std::log(sum));
  }
  const SplitMerge m = split_merge(lse.data(), 1, splits, sink);
  Merged r{std::vector<double>(kDim, 0.0), split_lse(m)};
  for (int s = 0; s < splits; ++s)
    for (int c = 0; c < kDim; ++c) r.out[c] += double(split_weight(m, lse[s])) * out[s * kDim + c];
  return r;
}

class SplitMergeTest : public Flash4Test {};

TEST_F(SplitMergeTest, MergedRunsEqualTheSoftmaxOverAllKeys) {
  for (int trial = 0; trial < 200; ++trial) {
    const int keys = uniform_int(1, 300), splits = uniform_int(1, 17);
    const double spread = trial % 4 == 0 ? 60.0 : 4.0;  // large logits: the merge must not overflow
    std::vector<double> score(keys);
    std::vector<std::vector<double>> value(keys, std::vector<double>(kDim));
    for (int j = 0; j < keys; ++j) {
      score[j] = uniform(-spread, spread);
      for (double& x : value[j]) x = uniform();
    }
    std::vector<int> cut = {0, keys};
    for (int s = 1; s < splits; ++s) cut.push_back(uniform_int(0, keys));  // repeats: empty runs
    std::sort(cut.begin(), cut.end());
    const bool with_sink = trial % 3 == 0;
    const float sink = with_sink ? float(uniform(-spread, spread)) : kNoSink;
    const Merged want = reference(score, value, with_sink ? double(sink) : -std::numeric_limits<double>::infinity());
    const Merged got = split_and_merge(score, value, cut, sink);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": " << keys << " keys, " << cut.size() - 1
                                      << " runs, sink " << (with_sink ? "yes" : "no"));
    ASSERT_NEAR(got.lse, want.lse, 2e-5 * std::max(1.0, std::fabs(want.lse)));
    for (int c = 0; c < kDim; ++c) ASSERT_NEAR(got.out[c], want.out[c], 2e-6);
  }
}

TEST_F(SplitMergeTest, NoKeyInAnyRunGivesZeroAndTheSinkOrMinusInfinity) {
  const float lse[3] = {kNoSink, kNoSink, kNoSink};
  const SplitMerge none = split_merge(lse, 1, 3, kNoSink);
  EXPECT_EQ(split_lse(none), -std::numeric_limits<float>::infinity());
  for (float l : lse) EXPECT_EQ(split_weight(none, l), 0.0f);
  const float sink = float(uniform(-3.0, 3.0));
  const SplitMerge sunk = split_merge(lse, 1, 3, sink);
  EXPECT_FLOAT_EQ(split_lse(sunk), sink);
  for (float l : lse) EXPECT_EQ(split_weight(sunk, l), 0.0f);
}

TEST_F(SplitMergeTest, StridedLsesAreReadAtTheirStride) {
  // The kernel's layout: run s of a row at lse[s * rows + row].
  const float lse[6] = {0.5f, 99.0f, -1.0f, 99.0f, 2.0f, 99.0f};
  const SplitMerge m = split_merge(lse, 2, 3, kNoSink);
  const double want = std::log(std::exp(0.5) + std::exp(-1.0) + std::exp(2.0));
  EXPECT_NEAR(split_lse(m), want, 1e-6);
}

}  // namespace
}  // namespace flash4_test
