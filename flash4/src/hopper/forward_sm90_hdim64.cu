// Hopper forward kernels for head dim 64, bf16 and fp16, with and without softcap.
#include "hopper/forward_sm90.cuh"
#include "hopper/launch_impl.cuh"

namespace flash4::hopper {
template void forward_sm90<64>(const ForwardTensorMaps&, const cuda::AttentionParams&, const VarlenTiles&, int64_t,
                                const ForwardSchedule&, cudaStream_t);
}  // namespace flash4::hopper
