// The Hopper backward's five wgmma products, one step, in isolation (the layouts of
// flash4/src/hopper/backward_sm90.cuh, through its own issue_* / store_ds_transposed
// functions): two warpgroups load K, V [128 x d] and Q, dO [BM x d] into shared memory in the
// 128B-swizzled TMA layout, then
//   S^T = K Q^T, dP^T = V dO^T          (issue_scores_transposed: SS, K-major)
//   dV = A1 dO, dK = A2 Q               (issue_key_gradient: RS, A1 = "P^T", A2 = "dS^T")
//   dQ = A2^T K                         (store_ds_transposed + issue_dq: SS, both MN-major)
// with A1, A2 given [128 keys x BM queries] 16-bit matrices; every product is compared with
// float64 on the host. When the whole backward fails on a device, this says whether a
// layout is the cause and which one (the first wrong element is printed).
// Written before the kernel first ran on a GPU (scripts/hopper_bwd_check.sh runs it); the
// BM = 128 cases (d = 64, FLASH4_HOPPER_BWD_BM=128's layouts: m64n128 scores, dS^T in two
// 64-query chunks, each warpgroup's dQ over all keys for its 64 queries) before that kernel
// first ran (scripts/hopper_bwd_wide_check.sh). d = 256 (the kSplitHeadDim kernel, opt-in,
// written without a GPU): K, V [64 x 256], both warpgroups on the same 64 keys -- S^T / dP^T
// computed by both, dS^T stored half by each, dK / dV for the warpgroup's 128 columns, dQ in
// two 64-column chunks a warpgroup (scripts/hopper_bwd_d256_check.sh).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "flash4_gpu_problem.hpp"
#include "hopper/backward_sm90.cuh"

