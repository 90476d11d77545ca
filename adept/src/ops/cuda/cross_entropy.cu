// Cross-entropy over one chunk of tokens' logits (the decoder never holds the logits of
// every token at once: it runs the head GEMM, this kernel and the head's backward GEMMs
// chunk by chunk). One block per token. The logits are bf16, as the head GEMM writes them
// (fp32 accumulation, bf16 output, as in Hugging Face's bf16 training: lm_head in bf16,
// then .float()); all math is fp32. A row is read twice: pass 1 for the max and sum of
// exponentials, pass 2 for the gradient, which may overwrite the logits in place. At
// Llama-3's V = 128256 the block's row (250 KiB) and the rows of the other resident
// blocks do not fit L2, so pass 2 walks the row backwards: what pass 1 read last is what
// L2 still holds. Traffic per element: 2 B written by the GEMM, 2 + (≤ 2) B read, 2 B
// written here (it was 4 B written, 8 B read, 2 B written with fp32 logits).
#include <cfloat>

#include "ops/cuda/common.cuh"

namespace adept::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kUnroll = 4;  // 16-byte loads in flight per thread in pass 1

// Online softmax normaliser: (m, s) with s = Σ exp(z − m).
__device__ inline void combine(float& m, float& s, float om, float os) {
  const float M = fmaxf(m, om);
  if (M == -INFINITY) return;
  s = s * __expf(m - M) + os * __expf(om - M);
  m = M;
}

// A row as [0, head) scalars, `vectors` aligned 8-element vectors from head, and scalars
// again from tail = head + 8 · vectors to V. In place (or with dlogits and logits at the
// same offset mod 16 bytes) the vectors are aligned for both; otherwise the whole row is
// scalar (head = vectors = tail = 0), a fallback no caller of the decoder takes.
struct RowSplit {
  int head, vectors, tail;
};

__device__ inline RowSplit split_row(const bf16* z, const bf16* d, int V) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(z);
  if (d && ((a ^ reinterpret_cast<uintptr_t>(d)) & 15)) return {0, 0, 0};
  const int head = min(V, int((16 - (a & 15)) & 15) / 2);
  const int vectors = (V - head) / 8;
  return {head, vectors, head + 8 * vectors};
}

// The k-th scalar element of the row: the head's, then the tail's.
__device__ inline int scalar_index(const RowSplit& r, int k) { return k < r.head ? k : r.tail + (k - r.head); }

__device__ inline void add_exp(float& m, float& s, float x) {
  if (x > m) {
    s = s * __expf(m - x) + 1.0f;
    m = x;
  } else {
    s += __expf(x - m);
  }
}

__device__ inline void add_exp8(float& m, float& s, const uint4& u) {
  float f[8];
  unpack8(u, f);
  float M = m;
#pragma unroll
  for (int k = 0; k < 8; ++k) M = fmaxf(M, f[k]);
  if (M > m) {  // one rescale per vector, not per element
    s *= __expf(m - M);
    m = M;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) s += __expf(f[k] - m);
}

// dlogits may equal logits (in place): every element is read by pass 1 before the block's
// barrier, and in pass 2 by the thread that then overwrites it. Hence no __restrict__
// and no read-only (.nc) loads of the logits, and z[t] is read before the barrier.
__global__ void __launch_bounds__(kThreads, 4) cross_entropy_kernel(bf16* dlogits, float* loss, const bf16* logits,
                                                                 const int32_t* targets, int64_t V,
                                                                 int32_t ignore_index, const float* grad_scale) {
  __shared__ float shared_m[32], shared_s[32];
  const int64_t n = blockIdx.x;
  const bf16* z = logits + n * V;
  bf16* d = dlogits ? dlogits + n * V : nullptr;
  const int32_t t = targets[n];
  const RowSplit r = split_row(z, d, int(V));
  const int scalars = r.head + (int(V) - r.tail);
  if (t == ignore_index) {
    if (d) {
      for (int i = threadIdx.x; i < r.vectors; i += kThreads)
        __stcs(reinterpret_cast<uint4*>(d + r.head) + i, make_uint4(0, 0, 0, 0));
      for (int k = threadIdx.x; k < scalars; k += kThreads) d[scalar_index(r, k)] = __float2bfloat16(0.0f);
    }
    if (threadIdx.x == 0) loss[n] = 0.0f;
    return;
  }
  const float zt = threadIdx.x == 0 ? __bfloat162float(z[t]) : 0.0f;

  // Pass 1: (m, s) over the row.
  const uint4* zv = reinterpret_cast<const uint4*>(z + r.head);
  float m = -INFINITY, s = 0.0f;
  int i = threadIdx.x;
  for (; i + (kUnroll - 1) * kThreads < r.vectors; i += kUnroll * kThreads) {
    uint4 u[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) u[k] = zv[i + k * kThreads];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) add_exp8(m, s, u[k]);
  }
  for (; i < r.vectors; i += kThreads) add_exp8(m, s, zv[i]);
  for (int k = threadIdx.x; k < scalars; k += kThreads) add_exp(m, s, __bfloat162float(z[scalar_index(r, k)]));

