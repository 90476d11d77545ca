// Hopper backward kernels for head dim 64 (bf16, fp16), and the per-row preprocess.
#include "hopper/backward_sm90.cuh"

namespace flash4::hopper {

template void backward_sm90<64>(const BackwardTensorMaps&, const cuda::AttentionParams&, int64_t, const VarlenTiles&,
                                int64_t, const DqOrder*, DqAdd, cudaStream_t);

void backward_sm90_rows(const cuda::AttentionParams& p, int64_t row_pitch, cudaStream_t stream) {
  constexpr int kWarps = 8;  // backward_sm90_rows_kernel: one warp per row
  const int64_t rows = int64_t(p.heads_q) * row_pitch;
  if (rows == 0) return;
  const unsigned blocks = unsigned((rows + kWarps - 1) / kWarps);
  if (p.dtype == cuda::DType::bf16)
    backward_sm90_rows_kernel<__nv_bfloat16><<<blocks, 32 * kWarps, 0, stream>>>(p, row_pitch);
  else
    backward_sm90_rows_kernel<__half><<<blocks, 32 * kWarps, 0, stream>>>(p, row_pitch);
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
