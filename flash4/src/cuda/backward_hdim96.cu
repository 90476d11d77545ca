// Backward kernels for padded head dims (d_qk, d_v) = (96, 96), bf16 and fp16.
#include "backward_kernel.cuh"

namespace flash4::cuda {
template void backward_hdim<96, 96>(const AttentionParams&, bool, cudaStream_t);
}  // namespace flash4::cuda
