#include "backend/cuda/attention.hpp"

#include <flash4/flash4.hpp>
#include <spdlog/spdlog.h>

#include "backend/cuda/cuda_check.hpp"
#include "core/error.hpp"
#include "ops/cuda/ops.hpp"

namespace adept::cuda {

namespace {

flash4_tensor column_block(const void* base, int64_t N, int64_t H, int64_t D, int64_t ld) {
  return flash4::strided(const_cast<void*>(base), FLASH4_BF16, {N, H, D}, {ld, D, 1});
}

flash4_varlen varlen_of(const AttentionDocuments& docs) {
  flash4_varlen v{};
  v.cu_seqlens_q = docs.cu_seqlens_device;
  v.cu_seqlens_k = docs.cu_seqlens_device;
  v.batch = int(docs.cu_seqlens.size() - 1);
  v.max_seqlen_q = docs.max_len;
  v.max_seqlen_k = docs.max_len;
  return v;
}

// q, k, v of the fused [N][(Hq + 2 Hkv) D] row (ld apart) into a forward's or backward's args.
template <class Args>
void set_qkv(Args& args, const __nv_bfloat16* qkv, int64_t ld, int64_t N, const AttentionShape& s) {
  args.q = column_block(qkv, N, s.Hq, s.D, ld);
  args.k = column_block(qkv + s.Hq * s.D, N, s.Hkv, s.D, ld);
  args.v = column_block(qkv + (s.Hq + s.Hkv) * s.D, N, s.Hkv, s.D, ld);
}

// A flash4 call's status: true when it ran; false when flash4 has no CUDA kernel for the call
// and the fallback can take over (said once, in the log); any other failure is an error.
bool ran_or_fall_back(flash4_status status, const char* pass, bool fallback) {
  if (status == FLASH4_UNSUPPORTED && fallback) {
    spdlog::info("attention {}: flash4 has no CUDA kernel here ({}); using the {}", pass, flash4_last_error(),
                 attention_impl_name(AttentionImpl::fallback));
    return false;
  }
  if (status != FLASH4_OK) fail("flash4 {} failed: {}", pass, flash4_last_error());
  return true;
}

flash4_options options_of(const AttentionShape& s) {
  flash4_options o{};
  o.softmax_scale = s.softmax_scale;
  o.causal = 1;
  o.window_left = s.window_left;
  o.window_right = -1;
  return o;
}

}  // namespace

const char* attention_impl_name(AttentionImpl impl) {
  return impl == AttentionImpl::flash4 ? "flash4" : "materialised-scores fallback";
}

AttentionScratchSize attention_scratch_size(const AttentionShape& s, int64_t max_tokens, int64_t max_len) {
  return {s.Hkv * max_len * max_len, s.Hkv * max_len * max_len, max_tokens * s.Hkv * s.D, s.Hq * max_tokens};
}

Attention::Attention(const AttentionShape& shape, Gemm& gemm, AttentionScratch scratch, AttentionImpl prefer)
    : shape_(shape), gemm_(gemm), scratch_(scratch), forward_impl_(prefer), backward_impl_(prefer) {}

bool Attention::flash4_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int64_t ld, int64_t N,
                               const AttentionDocuments& docs, cudaStream_t stream) {
  const AttentionShape& s = shape_;
  flash4::ForwardArgs f = flash4::forward_args();
  f.device = FLASH4_CUDA;
  f.stream = stream;
  set_qkv(f, qkv, ld, N, s);
  f.out = flash4::contiguous(out, FLASH4_BF16, {N, s.Hq, s.D});
  f.lse = flash4::contiguous(lse, FLASH4_F32, {s.Hq, N});
  f.options = options_of(s);
  f.varlen = varlen_of(docs);
  return ran_or_fall_back(::flash4_forward(&f), "forward", fallback_available());
}

