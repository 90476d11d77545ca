// The one cuBLASLt wrapper. Every matrix product of the CUDA backend goes through
// Gemm::run, stated in ROW-MAJOR terms (as the decoder's tensors are laid out):
//
//   D[M][N] = alpha · op(A)[M][K] · op(B)[K][N] + beta · C[M][N]  (+ bias[N] on every row)
//
// op(A) = Aᵀ when trans_a (A then stored [K][M]); likewise B. Leading dimensions are row
// strides in elements, so a column block of a wider matrix (q inside the fused qkv
// projection) is a plain operand. cuBLASLt is column-major: a row-major X is the
// column-major Xᵀ, so the wrapper computes Dᵀ = op(B)ᵀ op(A)ᵀ, swapping the operands.
// Descriptors and the heuristic's algorithm are cached per shape, so after the first
// step a call is a cublasLtMatmul and nothing else (and may be captured in a CUDA graph).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>

namespace adept::cuda {

enum class DType { bf16, f32 };

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  bool trans_a = false, trans_b = false;
  const void* A = nullptr;
  DType a_type = DType::bf16;
  int64_t lda = 0, stride_a = 0;  // stride_*: elements between batches
  const void* B = nullptr;
  DType b_type = DType::bf16;
  int64_t ldb = 0, stride_b = 0;
  void* D = nullptr;
  DType d_type = DType::bf16;
  int64_t ldd = 0, stride_d = 0;
  // C has D's type, leading dimension and batch stride; nullptr means D itself
  // (accumulation in place when beta = 1).
  const void* C = nullptr;
  float alpha = 1.0f, beta = 0.0f;
  const void* bias = nullptr;  // [N], D's type; fused as the cuBLASLt BIAS epilogue
  int batch = 1;
};

class Gemm {
 public:
  // workspace: device memory cuBLASLt may use (32 MiB is what Hopper kernels want).
  Gemm(void* workspace, size_t workspace_bytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void run(const GemmArgs& args, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::array<int64_t, 24>;
  Plan& plan(const GemmArgs& args);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  std::map<Key, Plan> plans_;
};

// Row-major linear layers over a Gemm, named as the CPU ops they replace
// (ops/cpu/ops.hpp: out[N][OC] = in[N][IC] · weight[OC][IC]ᵀ + bias). ld* are row
// strides (0 = dense). All bf16 except weight gradients, which accumulate in fp32.

// out = in · weightᵀ (+ bias) (+ residual): residual, when given, is added by the GEMM
// itself (beta = 1), so "x2 = x + attn · Woᵀ" is one call. It is read with out's leading
// dimension (cuBLASLt's C and D share one layout here).
void linear_forward(Gemm& gemm, void* out, int64_t ld_out, const void* in, int64_t ld_in, const void* weight,
                    const void* bias, const void* residual, int64_t N, int64_t IC, int64_t OC, cudaStream_t stream);
// din = dout · weight  (beta = 1 adds into din instead of overwriting it)
void linear_backward_input(Gemm& gemm, void* din, int64_t ld_din, const void* dout, int64_t ld_dout,
                           const void* weight, int64_t N, int64_t IC, int64_t OC, float beta, cudaStream_t stream);
// dweight[OC][IC] += doutᵀ · in, fp32 accumulation
void linear_backward_weight(Gemm& gemm, float* dweight, const void* dout, int64_t ld_dout, const void* in,
                            int64_t ld_in, int64_t N, int64_t IC, int64_t OC, cudaStream_t stream);

}  // namespace adept::cuda
