// RMSNorm forward and backward. A block owns whole rows; each thread owns CHUNKS groups
// of 8 consecutive channels (one 16-byte access each), so a row is read once and the
// per-channel weight-gradient partial stays in registers across the block's rows. The
// backward runs a fixed number of blocks, each walking its rows with the next row's loads
// in flight.
#include <algorithm>

#include <string>
#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

template <int CHUNKS>
__global__ void __launch_bounds__(1024) rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* in, const bf16* weight, int C,
                                       float eps) {
  __shared__ float shared[32];
  const int64_t n = blockIdx.x;
  const bf16* x = in + n * C;
  float xv[CHUNKS][8];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * 8;
    if (c < C) {
      load8(x + c, xv[k]);
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += xv[k][j] * xv[k][j];
    }
  }
  ss = block_sum(ss, shared);
  const float r = rsqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * 8;
    if (c < C) {
      float w[8], y[8];
      load8(weight + c, w);
#pragma unroll
      for (int j = 0; j < 8; ++j) y[j] = xv[k][j] * r * w[j];
      store8(out + n * C + c, y);
    }
  }
}

// A block's rows of the backward, packed as loaded (16 bytes per chunk each).
template <int CHUNKS>
struct BackwardRow {
  uint4 x[CHUNKS], dy[CHUNKS], res[CHUNKS];
  float r;
};

// Everything row n needs, the residual gradient included, in one round of loads.
template <int CHUNKS>
__device__ inline void load_backward_row(BackwardRow<CHUNKS>& row, const bf16* dout, const bf16* in,
                                         const float* rstd, const bf16* dresidual, int64_t n, int C) {
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * 8;
    if (c < C) {
      row.x[k] = *reinterpret_cast<const uint4*>(in + n * C + c);
      row.dy[k] = *reinterpret_cast<const uint4*>(dout + n * C + c);
      if (dresidual) row.res[k] = *reinterpret_cast<const uint4*>(dresidual + n * C + c);
    }
  }
  row.r = rstd[n];
}

constexpr int kBackwardThreads = 256;  // per row, up to C = 8192 (4 chunks)
// Row blocks of the backward: one wave of 4 blocks per SM on an H200 (132 SMs), fixed so
// that dweight's summation order is the same on every GPU. ≤ kReduceBlocks (the scratch).
constexpr int kBackwardBlocks = 512;
static_assert(kBackwardBlocks <= kReduceBlocks);

// y = w ⊙ x·r:  dx = r·(w⊙dy) − x·r³·mean(x ⊙ w ⊙ dy);  dw += dy ⊙ x·r.
// Block b takes rows b, b + gridDim.x, ...; the loads of its next row are issued before
// this row's block sum, so that memory stays busy through the barriers (the kernel that
// loaded a row only after finishing the previous one, and dresidual only after the sum,
// ran at ~50% of HBM bandwidth). Wide rows (THREADS = 1024) have no registers to spare
// for the next row and load it after this one.
template <int CHUNKS, int THREADS>
__global__ void __launch_bounds__(THREADS, THREADS == kBackwardThreads ? 4 / CHUNKS : 1)
    rmsnorm_backward_kernel(bf16* din, float* partials, const bf16* dout, const bf16* in, const bf16* weight,
                            const float* rstd, const bf16* dresidual, int64_t N, int C) {
  constexpr bool kPrefetch = THREADS == kBackwardThreads;
  __shared__ float shared[32];
  uint4 w[CHUNKS];
  float dw[CHUNKS][8];
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * 8;
#pragma unroll
    for (int j = 0; j < 8; ++j) dw[k][j] = 0.0f;
    if (c < C) w[k] = *reinterpret_cast<const uint4*>(weight + c);
  }
  BackwardRow<CHUNKS> row, next;
  int64_t n = blockIdx.x;
  if (n < N) load_backward_row(row, dout, in, rstd, dresidual, n, C);
  for (; n < N; n += gridDim.x) {  // n is the same for the whole block: the barriers are safe
    const int64_t following = n + gridDim.x;
    if (kPrefetch && following < N) load_backward_row(next, dout, in, rstd, dresidual, following, C);
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * 8;
      if (c < C) {
        float x[8], dy[8], wk[8];
        unpack8(row.x[k], x);
        unpack8(row.dy[k], dy);
        unpack8(w[k], wk);
#pragma unroll
        for (int j = 0; j < 8; ++j) dot += x[j] * wk[j] * dy[j];
      }
    }
    dot = block_sum(dot, shared);
    const float r = row.r;
    const float kk = r * r * r * dot / float(C);
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * 8;
      if (c < C) {
        float x[8], dy[8], wk[8], res[8], dx[8];
        unpack8(row.x[k], x);
        unpack8(row.dy[k], dy);
        unpack8(w[k], wk);
        if (dresidual) unpack8(row.res[k], res);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          dx[j] = r * wk[j] * dy[j] - x[j] * kk + (dresidual ? res[j] : 0.0f);
          dw[k][j] += dy[j] * x[j] * r;
        }
        store8(din + n * C + c, dx);
      }
    }
    if (kPrefetch)
      row = next;
    else if (following < N)
      load_backward_row(row, dout, in, rstd, dresidual, following, C);
  }
  if (partials) {
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * 8;
      if (c < C) {
        float4* p = reinterpret_cast<float4*>(partials + int64_t(blockIdx.x) * C + c);
        p[0] = make_float4(dw[k][0], dw[k][1], dw[k][2], dw[k][3]);
        p[1] = make_float4(dw[k][4], dw[k][5], dw[k][6], dw[k][7]);
      }
    }
  }
}

