// Hopper backward kernels for head dim 128 (bf16, fp16).
#include "hopper/backward_sm90.cuh"

namespace flash4::hopper {
template void backward_sm90<128>(const BackwardTensorMaps&, const cuda::AttentionParams&, int64_t, const VarlenTiles&,
                                int64_t, const DqOrder*, DqAdd, bool, cudaStream_t);
}  // namespace flash4::hopper
