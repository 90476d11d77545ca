// forward_sm90<D>: grid, shared memory and dtype dispatch of the Hopper forward kernel.
#pragma once

#include "cuda/cuda_check.hpp"
#include "hopper/forward_sm90.cuh"
#include "hopper/launch.hpp"

namespace flash4::hopper {

template <int D>
void forward_sm90(const ForwardTensorMaps& maps, const cuda::AttentionParams& p, cudaStream_t stream) {
  using C = ForwardSm90Config<D>;
  static_assert(C::kBlockM == kTmaBoxRows && C::kBlockN == kTmaBoxRows, "tensor-map box = tile rows");
  const dim3 grid((p.seqlen_q + C::kBlockM - 1) / C::kBlockM, p.heads_q, p.batch);
  if (grid.x == 0 || grid.z == 0) return;
  auto launch = [&](auto kernel) {
    FLASH4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmemBytes)));
    kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(maps.q, maps.k, maps.v, p, p.emulate_exp2 ? 1 : 0);
    FLASH4_CUDA_CHECK_LAUNCH("attention_forward_sm90_kernel");
  };
  if (p.dtype == cuda::DType::bf16)
    launch(attention_forward_sm90_kernel<D, __nv_bfloat16>);
  else
    launch(attention_forward_sm90_kernel<D, __half>);
}

}  // namespace flash4::hopper