struct RowLaunch {
  int threads, chunks;
};
// What both directions support: channels in groups of 8, up to 1024 threads of 4 groups.
void check_channels(int64_t C) {
  if (C % 8 != 0) launch_failure("CUDA RMSNorm needs a channel count divisible by 8, got " + std::to_string(C));
  if (C > 1024 * 4 * 8) launch_failure("CUDA RMSNorm supports up to 32768 channels, got " + std::to_string(C));
}

// Threads per row: one per 8 channels, up to 1024; more channels take 2 or 4 chunks.
RowLaunch row_launch(int64_t C) {
  check_channels(C);
  int64_t groups = C / 8;
  int64_t threads = std::min<int64_t>(1024, (groups + 31) / 32 * 32);
  int64_t chunks = (groups + threads - 1) / threads;
  return {int(threads), chunks <= 1 ? 1 : chunks <= 2 ? 2 : 4};
}

// The backward's rows: up to kBackwardThreads threads with 1, 2 or 4 chunks each (so the
// prefetched row fits in registers), 1024 threads of 4 chunks beyond C = 8192.
RowLaunch backward_row_launch(int64_t C) {
  check_channels(C);
  const int64_t groups = C / 8;
  for (int chunks : {1, 2, 4}) {
    const int64_t threads = ((groups + chunks - 1) / chunks + 31) / 32 * 32;
    if (threads <= kBackwardThreads) return {int(threads), chunks};
  }
  return {int(((groups + 3) / 4 + 31) / 32 * 32), 4};
}

}  // namespace

void rmsnorm_forward(bf16* out, float* rstd, const bf16* in, const bf16* weight, int64_t N, int64_t C, double eps,
                     cudaStream_t stream) {
  RowLaunch l = row_launch(C);
  auto kernel = l.chunks == 1 ? rmsnorm_forward_kernel<1> : l.chunks == 2 ? rmsnorm_forward_kernel<2>
                                                                          : rmsnorm_forward_kernel<4>;
  kernel<<<unsigned(N), l.threads, 0, stream>>>(out, rstd, in, weight, int(C), float(eps));
  ADEPT_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

void rmsnorm_backward(bf16* din, float* dweight, float* partials, const bf16* dout, const bf16* in,
                      const bf16* weight, const float* rstd, const bf16* dresidual, int64_t N, int64_t C,
                      cudaStream_t stream) {
  const RowLaunch l = backward_row_launch(C);
  if (N <= 0) return;
  auto kernel = l.threads > kBackwardThreads ? rmsnorm_backward_kernel<4, 1024>
                : l.chunks == 1             ? rmsnorm_backward_kernel<1, kBackwardThreads>
                : l.chunks == 2             ? rmsnorm_backward_kernel<2, kBackwardThreads>
                                            : rmsnorm_backward_kernel<4, kBackwardThreads>;
  const int blocks = int(std::min<int64_t>(N, kBackwardBlocks));
  kernel<<<blocks, l.threads, 0, stream>>>(din, dweight ? partials : nullptr, dout, in, weight, rstd, dresidual, N,
                                           int(C));
  ADEPT_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
  if (dweight) reduce_partials(dweight, partials, blocks, C, stream);
}

}  // namespace adept::cuda
