// Hopper forward kernels for head dim 128, bf16 and fp16, with and without softcap.
#include "hopper/forward_sm90.cuh"
#include "hopper/launch_impl.cuh"

namespace flash4::hopper {
template void forward_sm90<128>(const ForwardTensorMaps&, const cuda::AttentionParams&, const VarlenTiles&, int64_t,
                                const ForwardSchedule&, cudaStream_t);
}  // namespace flash4::hopper

namespace flash4::hopper {
bool forward_sm90_runs_here() {
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, attention_forward_sm90_kernel<128, __nv_bfloat16, false>) != cudaSuccess) {
    cudaGetLastError();  // clear it: not covered is not an error
    return false;
  }
  return attributes.binaryVersion == 90;
}
}  // namespace flash4::hopper
