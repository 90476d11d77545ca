// wgmma shapes of the Hopper backward's split-query d 256 step (backward_sm90.cuh,
// p.d256_split_queries), beside the ones in ptx_sm90.cuh and in the same style: one function
// per shape, written with its FLASH4_WGMMA, `accumulate` = 0 overwrites d (scale-d false).
// Layouts, descriptors and the accumulator register order are those described at the top of
// ptx_sm90.cuh.
//
// Why these two: each consumer warpgroup computes S^T and dP^T for its own 32 of the step's 64
// queries (instead of both computing all 64), so the gradients read P^T and dS^T from shared
// memory rather than from registers:
//   S^T = K Q^T:   m64n32k16, A (K) and B (Q) in shared memory, both K-major;
//   dV += P^T dO:  m64n128k16, A (P^T, [keys][queries]) K-major, B (dO) MN-major
//                  (imm-trans-b = 1), as the register form's B.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "hopper/ptx_sm90.cuh"  // FLASH4_WGMMA and the accumulator lists

#define FLASH4_WGMMA_D16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define FLASH4_WGMMA_D16_OUT \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])

namespace flash4::hopper {

// D[64 x 32] (+)= A[64 x 16] B[16 x 32], A and B in shared memory, both K-major.
template <typename T>
__device__ __forceinline__ void wgmma_ss_m64n32k16(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  FLASH4_WGMMA(T, "m64n32k16", "%18", FLASH4_WGMMA_D16 ", %16, %17, p, 1, 1, 0, 0;\n}\n",
               FLASH4_WGMMA_D16_OUT : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 128] (+)= A[64 x 16] B[16 x 128], A in shared memory K-major, B in shared memory
// MN-major (imm-trans-a = 0, imm-trans-b = 1).
template <typename T>
__device__ __forceinline__ void wgmma_ss_nt_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                       int accumulate) {
  FLASH4_WGMMA(T, "m64n128k16", "%66", FLASH4_WGMMA_D64 ", %64, %65, p, 1, 1, 0, 1;\n}\n",
               FLASH4_WGMMA_D64_OUT : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

}  // namespace flash4::hopper
