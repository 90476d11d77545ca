// CUDA layers of the decoder, one launcher per CPU reference op (ops/cpu/ops.hpp), with
// the same argument order and shape names. Activations and weights are bf16, statistics
// (rstd, lse, loss) and every accumulation are fp32, and parameter gradients accumulate
// into fp32 buffers. As on the CPU: backward launchers ACCUMULATE (+=) into parameter
// gradients (null means frozen: skip) and OVERWRITE input gradients unless stated.
// Reductions over tokens are deterministic: per-block partial sums into `partials`
// scratch, then summed in a fixed order (never atomics).
//
// Launchers are plain host functions (this header compiles as C++ without nvcc); each
// enqueues on `stream` and checks the launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace adept::cuda {

using bf16 = __nv_bfloat16;

// Row blocks of the deterministic token reductions: partial sums are [kReduceBlocks][C].
inline constexpr int kReduceBlocks = 1024;

// ---- embedding ------------------------------------------------------------------
// out[N][C] = wte[ids[n]][C]
void embedding_forward(bf16* out, const int32_t* ids, const bf16* wte, int64_t N, int64_t C, cudaStream_t stream);

// Tokens grouped by id (computed on the host with the batch): the tokens of segment s are
// sorted_tokens[segment_start[s] .. segment_start[s+1]), in token order, all with id
// segment_id[s]. Summing each segment in that order makes embedding backward
// deterministic without atomics.
struct EmbeddingSegments {
  std::vector<int32_t> sorted_tokens, segment_start, segment_id;
};
EmbeddingSegments embedding_segments(const int32_t* ids, int64_t N);
// dwte[ids[n]] += dout[n] (fp32 rows). num_segments is read on the device (at most N
// blocks run), so the launch shape depends only on N.
void embedding_backward(float* dwte, const bf16* dout, const int32_t* sorted_tokens, const int32_t* segment_start,
                        const int32_t* segment_id, const int32_t* num_segments, int64_t N, int64_t C,
                        cudaStream_t stream);

// ---- RMSNorm ----------------------------------------------------------------------
// out[N][C] = in[n] · rstd[n] · weight, rstd[n] = 1/sqrt(mean(in[n]²) + eps). C % 8 == 0.
void rmsnorm_forward(bf16* out, float* rstd, const bf16* in, const bf16* weight, int64_t N, int64_t C, double eps,
                     cudaStream_t stream);
// din = dresidual + ∂/∂in (dresidual may be null, or alias din: the residual stream's
// gradient is accumulated in the same pass). dweight (fp32) accumulated, may be null.
// partials: kReduceBlocks · C floats of scratch.
void rmsnorm_backward(bf16* din, float* dweight, float* partials, const bf16* dout, const bf16* in,
                      const bf16* weight, const float* rstd, const bf16* dresidual, int64_t N, int64_t C,
                      cudaStream_t stream);

// ---- RoPE (rotate_half) and Qwen3's per-head q/k RMSNorm ----------------------------
// qkv[N][ld] holds Hq query heads then Hkv key heads (then values) of D each, from
// column 0. cos/sin: [positions][D/2] fp32, the CPU reference's table (rope_table).
// In place: q and k heads rotated by the angle at pos[n] (backward: by minus it).
void rope_forward(bf16* qkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld,
                  int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t stream);
void rope_backward(bf16* dqkv, const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld,
                   int64_t Hq, int64_t Hkv, int64_t D, cudaStream_t stream);
// Qwen3: out's q and k heads = rope(rmsnorm_head(in)), values copied; rstd[N][Hq+Hkv].
// D ≤ 256.
void qk_norm_rope_forward(bf16* out, float* rstd, const bf16* in, const bf16* q_weight, const bf16* k_weight,
                          const int32_t* pos, const float* cos, const float* sin, int64_t N, int64_t ld, int64_t Hq,
                          int64_t Hkv, int64_t D, double eps, cudaStream_t stream);
// In place on dqkv's q and k heads: d ← normᵀ(ropeᵀ(d)), `in` being the forward's input.
// dq_weight / dk_weight accumulated (fp32, may be null). partials: 2 · kReduceBlocks · D.
void qk_norm_rope_backward(bf16* dqkv, float* dq_weight, float* dk_weight, float* partials, const bf16* in,
                           const bf16* q_weight, const bf16* k_weight, const float* rstd, const int32_t* pos,
                           const float* cos, const float* sin, int64_t N, int64_t ld, int64_t Hq, int64_t Hkv,
                           int64_t D, cudaStream_t stream);

// ---- SwiGLU -------------------------------------------------------------------------
// gateup[N][2I] is the fused gate|up projection: act[n][i] = silu(gateup[n][i]) · gateup[n][I+i]
void swiglu_forward(bf16* act, const bf16* gateup, int64_t N, int64_t I, cudaStream_t stream);
// dgateup[N][2I] (overwritten) from dact[N][I]
void swiglu_backward(bf16* dgateup, const bf16* dact, const bf16* gateup, int64_t N, int64_t I,
                     cudaStream_t stream);

// ---- cross-entropy ------------------------------------------------------------------
// One chunk of tokens: logits[N][V] bf16, all math in fp32. loss[n] = logsumexp − z[target]
// (0 when the target is ignore_index); dlogits (bf16, may be null) = grad_scale ·
// (softmax − onehot), zero rows for ignored targets. dlogits may be logits itself (in
// place). grad_scale is read on the device. V < 2³¹.
void cross_entropy_forward_backward(bf16* dlogits, float* loss, const bf16* logits, const int32_t* targets,
                                    int64_t N, int64_t V, int32_t ignore_index, const float* grad_scale,
                                    cudaStream_t stream);
