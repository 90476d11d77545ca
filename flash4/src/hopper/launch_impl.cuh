// forward_sm90<D>: grid, shared memory and dtype / softcap dispatch of the Hopper forward kernel.
#pragma once

#include "cuda/cuda_check.hpp"
#include "hopper/forward_sm90.cuh"
#include "hopper/launch.hpp"

namespace flash4::hopper {

// One consumer-warpgroup count's kernels (kWarpgroups: ForwardSm90Config).
template <int D, int kWarpgroups>
void forward_sm90_launch(const ForwardTensorMaps& maps, const cuda::AttentionParams& p, const VarlenTiles& list,
                         int64_t list_capacity, const ForwardSchedule& schedule, cudaStream_t stream) {
  using C = ForwardSm90Config<D, kWarpgroups>;
  static_assert(C::kBlockM == forward_query_rows(kWarpgroups) && C::kBlockN == forward_key_box_rows(D),
                "tensor-map boxes = tile rows");
  static_assert(C::kBlockM == (kWarpgroups == 2 ? kVarlenBlockRows : kVarlenQueryRows3),
                "varlen work list blocks = query tiles");
  // Persistent: one CTA per SM (shared memory and registers allow no second), each walking
  // the tiles with stride gridDim.x (tile_at), or taking them from schedule.tile_counter.
  // Varlen: the list's capacity bounds the tiles.
  // Packed GQA: rows are (token, head) pairs of one KV head's group; split-KV: num_splits
  // tiles each.
  const int64_t tiles = list.pairs != nullptr ? list_capacity * p.heads_q
                                              : int64_t((int64_t(p.seqlen_q) * p.q_pack + C::kBlockM - 1) / C::kBlockM) *
                                                    (p.heads_q / p.q_pack) * p.batch * p.num_splits;
  if (tiles == 0) return;
  int device = 0, sms = 0;
  FLASH4_CUDA_CHECK(cudaGetDevice(&device));
  FLASH4_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const dim3 grid(unsigned(tiles < sms ? tiles : sms));
  auto launch = [&](auto kernel) {
    FLASH4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmemBytes)));
    const int flags = (p.emulate_exp2 ? kEmulateExp2 : 0) | (schedule.pingpong ? kPingpong : 0) |
                      (schedule.tma_store_o ? kTmaStoreO : 0) |
                      (schedule.store_warp_o ? kStoreWarpO : 0);
    kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(maps.q, maps.k, maps.v, maps.o, p, list, schedule.tile_counter,
                                                         flags);
    FLASH4_CUDA_CHECK_LAUNCH("attention_forward_sm90_kernel");
  };
  const bool softcap = p.softcap > 0;
  if constexpr (kWarpgroups == 2) {
    // Paged K / V and packed GQA: two warpgroups, no softcap (the host's gaps), kernels of
    // their own (kPaged, kPackGqa: forward_sm90.cuh).
    // Split-KV runs in the packed kernels, at q_pack 1 too (hopper.cpp, forward_splits).
    const bool paged = p.page_table != nullptr, pack = p.q_pack > 1 || p.num_splits > 1;
    if (paged || pack) {
      auto pick = [&](auto bf16, auto f16) {
        if (p.dtype == cuda::DType::bf16)
          launch(bf16);
        else
          launch(f16);
      };
      if (paged && pack)
        pick(attention_forward_sm90_kernel<D, __nv_bfloat16, false, 2, true, true>,
             attention_forward_sm90_kernel<D, __half, false, 2, true, true>);
      else if (paged)
        pick(attention_forward_sm90_kernel<D, __nv_bfloat16, false, 2, true, false>,
             attention_forward_sm90_kernel<D, __half, false, 2, true, false>);
      else
        pick(attention_forward_sm90_kernel<D, __nv_bfloat16, false, 2, false, true>,
             attention_forward_sm90_kernel<D, __half, false, 2, false, true>);
      return;
    }
  }
  if constexpr (kWarpgroups == 3) {
    // No softcap with three warpgroups: its tanh needs registers that 160 do not hold (ptxas
    // spilled 120 bytes); the host picks two warpgroups for softcap calls.
    if (p.dtype == cuda::DType::bf16)
      launch(attention_forward_sm90_kernel<D, __nv_bfloat16, false, kWarpgroups>);
    else
      launch(attention_forward_sm90_kernel<D, __half, false, kWarpgroups>);
  } else if (p.dtype == cuda::DType::bf16) {
    if (softcap)
      launch(attention_forward_sm90_kernel<D, __nv_bfloat16, true, kWarpgroups>);
    else
      launch(attention_forward_sm90_kernel<D, __nv_bfloat16, false, kWarpgroups>);
  } else {
    if (softcap)
      launch(attention_forward_sm90_kernel<D, __half, true, kWarpgroups>);
    else
      launch(attention_forward_sm90_kernel<D, __half, false, kWarpgroups>);
  }
}

template <int D>
void forward_sm90(const ForwardTensorMaps& maps, const cuda::AttentionParams& p, const VarlenTiles& list,
                  int64_t list_capacity, const ForwardSchedule& schedule, cudaStream_t stream) {
  if constexpr (D == 64) {
    if (schedule.warpgroups == 3 && !(p.softcap > 0))
      return forward_sm90_launch<D, 3>(maps, p, list, list_capacity, schedule, stream);
  }
  forward_sm90_launch<D, 2>(maps, p, list, list_capacity, schedule, stream);
}

}  // namespace flash4::hopper
