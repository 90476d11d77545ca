// Backward kernels for padded head dims (d_qk, d_v) = (64, 64), bf16 and fp16.
#include "backward_kernel.cuh"

namespace flash4::cuda {
template void backward_hdim<64, 64>(const AttentionParams&, bool, bool, cudaStream_t);
template size_t backward_dq_smem_bytes<64, 64>(bool);
}  // namespace flash4::cuda
