// The CUDA cross-entropy (ops/cuda/cross_entropy.cu) against the CPU reference
// (ops/cpu/cross_entropy.cpp) on bf16 logits, as the decoder's head GEMM writes them: the
// reference gets the same bf16 values as float and computes in double, so the loss is
// held to fp32 accuracy (1e-5 relative) and each gradient element to its bf16 rounding.
// Vocabulary sizes cover the kernel's 16-byte vector path (V % 8 == 0, Llama-3's 128256)
// and its scalar head and tail (odd V: every row starts at a different offset mod 8).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gpu/train_test_util.hpp"
#include "ops/cpu/ops.hpp"
#include "ops/cuda/ops.hpp"

namespace adept {
namespace {

using testing_support::make_rng;
using namespace train_test;

constexpr int32_t kIgnore = -100;

struct Problem {
  int64_t N, V;
  std::vector<float> logits;  // bf16-representable
  std::vector<int32_t> targets;
  double scale = 0.0;
};

// Logits ~ Normal(0, 3) rounded to bf16; some rows ignored, and targets on the row's first
// and last elements (the scalar head and tail when V is odd).
Problem make_problem(std::mt19937_64& rng, int64_t N, int64_t V) {
  Problem p{N, V, random_bf16_values(rng, size_t(N * V), 3.0), std::vector<int32_t>(N)};
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V) - 1);
  for (int32_t& t : p.targets) t = pick(rng);
  if (N > 1) p.targets[1] = 0;
  if (N > 2) p.targets[2] = int32_t(V - 1);
  for (int64_t n = 3; n < N; n += 4) p.targets[n] = kIgnore;
  int64_t count = 0;
  for (int32_t t : p.targets) count += t != kIgnore;
  p.scale = 1.0 / double(std::max<int64_t>(count, 1));
  return p;
}

// Loss per row and dlogits from the reference, one row at a time.
void reference(const Problem& p, std::vector<double>& loss, std::vector<float>& dlogits) {
  loss.assign(p.N, 0.0);
  dlogits.assign(p.N * p.V, 0.0f);
  for (int64_t n = 0; n < p.N; ++n)
    loss[n] = cpu::cross_entropy(dlogits.data() + n * p.V, p.logits.data() + n * p.V, &p.targets[n], 1, p.V,
                                 kIgnore, p.scale)
                  .loss_sum;
}

void expect_matches_reference(const Problem& p, const std::vector<float>& got_loss, const std::vector<float>& got_d) {
  std::vector<double> want_loss;
  std::vector<float> want_d;
  reference(p, want_loss, want_d);
  for (int64_t n = 0; n < p.N; ++n) {
    if (p.targets[n] == kIgnore) {
      EXPECT_EQ(got_loss[n], 0.0f) << "ignored row " << n;
      for (int64_t v = 0; v < p.V; ++v)
        ASSERT_EQ(got_d[n * p.V + v], 0.0f) << "ignored row " << n << " has zero gradient, v = " << v;
      continue;
    }
    // fp32 max, sum of exponentials and log: a few ulps of the row's log-sum-exp.
    EXPECT_NEAR(got_loss[n], want_loss[n], 1e-5 * std::max(1.0, std::abs(want_loss[n]))) << "row " << n;
  }
  // Each element is its fp32 value rounded to bf16 (unit roundoff 2⁻⁸ = 3.9e-3, reached
  // near the bottom of a binade), with fp32 slack on top; the absolute floor covers the
  // target's softmax − 1 computed in fp32.
  int64_t bad = 0;
  for (int64_t i = 0; i < p.N * p.V; ++i) {
    const double got = got_d[i], want = want_d[i];
    if (!(std::abs(got - want) <= 5e-3 * std::abs(want) + 1e-6 * p.scale)) {
      if (bad++ < 5)
        ADD_FAILURE() << "dlogits[" << i / p.V << "][" << i % p.V << "] = " << got << ", want " << want
                      << " (V = " << p.V << ")";
    }
  }
  EXPECT_EQ(bad, 0) << "dlogits elements off by more than bf16 rounding";
}