namespace flash4_gpu {
namespace {

namespace hp = flash4::hopper;

// Keys of the block: 128 (d 64 / 128), 64 (d 256).
template <int D>
constexpr int kKeysOf = hp::BackwardSm90Config<D>::kBlockN;

// Shared memory of the test kernel: K, V [keys][D], Q, dO [BM][D], dS^T [keys][BM], 1024-aligned.
template <int D, int BM>
constexpr size_t layout_smem_bytes() {
  constexpr int kKeys = kKeysOf<D>;
  return 1024 + size_t(2 * kKeys + 2 * BM) * D * 2 + kKeys * BM * 2;
}

// Outputs: s, dp [keys][BM]; dv, dk [keys][D]; dq [2][64][D]: BM = 64, warpgroup w's part in
// dq[w] (d = 128 its 64 columns, the rest never written; d = 64 the part of its 64 keys);
// BM = 128, the whole [128][D] (warpgroup w's queries 64 w .. 64 w + 63, all keys); d = 256,
// the whole [64][256] in dq[0] (warpgroup w's columns 128 w .. 128 w + 127).
template <int D, typename T, int BM>
__global__ void __launch_bounds__(256) backward_layout_kernel(const T* k, const T* v, const T* q, const T* dout,
                                                              const T* a1, const T* a2, float* s_out, float* dp_out,
                                                              float* dv_out, float* dk_out, float* dq_out) {
#if defined(FLASH4_SM90A)
  using C = hp::BackwardSm90Config<D, BM>;
  constexpr bool kSplit = C::kSplitHeadDim;
  constexpr int kKeys = kKeysOf<D>, kQueries = BM;
  constexpr uint32_t kOffK = 0, kOffV = kKeys * D * 2, kOffQ = 2 * kKeys * D * 2, kOffO = kOffQ + kQueries * D * 2;
  constexpr uint32_t kOffDs = kOffO + kQueries * D * 2;
  // Byte offset of element (r, c) of a [rows][D] 16-bit tile in 64-column chunks, 128B-swizzled
  // (what TMA writes with CU_TENSOR_MAP_SWIZZLE_128B and a box 64 columns wide).
  auto swizzled_offset = [](int rows, int r, int c) {
    return uint32_t((c / 64) * rows * 128 + r * 128 + ((((c % 64) / 8) ^ (r % 8)) << 4) + (c % 8) * 2);
  };
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  for (int i = threadIdx.x; i < kKeys * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    *reinterpret_cast<T*>(smem + kOffK + swizzled_offset(kKeys, r, c)) = k[i];
    *reinterpret_cast<T*>(smem + kOffV + swizzled_offset(kKeys, r, c)) = v[i];
  }
  for (int i = threadIdx.x; i < kQueries * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    *reinterpret_cast<T*>(smem + kOffQ + swizzled_offset(kQueries, r, c)) = q[i];
    *reinterpret_cast<T*>(smem + kOffO + swizzled_offset(kQueries, r, c)) = dout[i];
  }
  hp::fence_proxy_async();
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, w = warp / 4, wq = warp % 4, g = lane / 4, t = lane % 4;
  const uint32_t k_addr = hp::smem_u32(smem + kOffK), v_addr = hp::smem_u32(smem + kOffV);
  const uint32_t q_addr = hp::smem_u32(smem + kOffQ), o_addr = hp::smem_u32(smem + kOffO);
  // This thread's first key row (accumulator rows row, row + 8); d 256: both warpgroups'.
  const int row = C::first_key(w) + 16 * wq + g;
  const int key_col0 = kSplit ? C::kKeyCols * w : 0;

  float s[BM / 2], dp[BM / 2];
  hp::wgmma_fence();
  hp::issue_scores_transposed<D, T, BM>(s, k_addr, q_addr, w);
  hp::issue_scores_transposed<D, T, BM>(dp, v_addr, o_addr, w);
  hp::wgmma_wait_group<0>();
#pragma unroll
  for (int i = 0; i < BM / 2; ++i) {
    hp::fence_operand(s[i]);
    hp::fence_operand(dp[i]);
  }
#pragma unroll
  for (int i = 0; i < BM / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int idx = (row + 8 * (e >> 1)) * kQueries + 8 * i + 2 * t + (e & 1);
      s_out[idx] = s[4 * i + e];
      dp_out[idx] = dp[4 * i + e];
    }

  // A1, A2 in the accumulator layout -> A fragments, as the kernel makes P^T / dS^T.
  float x1[BM / 2], x2[BM / 2];
#pragma unroll
  for (int i = 0; i < BM / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int idx = (row + 8 * (e >> 1)) * kQueries + 8 * i + 2 * t + (e & 1);
      x1[4 * i + e] = flash4::cuda::to_float(a1[idx]);
      x2[4 * i + e] = flash4::cuda::to_float(a2[idx]);
    }
  uint32_t pa[BM / 16][4], dsa[BM / 16][4];
  hp::scores_to_a<T, BM>(pa, x1);
  hp::scores_to_a<T, BM>(dsa, x2);
  // stmatrix: the warp's first row (row - g) and the lane.
  const uint32_t ds_addr = hp::smem_u32(smem + kOffDs);
  if constexpr (kSplit) {  // each warpgroup half of the queries, as the kernel
    if (w == 0)
      hp::store_ds_transposed<BM, 0, BM / 16>(ds_addr, dsa, row - g, lane);
    else
      hp::store_ds_transposed<BM, BM / 16, BM / 16>(ds_addr, dsa, row - g, lane);
  } else {
    hp::store_ds_transposed<BM>(ds_addr, dsa, row - g, lane);
  }
  hp::fence_proxy_async();

  float dv[C::kKeyCols / 2], dk[C::kKeyCols / 2];
#pragma unroll
  for (int i = 0; i < C::kKeyCols / 2; ++i) dv[i] = dk[i] = 0.0f;
  hp::wgmma_fence();
  hp::issue_key_gradient<D, T, BM>(dv, pa, o_addr, w);
  hp::issue_key_gradient<D, T, BM>(dk, dsa, q_addr, w);
  hp::wgmma_commit_group();
  __syncthreads();  // both warpgroups' dS^T stored (the kernel: a named barrier)
  float dq[32];
  hp::issue_dq<D, T, BM>(dq, hp::smem_u32(smem + kOffDs), k_addr, kSplit ? 2 * w : w);
  hp::wgmma_wait_group<0>();
#pragma unroll
  for (int i = 0; i < C::kKeyCols / 2; ++i) {
    hp::fence_operand(dv[i]);
    hp::fence_operand(dk[i]);
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) hp::fence_operand(dq[i]);
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int n = 0; n < C::kKeyCols / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int idx = (row + 8 * half) * D + key_col0 + 8 * n + 2 * t + e;
        dv_out[idx] = dv[4 * n + 2 * half + e];
        dk_out[idx] = dk[4 * n + 2 * half + e];
      }
  // dq's 64 x 64 accumulator -> dq_out rows from row0, columns from col0.
  auto write_dq = [&](int row0, int col0) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          dq_out[(row0 + 16 * wq + g + 8 * half) * D + col0 + 8 * n + 2 * t + e] = dq[4 * n + 2 * half + e];
  };
  if constexpr (kSplit) {
    // Columns 64 (2 w) .., then the second chunk 64 (2 w + 1) .., all into dq[0].
    write_dq(0, 64 * 2 * w);
#pragma unroll
    for (int i = 0; i < 32; ++i) hp::fence_operand(dq[i]);
    hp::issue_dq<D, T, BM>(dq, hp::smem_u32(smem + kOffDs), k_addr, 2 * w + 1);
    hp::wgmma_wait_group<0>();
#pragma unroll
    for (int i = 0; i < 32; ++i) hp::fence_operand(dq[i]);
    write_dq(0, 64 * (2 * w + 1));
  } else {
    write_dq(w * 64, BM == 128 ? 0 : hp::dq_first_column<D>(w));
  }
#else
  __trap();  // no sm_90a code: the test skips before launching
#endif
}