#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    combine(m, s, __shfl_xor_sync(0xffffffffu, m, offset), __shfl_xor_sync(0xffffffffu, s, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = kThreads >> 5;
  if (lane == 0) shared_m[warp] = m, shared_s[warp] = s;
  __syncthreads();  // also: the whole row has been read (pass 2 may overwrite it)
  m = -INFINITY, s = 0.0f;
  for (int w = 0; w < warps; ++w) combine(m, s, shared_m[w], shared_s[w]);
  const float lse = m + logf(s);
  if (threadIdx.x == 0) loss[n] = lse - zt;
  if (!d) return;

  // Pass 2: d = scale · (softmax − onehot), vectors from the row's end (see the header);
  // last reads and the stores stream (.cs): neither is read again before the backward
  // GEMMs, which read the whole chunk from HBM anyway.
  const float scale = *grad_scale;
  uint4* dv = reinterpret_cast<uint4*>(d + r.head);
  for (int j = threadIdx.x; j < r.vectors; j += kThreads) {
    const int v = r.vectors - 1 - j;
    float f[8];
    unpack8(__ldcs(reinterpret_cast<const uint4*>(zv) + v), f);
    const int base = r.head + 8 * v;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      f[k] = __expf(f[k] - lse) * scale;
      if (base + k == t) f[k] -= scale;
    }
    __stcs(dv + v, pack8(f));
  }
  for (int k = threadIdx.x; k < scalars; k += kThreads) {
    const int v = scalar_index(r, k);
    float p = __expf(__bfloat162float(z[v]) - lse) * scale;
    if (v == t) p -= scale;
    d[v] = __float2bfloat16(p);
  }
}

__global__ void loss_accumulate_kernel(double* loss_sum, int64_t* count, const float* loss, const int32_t* targets,
                                       int64_t N, int32_t ignore_index) {
  __shared__ double shared_sum[32];
  __shared__ long long shared_count[32];
  double acc = 0.0;
  long long counted = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    if (targets[n] == ignore_index) continue;
    acc += double(loss[n]);
    ++counted;
  }
  acc = block_sum(acc, shared_sum);
  counted = block_sum(counted, shared_count);
  if (threadIdx.x == 0) {
    *loss_sum += acc;
    *count += int64_t(counted);
  }
}

}  // namespace

void cross_entropy_forward_backward(bf16* dlogits, float* loss, const bf16* logits, const int32_t* targets,
                                    int64_t N, int64_t V, int32_t ignore_index, const float* grad_scale,
                                    cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_kernel<<<unsigned(N), kThreads, 0, stream>>>(dlogits, loss, logits, targets, V, ignore_index,
                                                            grad_scale);
  ADEPT_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
}

void loss_accumulate(double* loss_sum, int64_t* count, const float* loss, const int32_t* targets, int64_t N,
                     int32_t ignore_index, cudaStream_t stream) {
  loss_accumulate_kernel<<<1, 1024, 0, stream>>>(loss_sum, count, loss, targets, N, ignore_index);
  ADEPT_CUDA_CHECK_LAUNCH("loss_accumulate_kernel");
}

}  // namespace adept::cuda