// loss_sum += Σ loss[n], count += #(targets != ignore_index), in a fixed order.
void loss_accumulate(double* loss_sum, int64_t* count, const float* loss, const int32_t* targets, int64_t N,
                     int32_t ignore_index, cudaStream_t stream);

// ---- small helpers ------------------------------------------------------------------
// dst[c] += Σ_b partials[b][c] over b < blocks, in a fixed order (runs of rows summed in
// order, the runs then added in order): the same bits on every run and every GPU.
void reduce_partials(float* dst, const float* partials, int blocks, int64_t C, cudaStream_t stream);
// dbias[C] += Σ_n dout[n][c] (dout rows ld apart). partials: kReduceBlocks · C.
void bias_backward(float* dbias, float* partials, const bf16* dout, int64_t N, int64_t C, int64_t ld,
                   cudaStream_t stream);
void convert_f32_to_bf16(bf16* dst, const float* src, int64_t n, cudaStream_t stream);
void convert_bf16_to_f32(float* dst, const bf16* src, int64_t n, cudaStream_t stream);
// dst[r][c] (ld_dst) = src[r][c] (ld_src), fp32 → bf16
void convert_f32_to_bf16_2d(bf16* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows, int64_t cols,
                            cudaStream_t stream);
// Normal(0, std) from a counter-based hash of (seed, index): the same values on any GPU.
// master (fp32) may be null.
void fill_normal(bf16* w, float* master, int64_t n, uint64_t seed, float std, cudaStream_t stream);
void fill_constant(bf16* w, float* master, int64_t n, float value, cudaStream_t stream);

// ---- optimizer ----------------------------------------------------------------------
// Per-step scalars that live on the device, so that the clip, the skip decision and the
// bias correction need no host round trip. The host writes lr and max_norm; the rest is
// computed by grad_norm_finalize.
struct StepState {
  double lr = 0.0;
  double max_norm = 0.0;    // <= 0: no clipping
  double loss_sum = 0.0;    // over the step's micro-batches
  int64_t count = 0;        // counted targets
  double grad_norm = 0.0;   // before clipping
  float clip_scale = 1.0f;
  int32_t skip = 0;         // loss or gradient not finite: no update
  int64_t t = 0;            // updates applied so far (AdamW's bias-correction step)
  float bias_correction1 = 1.0f, bias_correction2 = 1.0f;
};

// One trainable tensor of the multi-tensor AdamW: its bf16 weights at weight_offset (into
// the bf16 weights), its fp32 master / gradient / moments at state_offset.
struct AdamWTensor {
  int64_t weight_offset = 0, state_offset = 0, numel = 0, row_len = 0;
  int64_t row_multiplier_offset = -1;  // into row_multipliers, -1 = none
  float lr_multiplier = 1.0f, weight_decay = 0.0f;
};
// A block's work: elements [begin, end) of tensor `tensor`.
struct AdamWChunk {
  int32_t tensor = 0;
  int64_t begin = 0, end = 0;
};

// Σ g² over grads[n] into partials[kReduceBlocks] (fp64), then finalize: grad_norm,
// skip (loss_sum or norm not finite), clip_scale, and when not skipped t += 1 and the
// bias corrections 1 − βᵗ.
void grad_norm_partials(double* partials, const float* grads, int64_t n, cudaStream_t stream);
void grad_norm_finalize(StepState* state, const double* partials, float beta1, float beta2, cudaStream_t stream);
// One launch over every trainable tensor: g ← clip_scale · g; m, v moments; master ←
// master·(1 − lr·wd) − lr·m̂/(√v̂ + eps) with lr = state.lr · tensor multiplier · row
// multiplier; weights ← bf16(master). Does nothing when state.skip.
void adamw_update(float* master, bf16* weights, const float* grads, float* m, float* v, const AdamWTensor* tensors,
                  const AdamWChunk* chunks, int64_t num_chunks, const float* row_multipliers,
                  const StepState* state, float beta1, float beta2, float eps, cudaStream_t stream);

// Data parallelism (ZeRO-1): after AdamW has written each rank's updated bf16 weights
// into `staging` (the flat fp32-state layout, all-gathered across ranks), copy every
// trainable tensor from staging[state_offset + j] to weights[weight_offset + j]. The
// table's chunks cover whole tensors. Does nothing when state.skip (staging then holds
// no update).
void copy_staging_to_weights(bf16* weights, const bf16* staging, const AdamWTensor* tensors, const AdamWChunk* chunks,
                             int64_t num_chunks, const StepState* state, cudaStream_t stream);

// ---- attention without flash4 (materialised scores, for when flash4 has no CUDA path) --
// Scores S[heads][Lq][Lk] fp32 (already scaled) of one document. Writes P (bf16, same
// layout) = softmax over the visible keys (causal, window_left < 0 = unbounded), 0 on
// masked keys. mode 0: computes lse and writes it; mode 1: reads lse (backward recompute).
// lse of head h, query i is at lse[h·lse_head_stride + i].
void attention_softmax(bf16* P, float* lse, int64_t lse_head_stride, const float* S, int64_t heads, int64_t L,
                       int window_left, int mode, cudaStream_t stream);
// In place over P: dS = P ⊙ (dP − delta_i), delta of head h, query i at
// delta[h·delta_head_stride + i].
void attention_softmax_backward(bf16* P_to_dS, const float* dP, const float* delta, int64_t delta_head_stride,
                                int64_t heads, int64_t L, cudaStream_t stream);
// delta[h][n] = Σ_d dout[n][h][d] · out[n][h][d]  ([Hq][N] like lse)
void attention_delta(float* delta, const bf16* out, const bf16* dout, int64_t N, int64_t Hq, int64_t D,
                     cudaStream_t stream);

}  // namespace adept::cuda