bool Attention::flash4_backward(__nv_bfloat16* dqkv, const __nv_bfloat16* qkv, int64_t ld, const __nv_bfloat16* out,
                                const __nv_bfloat16* dout, const float* lse, int64_t N,
                                const AttentionDocuments& docs, cudaStream_t stream) {
  const AttentionShape& s = shape_;
  flash4::BackwardArgs b = flash4::backward_args();
  b.device = FLASH4_CUDA;
  b.stream = stream;
  set_qkv(b, qkv, ld, N, s);
  b.out = flash4::contiguous(const_cast<__nv_bfloat16*>(out), FLASH4_BF16, {N, s.Hq, s.D});
  b.dout = flash4::contiguous(const_cast<__nv_bfloat16*>(dout), FLASH4_BF16, {N, s.Hq, s.D});
  b.lse = flash4::contiguous(const_cast<float*>(lse), FLASH4_F32, {s.Hq, N});
  b.dq = column_block(dqkv, N, s.Hq, s.D, ld);
  b.dk = column_block(dqkv + s.Hq * s.D, N, s.Hkv, s.D, ld);
  b.dv = column_block(dqkv + (s.Hq + s.Hkv) * s.D, N, s.Hkv, s.D, ld);
  b.options = options_of(s);
  b.varlen = varlen_of(docs);
  b.deterministic = 1;
  return ran_or_fall_back(::flash4_backward(&b), "backward", fallback_available());
}

void Attention::forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int64_t ld, int64_t N,
                        const AttentionDocuments& docs, cudaStream_t stream) {
  if (forward_impl_ == AttentionImpl::flash4) {
    if (flash4_forward(out, lse, qkv, ld, N, docs, stream)) return;
    forward_impl_ = AttentionImpl::fallback;
  }
  fallback_forward(out, lse, qkv, ld, N, docs, stream);
}

void Attention::backward(__nv_bfloat16* dqkv, const __nv_bfloat16* qkv, int64_t ld, const __nv_bfloat16* out,
                         const __nv_bfloat16* dout, const float* lse, int64_t N, const AttentionDocuments& docs,
                         cudaStream_t stream) {
  if (backward_impl_ == AttentionImpl::flash4) {
    if (flash4_backward(dqkv, qkv, ld, out, dout, lse, N, docs, stream)) return;
    backward_impl_ = AttentionImpl::fallback;
  }
  fallback_backward(dqkv, qkv, ld, out, dout, lse, N, docs, stream);
}

// Per document (tokens s0 .. s0+L) and per query group j (query heads h·g + j of every KV
// head h), batched over the Hkv KV heads:
//   S[h] = scale · Q_j[h] K[h]ᵀ   (fp32)     P[h] = softmax(S[h]) (bf16)     O_j[h] = P[h] V[h]
void Attention::fallback_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* qkv, int64_t ld, int64_t N,
                                 const AttentionDocuments& docs, cudaStream_t stream) {
  if (!fallback_available()) fail("attention: flash4 is unavailable and no fallback scratch was planned");
  const AttentionShape& s = shape_;
  const int64_t g = s.Hq / s.Hkv, D = s.D, HqD = s.Hq * D;
  const __nv_bfloat16* q = qkv;
  const __nv_bfloat16* k = qkv + s.Hq * D;
  const __nv_bfloat16* v = qkv + (s.Hq + s.Hkv) * D;
  for (size_t d = 0; d + 1 < docs.cu_seqlens.size(); ++d) {
    const int64_t s0 = docs.cu_seqlens[d], L = docs.cu_seqlens[d + 1] - s0;
    if (L <= 0) continue;
    for (int64_t j = 0; j < g; ++j) {
      GemmArgs sc;  // S[h][i][k] = scale · Σ_d Q[i][h·g+j][d] K[k][h][d]
      sc.M = L, sc.N = L, sc.K = D, sc.batch = int(s.Hkv);
      sc.A = q + s0 * ld + j * D, sc.lda = ld, sc.stride_a = g * D;
      sc.B = k + s0 * ld, sc.trans_b = true, sc.ldb = ld, sc.stride_b = D;
      sc.D = scratch_.scores, sc.d_type = DType::f32, sc.ldd = L, sc.stride_d = L * L;
      sc.alpha = s.softmax_scale;
      gemm_.run(sc, stream);
      attention_softmax(scratch_.probs, lse + j * N + s0, g * N, scratch_.scores, s.Hkv, L, s.window_left, 0, stream);
      GemmArgs pv;  // O[i][h·g+j][:] = Σ_k P[h][i][k] V[k][h][:]
      pv.M = L, pv.N = D, pv.K = L, pv.batch = int(s.Hkv);
      pv.A = scratch_.probs, pv.lda = L, pv.stride_a = L * L;
      pv.B = v + s0 * ld, pv.ldb = ld, pv.stride_b = D;
      pv.D = out + s0 * HqD + j * D, pv.ldd = HqD, pv.stride_d = g * D;
      gemm_.run(pv, stream);
    }
  }
}

