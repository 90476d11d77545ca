// wgmma shapes of the Hopper forward at head dim 256 (forward_sm90.cuh), beside the ones in
// ptx_sm90.cuh and in the same style: one function per shape, written with its FLASH4_WGMMA,
// `accumulate` = 0 overwrites d (scale-d false). Layouts, descriptors and the accumulator
// register order are those described at the top of ptx_sm90.cuh.
//
// Why these two: at d = 256 the O accumulator of a consumer warpgroup (64 x 256 fp32) takes
// 128 registers a thread, so the key tile shrinks to 80 (forward_sm90.cuh, ForwardSm90Config):
//   S = Q K^T:  m64n80k16, A (Q) and B (K) in shared memory, both K-major (N = 80 keys is a
//               multiple of 8, as wgmma asks of every 16-bit N from 8 to 256);
//   O += P V:   m64n256k16, A (P) from registers, B (V) in shared memory MN-major: the 256
//               head-dim columns are four 64-wide 128B-swizzle blocks, LBO bytes apart.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "hopper/ptx_sm90.cuh"  // FLASH4_WGMMA and the accumulator lists

namespace flash4::hopper {

// D[64 x 80] (+)= A[64 x 16] B[16 x 80], A and B in shared memory, both K-major.
template <typename T>
__device__ __forceinline__ void wgmma_ss_m64n80k16(float (&d)[40], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n80k16", "%42", FLASH4_WGMMA_D40 ", %40, %41, p, 1, 1, 0, 0;\n}\n",
               FLASH4_WGMMA_D40_OUT : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 256] (+)= A[64 x 16] B[16 x 256], A from registers (mma.sync's A fragment layout per
// warp), B in shared memory, MN-major (transposed: imm-trans-b = 1).
template <typename T>
__device__ __forceinline__ void wgmma_rs_m64n256k16(float (&d)[128], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n256k16", "%133", FLASH4_WGMMA_D128 ", {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n",
               FLASH4_WGMMA_D128_OUT : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

}  // namespace flash4::hopper
