// Forward kernels for padded head dims (d_qk, d_v) = (128, 128), bf16 and fp16.
#include "forward_kernel.cuh"

namespace flash4::cuda {
template void forward_hdim<128, 128>(const AttentionParams&, cudaStream_t);
}  // namespace flash4::cuda