// Backward per document and query group, P recomputed from lse:
//   dV[h] += P[h]ᵀ dO_j[h];  dP = dO_j V[h]ᵀ;  dS = P ⊙ (dP − delta);
//   dQ_j[h] = scale · dS K[h];  dK[h] += scale · dSᵀ Q_j[h]
// dK, dV accumulate over the g query groups in fp32 scratch, converted once at the end.
void Attention::fallback_backward(__nv_bfloat16* dqkv, const __nv_bfloat16* qkv, int64_t ld,
                                  const __nv_bfloat16* out, const __nv_bfloat16* dout, const float* lse, int64_t N,
                                  const AttentionDocuments& docs, cudaStream_t stream) {
  if (!fallback_available()) fail("attention: flash4 is unavailable and no fallback scratch was planned");
  const AttentionShape& s = shape_;
  const int64_t g = s.Hq / s.Hkv, D = s.D, HqD = s.Hq * D, KvD = s.Hkv * D;
  const __nv_bfloat16* q = qkv;
  const __nv_bfloat16* k = qkv + s.Hq * D;
  const __nv_bfloat16* v = qkv + (s.Hq + s.Hkv) * D;
  attention_delta(scratch_.delta, out, dout, N, s.Hq, D, stream);
  for (size_t d = 0; d + 1 < docs.cu_seqlens.size(); ++d) {
    const int64_t s0 = docs.cu_seqlens[d], L = docs.cu_seqlens[d + 1] - s0;
    if (L <= 0) continue;
    for (int64_t j = 0; j < g; ++j) {
      const float beta = j == 0 ? 0.0f : 1.0f;
      GemmArgs sc;
      sc.M = L, sc.N = L, sc.K = D, sc.batch = int(s.Hkv);
      sc.A = q + s0 * ld + j * D, sc.lda = ld, sc.stride_a = g * D;
      sc.B = k + s0 * ld, sc.trans_b = true, sc.ldb = ld, sc.stride_b = D;
      sc.D = scratch_.scores, sc.d_type = DType::f32, sc.ldd = L, sc.stride_d = L * L;
      sc.alpha = s.softmax_scale;
      gemm_.run(sc, stream);
      attention_softmax(scratch_.probs, const_cast<float*>(lse) + j * N + s0, g * N, scratch_.scores, s.Hkv, L,
                        s.window_left, 1, stream);
      GemmArgs dv;  // dV[k][h][:] += Σ_i P[h][i][k] dO[i][h·g+j][:]
      dv.M = L, dv.N = D, dv.K = L, dv.batch = int(s.Hkv);
      dv.A = scratch_.probs, dv.trans_a = true, dv.lda = L, dv.stride_a = L * L;
      dv.B = dout + s0 * HqD + j * D, dv.ldb = HqD, dv.stride_b = g * D;
      dv.D = scratch_.dv + s0 * KvD, dv.d_type = DType::f32, dv.ldd = KvD, dv.stride_d = D;
      dv.beta = beta;
      gemm_.run(dv, stream);
      GemmArgs dp;  // dP[h][i][k] = Σ_d dO[i][h·g+j][d] V[k][h][d]
      dp.M = L, dp.N = L, dp.K = D, dp.batch = int(s.Hkv);
      dp.A = dout + s0 * HqD + j * D, dp.lda = HqD, dp.stride_a = g * D;
      dp.B = v + s0 * ld, dp.trans_b = true, dp.ldb = ld, dp.stride_b = D;
      dp.D = scratch_.scores, dp.d_type = DType::f32, dp.ldd = L, dp.stride_d = L * L;
      gemm_.run(dp, stream);
      attention_softmax_backward(scratch_.probs, scratch_.scores, scratch_.delta + j * N + s0, g * N, s.Hkv, L,
                                 stream);
      GemmArgs dq;  // dQ[i][h·g+j][:] = scale · Σ_k dS[h][i][k] K[k][h][:]
      dq.M = L, dq.N = D, dq.K = L, dq.batch = int(s.Hkv);
      dq.A = scratch_.probs, dq.lda = L, dq.stride_a = L * L;
      dq.B = k + s0 * ld, dq.ldb = ld, dq.stride_b = D;
      dq.D = dqkv + s0 * ld + j * D, dq.ldd = ld, dq.stride_d = g * D;
      dq.alpha = s.softmax_scale;
      gemm_.run(dq, stream);
      GemmArgs dk;  // dK[k][h][:] += scale · Σ_i dS[h][i][k] Q[i][h·g+j][:]
      dk.M = L, dk.N = D, dk.K = L, dk.batch = int(s.Hkv);
      dk.A = scratch_.probs, dk.trans_a = true, dk.lda = L, dk.stride_a = L * L;
      dk.B = q + s0 * ld + j * D, dk.ldb = ld, dk.stride_b = g * D;
      dk.D = scratch_.dk + s0 * KvD, dk.d_type = DType::f32, dk.ldd = KvD, dk.stride_d = D;
      dk.alpha = s.softmax_scale, dk.beta = beta;
      gemm_.run(dk, stream);
    }
  }
  const int64_t rows = docs.cu_seqlens.back() - docs.cu_seqlens.front();
  const int64_t first = docs.cu_seqlens.front();
  convert_f32_to_bf16_2d(dqkv + first * ld + s.Hq * D, ld, scratch_.dk + first * KvD, KvD, rows, KvD, stream);
  convert_f32_to_bf16_2d(dqkv + first * ld + (s.Hq + s.Hkv) * D, ld, scratch_.dv + first * KvD, KvD, rows, KvD,
                         stream);
}