bool kernel_runs_here(const void* kernel) {
  int device = 0, major = 0, minor = 0;
  if (!have_gpu() || cudaGetDevice(&device) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  cudaFuncAttributes attributes{};
  if (major != 9 || minor != 0 || cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attributes.binaryVersion == 90;
}

// Max |got - want| / max |want| over a matrix, and where the first element beyond `tol` is.
struct Mismatch {
  double relative = 0;
  std::string first;
};
Mismatch compare(const std::vector<float>& got, const std::vector<double>& want, int cols, double tol) {
  double scale = 0, worst = 0;
  for (double x : want) scale = std::max(scale, std::fabs(x));
  Mismatch m;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::isnan(got[i]) ? INFINITY : std::fabs(got[i] - want[i]);
    worst = std::max(worst, err);
    if (m.first.empty() && err > tol * scale)
      m.first = "(" + std::to_string(i / cols) + ", " + std::to_string(i % cols) + "): got " + std::to_string(got[i]) +
                ", want " + std::to_string(want[i]);
  }
  m.relative = scale > 0 ? worst / scale : worst;
  return m;
}

template <int D, typename T, int BM = 64>
void check_layouts(flash4_dtype dtype) {
  constexpr int kQueries = BM, kKeys = kKeysOf<D>;
  auto kernel = backward_layout_kernel<D, T, BM>;
  if (!kernel_runs_here(reinterpret_cast<const void*>(kernel))) GTEST_SKIP() << "needs an sm_90 device and sm_90a code";
  auto rng = testing_support::make_rng(D * 2 + (dtype == FLASH4_BF16) + BM);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto make = [&](int n, std::vector<uint16_t>& bits, std::vector<double>& values) {
    bits.resize(size_t(n));
    values.resize(size_t(n));
    for (int i = 0; i < n; ++i) {
      bits[i] = to_bits(normal(rng), dtype);
      values[i] = from_bits(bits[i], dtype);
    }
  };
  std::vector<uint16_t> kb, vb, qb, ob, a1b, a2b;
  std::vector<double> K, V, Q, O, A1, A2;
  make(kKeys * D, kb, K);
  make(kKeys * D, vb, V);
  make(kQueries * D, qb, Q);
  make(kQueries * D, ob, O);
  make(kKeys * kQueries, a1b, A1);
  make(kKeys * kQueries, a2b, A2);
  DeviceMemory dk_in = upload(kb), dv_in = upload(vb), dq_in = upload(qb), do_in = upload(ob), da1 = upload(a1b),
               da2 = upload(a2b);
  DeviceMemory s_out(kKeys * kQueries * 4), dp_out(kKeys * kQueries * 4), dv_out(kKeys * D * 4),
      dk_out(kKeys * D * 4), dq_out(2 * 64 * D * 4);
  for (DeviceMemory* m : {&s_out, &dp_out, &dv_out, &dk_out, &dq_out}) cudaMemset(m->get(), 0xFF, m->bytes());  // NaN
  const size_t smem = layout_smem_bytes<D, BM>();
  FLASH4_TEST_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<1, 256, smem>>>(static_cast<const T*>(dk_in.get()), static_cast<const T*>(dv_in.get()),
                           static_cast<const T*>(dq_in.get()), static_cast<const T*>(do_in.get()),
                           static_cast<const T*>(da1.get()), static_cast<const T*>(da2.get()),
                           static_cast<float*>(s_out.get()), static_cast<float*>(dp_out.get()),
                           static_cast<float*>(dv_out.get()), static_cast<float*>(dk_out.get()),
                           static_cast<float*>(dq_out.get()));
  FLASH4_TEST_CUDA(cudaGetLastError());
  FLASH4_TEST_CUDA(cudaDeviceSynchronize());
  auto down = [](const DeviceMemory& m) {
    std::vector<float> h(m.bytes() / 4);
    cudaMemcpy(h.data(), m.get(), m.bytes(), cudaMemcpyDeviceToHost);
    return h;
  };
  const std::vector<float> s = down(s_out), dp = down(dp_out), dv = down(dv_out), dk = down(dk_out), dq2 = down(dq_out);

  std::vector<double> rs(kKeys * kQueries), rdp(kKeys * kQueries), rdv(kKeys * D), rdk(kKeys * D), rdq(kQueries * D);
  for (int j = 0; j < kKeys; ++j)
    for (int i = 0; i < kQueries; ++i) {
      double a = 0, b = 0;
      for (int c = 0; c < D; ++c) a += K[j * D + c] * Q[i * D + c], b += V[j * D + c] * O[i * D + c];
      rs[j * kQueries + i] = a;
      rdp[j * kQueries + i] = b;
    }
  for (int j = 0; j < kKeys; ++j)
    for (int c = 0; c < D; ++c) {
      double a = 0, b = 0;
      for (int i = 0; i < kQueries; ++i) a += A1[j * kQueries + i] * O[i * D + c], b += A2[j * kQueries + i] * Q[i * D + c];
      rdv[j * D + c] = a;
      rdk[j * D + c] = b;
    }
  for (int i = 0; i < kQueries; ++i)
    for (int c = 0; c < D; ++c) {
      double a = 0;
      for (int j = 0; j < kKeys; ++j) a += A2[j * kQueries + i] * K[j * D + c];
      rdq[i * D + c] = a;
    }
  // dQ: d = 128 -- each warpgroup wrote its 64 columns, the other half of its slice is
  // NaN (never written); d = 64 -- the two warpgroups' key halves add up; BM = 128 -- the
  // warpgroups' query halves, each whole.
  std::vector<float> dq(kQueries * D);
  for (int i = 0; i < kQueries; ++i)
    for (int c = 0; c < D; ++c) {
      if (BM == 128 || D == 256) {
        dq[i * D + c] = dq2[i * D + c];
        continue;
      }
      const float w0 = dq2[i * D + c], w1 = dq2[(kQueries + i) * D + c];
      dq[i * D + c] = D == 128 ? (c < 64 ? w0 : w1) : w0 + w1;
    }
  // fp32 accumulation of exact 16-bit products over at most 256 terms is good to ~1e-6 of
  // the largest result; a wrong layout is off by O(1).
  const double tol = 1e-3;
  const struct {
    const char* name;
    const std::vector<float>* got;
    const std::vector<double>* want;
    int cols;
  } products[] = {{"S^T = K Q^T", &s, &rs, kQueries},      {"dP^T = V dO^T", &dp, &rdp, kQueries},
                  {"dV = P^T dO (RS)", &dv, &rdv, D},      {"dK = dS^T Q (RS)", &dk, &rdk, D},
                  {"dQ = dS K (SS, MN-major)", &dq, &rdq, D}};
  for (const auto& pr : products) {
    const Mismatch m = compare(*pr.got, *pr.want, pr.cols, tol);
    std::printf("[ layout ] d=%d BM=%d %s %s: max error %.2e of max |ref|%s%s\n", D, BM,
                dtype == FLASH4_BF16 ? "bf16" : "fp16", pr.name, m.relative, m.first.empty() ? "" : ", first wrong element ",
                m.first.c_str());
    EXPECT_LT(m.relative, tol) << pr.name << (m.first.empty() ? "" : ": first wrong element " + m.first);
  }
}

TEST(Flash4HopperBackwardLayouts, Hdim64Bf16) { check_layouts<64, __nv_bfloat16>(FLASH4_BF16); }
TEST(Flash4HopperBackwardLayouts, Hdim64Fp16) { check_layouts<64, __half>(FLASH4_F16); }
TEST(Flash4HopperBackwardLayouts, Hdim128Bf16) { check_layouts<128, __nv_bfloat16>(FLASH4_BF16); }
TEST(Flash4HopperBackwardLayouts, Hdim128Fp16) { check_layouts<128, __half>(FLASH4_F16); }
TEST(Flash4HopperBackwardLayouts, Hdim64Block128Bf16) { check_layouts<64, __nv_bfloat16, 128>(FLASH4_BF16); }
TEST(Flash4HopperBackwardLayouts, Hdim64Block128Fp16) { check_layouts<64, __half, 128>(FLASH4_F16); }
TEST(Flash4HopperBackwardLayouts, Hdim256Bf16) { check_layouts<256, __nv_bfloat16>(FLASH4_BF16); }
TEST(Flash4HopperBackwardLayouts, Hdim256Fp16) { check_layouts<256, __half>(FLASH4_F16); }

}  // namespace
}  // namespace flash4_gpu
