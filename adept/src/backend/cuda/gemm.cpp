#include "backend/cuda/gemm.hpp"

#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.hpp"
#include "core/error.hpp"

namespace adept::cuda {

namespace {

cudaDataType_t cuda_type(DType t) { return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

// Largest power of two (up to 256) dividing the address: the heuristic must only offer
// kernels that accept the operand's real alignment (a k block inside qkv may be 16-byte
// aligned only).
int64_t alignment(const void* p) {
  auto a = reinterpret_cast<uintptr_t>(p);
  int64_t align = 256;
  while (align > 1 && a % uintptr_t(align) != 0) align /= 2;
  return align;
}

cublasLtMatrixLayout_t make_layout(DType type, int64_t rows, int64_t cols, int64_t ld, int batch, int64_t stride) {
  cublasLtMatrixLayout_t layout;
  ADEPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, cuda_type(type), uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    int32_t count = batch;
    ADEPT_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    ADEPT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                        &stride, sizeof(stride)));
  }
  return layout;
}

}  // namespace

Gemm::Gemm(void* workspace, size_t workspace_bytes) : workspace_(workspace), workspace_bytes_(workspace_bytes) {
  ADEPT_CUBLAS_CHECK(cublasLtCreate(&handle_));
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.d);
    cublasLtMatmulDescDestroy(p.op);
  }
  if (handle_) cublasLtDestroy(handle_);
}

Gemm::Plan& Gemm::plan(const GemmArgs& g) {
  const void* C = g.C ? g.C : g.D;
  Key key{g.M, g.N, g.K, g.trans_a, g.trans_b, int64_t(g.a_type), g.lda, g.stride_a, int64_t(g.b_type), g.ldb,
          g.stride_b, int64_t(g.d_type), g.ldd, g.stride_d, g.batch, g.bias != nullptr, g.beta != 0.0f,
          alignment(g.A), alignment(g.B), alignment(C), alignment(g.D), g.bias ? alignment(g.bias) : 0, 0, 0};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;

  // Column-major view: Dᵀ[N][M] = op(B)ᵀ · op(A)ᵀ; the stored operands keep their op flags.
  Plan p;
  ADEPT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;   // cuBLAS "A" = our B
  cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS "B" = our A
  ADEPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  ADEPT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  if (g.bias) {
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    ADEPT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    cudaDataType_t bias_type = cuda_type(g.d_type);
    ADEPT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  // Stored shapes, column-major: row-major B [K][N] is N×K; transposed B [N][K] is K×N.
  p.a = g.trans_b ? make_layout(g.b_type, g.K, g.N, g.ldb, g.batch, g.stride_b)
                  : make_layout(g.b_type, g.N, g.K, g.ldb, g.batch, g.stride_b);
  p.b = g.trans_a ? make_layout(g.a_type, g.M, g.K, g.lda, g.batch, g.stride_a)
                  : make_layout(g.a_type, g.K, g.M, g.lda, g.batch, g.stride_a);
  p.d = make_layout(g.d_type, g.N, g.M, g.ldd, g.batch, g.stride_d);

  cublasLtMatmulPreference_t pref;
  ADEPT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = workspace_bytes_;
  ADEPT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  uint32_t align_a = uint32_t(alignment(g.B)), align_b = uint32_t(alignment(g.A));
  uint32_t align_c = uint32_t(alignment(C)), align_d = uint32_t(alignment(g.D));
  ADEPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                          sizeof(align_a)));
  ADEPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                          sizeof(align_b)));
  ADEPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                          sizeof(align_c)));
  ADEPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                          sizeof(align_d)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("cuBLASLt has no algorithm for D[{}][{}] = op(A)[{}][{}]·op(B) (trans {}/{}, ld {}/{}/{}, batch {}): {}",
         g.M, g.N, g.M, g.K, g.trans_a, g.trans_b, g.lda, g.ldb, g.ldd, g.batch, cublasLtGetStatusString(status));
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void Gemm::run(const GemmArgs& g, cudaStream_t stream) {
  if (g.M <= 0 || g.N <= 0 || g.K <= 0) fail("gemm: empty shape M={} N={} K={}", g.M, g.N, g.K);
  Plan& p = plan(g);
  if (g.bias)
    ADEPT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
  const void* C = g.C ? g.C : g.D;
  ADEPT_CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &g.alpha, g.B, p.a, g.A, p.b, &g.beta, C, p.d, g.D, p.d, &p.algo,
                                    workspace_, workspace_bytes_, stream));
}

void linear_forward(Gemm& gemm, void* out, int64_t ld_out, const void* in, int64_t ld_in, const void* weight,
                    const void* bias, const void* residual, int64_t N, int64_t IC, int64_t OC, cudaStream_t stream) {
  GemmArgs g;
  g.M = N, g.N = OC, g.K = IC;
  g.A = in, g.lda = ld_in ? ld_in : IC;
  g.B = weight, g.trans_b = true, g.ldb = IC;
  g.D = out, g.ldd = ld_out ? ld_out : OC;
  g.bias = bias;
  if (residual) g.C = residual, g.beta = 1.0f;
  gemm.run(g, stream);
}

void linear_backward_input(Gemm& gemm, void* din, int64_t ld_din, const void* dout, int64_t ld_dout,
                           const void* weight, int64_t N, int64_t IC, int64_t OC, float beta, cudaStream_t stream) {
  GemmArgs g;
  g.M = N, g.N = IC, g.K = OC;
  g.A = dout, g.lda = ld_dout ? ld_dout : OC;
  g.B = weight, g.ldb = IC;
  g.D = din, g.ldd = ld_din ? ld_din : IC;
  g.beta = beta;
  gemm.run(g, stream);
}

void linear_backward_weight(Gemm& gemm, float* dweight, const void* dout, int64_t ld_dout, const void* in,
                            int64_t ld_in, int64_t N, int64_t IC, int64_t OC, cudaStream_t stream) {
  GemmArgs g;
  g.M = OC, g.N = IC, g.K = N;
  g.A = dout, g.trans_a = true, g.lda = ld_dout ? ld_dout : OC;
  g.B = in, g.ldb = ld_in ? ld_in : IC;
  g.D = dweight, g.d_type = DType::f32, g.ldd = IC;
  g.beta = 1.0f;
  gemm.run(g, stream);
}

}  // namespace adept::cuda