bool flash4_cuda_supports(const AttentionShape& s, std::string* reason) {
  // 16 tokens in two documents: enough to reach the kernels' shape checks.
  const int64_t N = 16, ld = (s.Hq + 2 * s.Hkv) * s.D;
  const size_t qkv_bytes = size_t(N * ld) * 2, out_bytes = size_t(N * s.Hq * s.D) * 2;
  const size_t lse_bytes = size_t(s.Hq * N) * 4;
  unsigned char* mem = nullptr;
  ADEPT_CUDA_CHECK(cudaMalloc(&mem, 2 * qkv_bytes + 2 * out_bytes + lse_bytes + 256));
  ADEPT_CUDA_CHECK(cudaMemset(mem, 0, 2 * qkv_bytes + 2 * out_bytes + lse_bytes + 256));
  auto* qkv = reinterpret_cast<__nv_bfloat16*>(mem);
  auto* dqkv = reinterpret_cast<__nv_bfloat16*>(mem + qkv_bytes);
  auto* out = reinterpret_cast<__nv_bfloat16*>(mem + 2 * qkv_bytes);
  auto* dout = reinterpret_cast<__nv_bfloat16*>(mem + 2 * qkv_bytes + out_bytes);
  auto* lse = reinterpret_cast<float*>(mem + 2 * qkv_bytes + 2 * out_bytes);
  auto* cu = reinterpret_cast<int32_t*>(mem + 2 * qkv_bytes + 2 * out_bytes + lse_bytes);
  const int32_t cu_host[3] = {0, 10, 16};
  ADEPT_CUDA_CHECK(cudaMemcpy(cu, cu_host, sizeof(cu_host), cudaMemcpyHostToDevice));
  AttentionDocuments docs;
  docs.cu_seqlens_device = cu;
  docs.cu_seqlens = {0, 10, 16};
  docs.max_len = 10;
  Gemm no_fallback(nullptr, 0);  // the probe has no fallback scratch: flash4 or an error
  Attention probe(s, no_fallback, AttentionScratch{}, AttentionImpl::flash4);
  bool ok = true;
  try {
    probe.forward(out, lse, qkv, ld, N, docs, nullptr);
    probe.backward(dqkv, qkv, ld, out, dout, lse, N, docs, nullptr);
    ADEPT_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    ok = false;
    if (reason) *reason = e.what();
  }
  cudaFree(mem);
  return ok;
}

}  // namespace adept::cuda
