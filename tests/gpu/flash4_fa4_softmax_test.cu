// FA4's softmax techniques (flash4/src/cuda/fa4_softmax.cuh):
//  - the FMA-pipe exp2: exhaustive max relative error over every fp32 x in [-126, 128)
//    on the GPU for degrees 3, 4, 5 (printed; bench/RESULTS.md records the run), exact 0
//    below -127, and host and device giving the same bits;
//  - conditional rescaling: the same result as always-rescaling within rounding, on the
//    host (float arithmetic vs float64) and through the forward kernel (tau 8 / 15 vs
//    always), plus the kernel with exp2 emulation on vs off, each against the reference.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <random>
#include <vector>

#include "common/random.hpp"
#include "cuda/fa4_softmax.cuh"
#include "flash4_gpu_problem.hpp"

namespace flash4_gpu {
namespace {

using flash4::cuda::exp2_emulated;
using flash4::cuda::RowMax;

// Max relative error of exp2_emulated<Degree> over x = bits(u) for every u whose float
// is in [-126, 128), against exp2 in float64. Result: (float error bits << 32) | x bits.
template <int Degree>
__global__ void exp2_error_kernel(unsigned long long* worst) {
  unsigned long long best = 0;
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t u = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < (uint64_t(1) << 32); u += stride) {
    const float x = __uint_as_float(uint32_t(u));
    if (!(x >= -126.0f && x < 128.0f)) continue;
    const double ref = exp2(double(x));
    const double err = fabs(double(exp2_emulated<Degree>(x)) - ref) / ref;
    const unsigned long long packed = (uint64_t(__float_as_uint(float(err))) << 32) | uint32_t(u);
    best = packed > best ? packed : best;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, offset);
    best = other > best ? other : best;
  }
  if ((threadIdx.x & 31) == 0) atomicMax(worst, best);
}

template <int Degree>
__global__ void exp2_values_kernel(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = exp2_emulated<Degree>(x[i]);
}

template <int Degree>
double exhaustive_max_relative_error(float* worst_x) {
  unsigned long long* d_worst = nullptr;
  EXPECT_EQ(cudaMalloc(&d_worst, sizeof(unsigned long long)), cudaSuccess);
  EXPECT_EQ(cudaMemset(d_worst, 0, sizeof(unsigned long long)), cudaSuccess);
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  exp2_error_kernel<Degree><<<sms * 8, 256>>>(d_worst);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  unsigned long long worst = 0;
  EXPECT_EQ(cudaMemcpy(&worst, d_worst, sizeof(worst), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d_worst);
  const uint32_t err_bits = uint32_t(worst >> 32), x_bits = uint32_t(worst);
  float err, x;
  std::memcpy(&err, &err_bits, 4);
  std::memcpy(&x, &x_bits, 4);
  *worst_x = x;
  return err;
}

template <int Degree>
void check_exhaustive(double bound) {
  float x = 0;
  const double err = exhaustive_max_relative_error<Degree>(&x);
  std::printf("[ exp2   ] degree %d: max relative error %.3e at x = %.9g over every fp32 x in [-126, 128)\n",
              Degree, err, x);
  ::testing::Test::RecordProperty("exp2_degree" + std::to_string(Degree) + "_max_rel_error", std::to_string(err));
  EXPECT_LT(err, bound);
}

TEST(Flash4Fa4Exp2, Degree3ExhaustiveErrorIsBelowBf16Resolution) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  check_exhaustive<3>(1.2e-4);  // bf16 half-ulp is 2^-9 = 2e-3, fp16's 2^-12 = 2.4e-4
}

TEST(Flash4Fa4Exp2, Degree4ExhaustiveError) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  check_exhaustive<4>(5e-6);
}

TEST(Flash4Fa4Exp2, Degree5ExhaustiveErrorIsNearFp32Rounding) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  check_exhaustive<5>(4e-7);
}

TEST(Flash4Fa4Exp2, HostAndDeviceGiveTheSameBitsAndZeroBelowMinus127) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  auto rng = testing_support::make_rng(3);
  std::uniform_real_distribution<float> uniform(-140.0f, 127.99f);
  std::vector<float> x(1 << 20);
  for (float& v : x) v = uniform(rng);
  x[0] = -INFINITY, x[1] = -127.5f, x[2] = -1000.0f, x[3] = 0.0f, x[4] = -0.0f, x[5] = 1.0f, x[6] = -126.0f;
  float *d_x = nullptr, *d_y = nullptr;
  ASSERT_EQ(cudaMalloc(&d_x, x.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_y, x.size() * 4), cudaSuccess);
  cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
  exp2_values_kernel<3><<<int(x.size() / 256), 256>>>(d_x, d_y, int(x.size()));
  std::vector<float> y(x.size());
  ASSERT_EQ(cudaMemcpy(y.data(), d_y, y.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d_x);
  cudaFree(d_y);
  int mismatches = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float host = exp2_emulated<3>(x[i]);
    if (std::memcmp(&host, &y[i], 4) != 0 && ++mismatches < 5)
      ADD_FAILURE() << "x = " << x[i] << ": device " << y[i] << ", host " << host;
    if (x[i] < -127.0f) EXPECT_EQ(y[i], 0.0f) << "x = " << x[i];
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(y[3], 1.0f);
  EXPECT_EQ(y[5], 2.0f);
}

