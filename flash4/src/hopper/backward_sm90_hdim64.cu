// Hopper backward kernels for head dim 64 (bf16, fp16), and the per-row preprocess.
#include "hopper/backward_sm90.cuh"

namespace flash4::hopper {

template void backward_sm90<64>(const BackwardTensorMaps&, const cuda::AttentionParams&, int64_t, const VarlenTiles&,
                                int64_t, const DqOrder*, DqAdd, bool, cudaStream_t);

namespace {

template <int kLanes>
void launch_rows(const cuda::AttentionParams& p, int64_t row_pitch, int64_t rows, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = unsigned((rows * kLanes + kThreads - 1) / kThreads);
  if (p.dtype == cuda::DType::bf16)
    backward_sm90_rows_kernel<__nv_bfloat16, kLanes><<<blocks, kThreads, 0, stream>>>(p, row_pitch);
  else
    backward_sm90_rows_kernel<__half, kLanes><<<blocks, kThreads, 0, stream>>>(p, row_pitch);
}

}  // namespace

void backward_sm90_rows(const cuda::AttentionParams& p, int64_t row_pitch, cudaStream_t stream) {
  const int64_t rows = int64_t(p.heads_q) * row_pitch;
  if (rows == 0) return;
  // Lanes per row: one per 16-byte chunk of an O / dO row (the kernel loops past 32 chunks).
  if (p.d_v <= 64)
    launch_rows<8>(p, row_pitch, rows, stream);
  else if (p.d_v <= 128)
    launch_rows<16>(p, row_pitch, rows, stream);
  else
    launch_rows<32>(p, row_pitch, rows, stream);
  FLASH4_CUDA_CHECK_LAUNCH("backward_sm90_rows_kernel");
}

bool backward_sm90_runs_here() {
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, attention_backward_sm90_kernel<64, __nv_bfloat16, false, DqAdd::atomics>) != cudaSuccess) {
    cudaGetLastError();  // clear it: not covered is not an error
    return false;
  }
  return attributes.binaryVersion == 90;
}

}  // namespace flash4::hopper
