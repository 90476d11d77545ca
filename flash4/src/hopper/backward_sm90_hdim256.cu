// Hopper backward kernels for head dim 256 (bf16, fp16; float2-atomic dQ, deterministic or
// not): opt-in, FLASH4_HOPPER_BWD_D256=1 (backward_sm90_host.cpp).
#include "hopper/backward_sm90.cuh"

namespace flash4::hopper {
template void backward_sm90<256>(const BackwardTensorMaps&, const cuda::AttentionParams&, int64_t, const VarlenTiles&,
                                int64_t, const DqOrder*, DqAdd, bool, cudaStream_t);
}  // namespace flash4::hopper