// --- Conditional rescaling on the host: the online softmax of rows of rising scores,
// blocks of 64, with tau = 8 and tau = 0, against float64.
TEST(Flash4Fa4Rescale, ConditionalRescaleEqualsAlwaysRescaleWithinRounding) {
  auto rng = testing_support::make_rng(4);
  std::normal_distribution<double> normal(0.0, 3.0);
  int rescales_skipped = 0;
  for (int row = 0; row < 200; ++row) {
    const int n = 1000;
    std::vector<float> x(n), v(n);  // x: log2-domain scores with a rising trend
    for (int j = 0; j < n; ++j) x[j] = float(normal(rng) + 0.02 * j), v[j] = float(normal(rng));
    double m_ref = -INFINITY;
    for (float s : x) m_ref = std::max(m_ref, double(s));
    double l_ref = 0, o_ref = 0;
    for (int j = 0; j < n; ++j) l_ref += std::exp2(x[j] - m_ref), o_ref += std::exp2(x[j] - m_ref) * v[j];
    o_ref /= l_ref;
    for (float tau : {0.0f, 8.0f}) {
      RowMax m;
      float l = 0, o = 0;
      for (int j0 = 0; j0 < n; j0 += 64) {
        float block_max = -INFINITY;
        for (int j = j0; j < std::min(n, j0 + 64); ++j) block_max = std::max(block_max, x[j]);
        const float factor = m.update(block_max, tau);
        if (tau > 0 && block_max > m.m) ++rescales_skipped;
        l *= factor, o *= factor;
        for (int j = j0; j < std::min(n, j0 + 64); ++j) {
          const float p = flash4::cuda::exp2_hardware(x[j] - m.offset());
          l += p, o += p * v[j];
        }
      }
      EXPECT_NEAR(o / l, o_ref, 1e-5 * (1 + std::fabs(o_ref))) << "row " << row << " tau " << tau;
      EXPECT_NEAR((m.m + std::log2(l)), m_ref + std::log2(l_ref), 1e-5 * (1 + std::fabs(m_ref))) << "tau " << tau;
    }
  }
  EXPECT_GT(rescales_skipped, 0) << "the test never kept a stale max";
}

// --- Through the kernel: tunings against the reference and each other.
void check_tunings(flash4_dtype dtype, double q_scale, std::vector<flash4_tuning> tunings) {
  Problem p;
  p.dtype = dtype;
  p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 500, p.Sk = 700, p.causal = true, p.q_scale = q_scale;
  p.backward = false;
  std::vector<GpuOutputs> outs(tunings.size());
  for (size_t i = 0; i < tunings.size(); ++i) {
    p.tuning = tunings[i];
    auto rng = testing_support::make_rng(11);  // the same inputs for every tuning
    ProblemRunner runner(p, rng);
    runner.setup();
    Errors e;
    runner.forward(e, &outs[i]);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    std::printf("[ errors ] %s q_scale=%g | out %.2e lse %.2e\n", p.describe().c_str(), q_scale, e.out, e.lse);
    EXPECT_LT(e.out, tolerance_for(dtype).out) << p.describe();
    EXPECT_LT(e.lse, tolerance_for(dtype).lse_abs) << p.describe();
  }
  for (size_t i = 1; i < tunings.size(); ++i) {
    const double diff = relative_error(outs[i].out, outs[0].out);
    std::printf("[ tuning ] %zu vs 0: relative difference %.2e\n", i, diff);
    EXPECT_LT(diff, dtype == FLASH4_BF16 ? 8e-3 : 1.5e-3) << "tuning " << i << " vs always-rescale";
  }
}

TEST(Flash4Fa4Rescale, KernelConditionalRescaleMatchesAlwaysRescale) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  flash4_tuning always{}, tau8{}, tau15{};
  always.rescale_threshold = -1.0f;
  tau8.rescale_threshold = 8.0f;
  tau15.rescale_threshold = 15.0f;
  // q scaled up: logits of std ~ 8 make the row max jump past tau often.
  check_tunings(FLASH4_F16, 8.0, {always, tau8, tau15});
  check_tunings(FLASH4_BF16, 8.0, {always, tau8});
}

TEST(Flash4Fa4Exp2, KernelWithEmulatedExp2MatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  flash4_tuning off{}, on{};
  off.exp2_emulation = 1;
  on.exp2_emulation = 2;
  check_tunings(FLASH4_F16, 1.0, {off, on});
  check_tunings(FLASH4_BF16, 1.0, {off, on});
}

}  // namespace
}  // namespace flash4_gpu
