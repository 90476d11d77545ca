// Hopper forward kernels for head dim 256 (d_qk = d_v), bf16 and fp16, with and without softcap:
// tiles of 128 queries x 80 keys, one Q buffer (ForwardSm90Config<256> has the arithmetic).
#include "hopper/forward_sm90.cuh"
#include "hopper/launch_impl.cuh"

namespace flash4::hopper {
template void forward_sm90<256>(const ForwardTensorMaps&, const cuda::AttentionParams&, const VarlenTiles&, int64_t,
                                const ForwardSchedule&, cudaStream_t);
}  // namespace flash4::hopper
