// Hopper backward kernels for head dim 256 (bf16, fp16; float2-atomic dQ, deterministic or
// not): the default at d over 128 but for short deterministic sequences (host.hpp's
// backward_kernel_dim).
#include "hopper/backward_sm90.cuh"

namespace flash4::hopper {
template void backward_sm90<256>(const BackwardTensorMaps&, const cuda::AttentionParams&, int64_t, const VarlenTiles&,
                                int64_t, const DqOrder*, DqAdd, bool, cudaStream_t);
}  // namespace flash4::hopper