// Out of place (dlogits poisoned with NaN beforehand), as every caller could.
void check_out_of_place(int64_t N, int64_t V, uint64_t salt) {
  auto rng = make_rng(salt);
  Problem p = make_problem(rng, N, V);
  DeviceBuffer<bf16> d_logits(to_bf16(p.logits)), d_dlogits(N * V);
  DeviceBuffer<float> d_loss(N), d_scale(std::vector<float>{float(p.scale)});
  DeviceBuffer<int32_t> d_targets(p.targets);
  cuda::cross_entropy_forward_backward(d_dlogits, d_loss, d_logits, d_targets, N, V, kIgnore, d_scale, nullptr);
  TRAIN_CUDA_OK(cudaDeviceSynchronize());
  expect_matches_reference(p, d_loss.download(), to_float(d_dlogits.download()));
}

TEST(TrainCrossEntropyCpuVsCuda, VocabularyOfLlama3TakesTheVectorPath) {
  REQUIRE_GPU();
  check_out_of_place(6, 128256, 21);
}

TEST(TrainCrossEntropyCpuVsCuda, VocabularyNotAMultipleOf8UsesScalarHeadAndTail) {
  REQUIRE_GPU();
  check_out_of_place(9, 50257, 22);  // GPT-2's vocabulary: rows start at every offset mod 8
  check_out_of_place(11, 1003, 23);
}

TEST(TrainCrossEntropyCpuVsCuda, VocabularySmallerThanAVector) {
  REQUIRE_GPU();
  for (int64_t V : {1, 5, 7, 8, 9, 17}) check_out_of_place(7, V, 24 + uint64_t(V));
}

// The decoder overwrites the logits with their gradient; that must give the bits of the
// out-of-place call (and the evaluation call, dlogits = nullptr, the same loss).
void check_in_place_is_out_of_place(int64_t N, int64_t V, uint64_t salt) {
  auto rng = make_rng(salt);
  Problem p = make_problem(rng, N, V);
  const std::vector<bf16> logits = to_bf16(p.logits);
  DeviceBuffer<bf16> d_logits(logits), d_dlogits(N * V), d_in_place(logits);
  DeviceBuffer<float> d_loss(N), d_loss_in_place(N), d_loss_eval(N), d_scale(std::vector<float>{float(p.scale)});
  DeviceBuffer<int32_t> d_targets(p.targets);
  cuda::cross_entropy_forward_backward(d_dlogits, d_loss, d_logits, d_targets, N, V, kIgnore, d_scale, nullptr);
  cuda::cross_entropy_forward_backward(d_in_place, d_loss_in_place, d_in_place, d_targets, N, V, kIgnore, d_scale,
                                       nullptr);
  cuda::cross_entropy_forward_backward(nullptr, d_loss_eval, d_logits, d_targets, N, V, kIgnore, d_scale, nullptr);
  TRAIN_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<bf16> out = d_dlogits.download(), in = d_in_place.download();
  EXPECT_EQ(std::memcmp(out.data(), in.data(), out.size() * sizeof(bf16)), 0) << "dlogits, V = " << V;
  const std::vector<float> loss = d_loss.download(), loss_in = d_loss_in_place.download(),
                           loss_eval = d_loss_eval.download();
  EXPECT_EQ(std::memcmp(loss.data(), loss_in.data(), loss.size() * sizeof(float)), 0) << "loss, V = " << V;
  EXPECT_EQ(std::memcmp(loss.data(), loss_eval.data(), loss.size() * sizeof(float)), 0) << "eval loss, V = " << V;
  expect_matches_reference(p, loss_in, to_float(in));
}

TEST(TrainCrossEntropyCpuVsCuda, InPlaceGivesTheBitsOfOutOfPlace) {
  REQUIRE_GPU();
  check_in_place_is_out_of_place(5, 128256, 31);
  check_in_place_is_out_of_place(13, 1003, 32);
}

}  // namespace
}  // namespace adept
