/* flash4 — exact fused attention, C ABI.
 *
 * Every entry point returns a flash4_status and never throws or aborts. On failure,
 * flash4_last_error() returns a message (thread-local, valid until the next call on
 * the same thread) that names the argument or tensor at fault.
 *
 * Layout conventions
 * ------------------
 * Tensors are non-owning views: a data pointer, a dtype, a rank and per-dimension
 * shape and stride, strides counted in ELEMENTS (not bytes). The last dimension (the
 * head dimension; for lse the sequence) must be contiguous (stride 1). Any other
 * stride is allowed, so both BSHD ([batch, seq, head, dim]) and BHSD memory orders
 * are described by the same logical shape [B, S, H, D] with different strides.
 *
 *   dense:   q [B, Sq, Hq, Dqk]   k [B, Sk, Hkv, Dqk]   v [B, Sk, Hkv, Dv]
 *            out [B, Sq, Hq, Dv]  lse [B, Hq, Sq] (fp32)
 *   varlen:  (cu_seqlens_q != NULL) sequences are packed along one token axis:
 *            q [Tq, Hq, Dqk]  k [Tk, Hkv, Dqk]  v [Tk, Hkv, Dv]  out [Tq, Hq, Dv]
 *            lse [Hq, Tq]; sequence b spans tokens cu_seqlens_q[b] .. cu_seqlens_q[b+1].
 *            cu_seqlens start at >= 0 and never decrease; tokens past cu_seqlens[batch]
 *            belong to no sequence (forward leaves their out/lse untouched).
 *            max_seqlen_q/k bound the sequence lengths (0 = not given; the CPU checks
 *            nonzero bounds, CUDA backends may require them).
 *   seqused_k (optional, dense or varlen) limits sequence b to its first seqused_k[b]
 *            keys, and that count is the Sk of the causal / window alignment. With dense
 *            tensors varlen.batch must then be 0 or B.
 *   paged:   (page_table != NULL, forward only) k, v [num_pages, page_size, Hkv, D];
 *            page_table [B, max_pages_per_seq]; sequence b's key j lives in page
 *            page_table[b][j / page_size] at slot j % page_size; its key count is
 *            seqused_k[b] (required with a page table).
 *
 * Hq must be a multiple of Hkv (GQA / MQA). Query head h reads KV head h / (Hq / Hkv).
 *
 * Semantics (per batch b and query head h; i query index, j key index):
 *   s_ij = scale * <q_i, k_j>;  if softcap > 0: s_ij = softcap * tanh(s_ij / softcap)
 *   masked: causal (bottom-right aligned: j > i + Sk - Sq is masked), sliding window
 *           (j < i + Sk - Sq - window_left or j > i + Sk - Sq + window_right, a negative
 *           window side meaning unbounded), keys past the sequence's length.
 *   p_ij = exp(s_ij) / (sum_j' exp(s_ij') + [sink] exp(sink_h))
 *   out_i = sum_j p_ij v_j;  lse_i = log(sum_j exp(s_ij) + [sink] exp(sink_h))
 *   A row with no visible key and no sink has out = 0 and lse = -inf (and zero gradients);
 *   with a sink it has out = 0 and lse = sink_h.
 *   Backward: dq, dk, dv are overwritten (never accumulated), every element of them:
 *   keys past seqused_k and tokens of no sequence get 0. dK/dV of a KV head sum over
 *   the query heads that share it.
 *
 * Devices: FLASH4_CPU runs the float64-accumulating reference (all dtypes: fp64, fp32,
 * fp16, bf16). FLASH4_CUDA takes device pointers (tensors, cu_seqlens, page table, sink) and
 * bf16/fp16 inputs; fp32 accumulation; it runs on `stream`.
 */
#ifndef FLASH4_FLASH4_H
#define FLASH4_FLASH4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLASH4_MAX_RANK 4

typedef enum flash4_status {
  FLASH4_OK = 0,
  FLASH4_INVALID_ARGUMENT = 1, /* shapes, strides, dtypes or pointers are inconsistent */
  FLASH4_UNSUPPORTED = 2,      /* valid, but this combination is not implemented here */
  FLASH4_DEVICE_ERROR = 3,     /* a CUDA call failed; the message names it */
  FLASH4_INTERNAL = 4
} flash4_status;

/* FLASH4_F64 is accepted by the CPU reference only (for exact gradient checks). */
typedef enum flash4_dtype {
  FLASH4_F32 = 0,
  FLASH4_F16 = 1,
  FLASH4_BF16 = 2,
  FLASH4_F64 = 3
} flash4_dtype;

typedef enum flash4_device { FLASH4_CPU = 0, FLASH4_CUDA = 1 } flash4_device;

/* Which implementation runs a call. AUTO picks the fastest that supports it on CUDA; on
 * the CPU, the float64 reference for f64 tensors and the float32 CPU kernels otherwise. */
typedef enum flash4_backend {
  FLASH4_BACKEND_AUTO = 0,
  FLASH4_BACKEND_REFERENCE = 1, /* CPU float64 reference */
  FLASH4_BACKEND_PORTABLE = 2,  /* sm80+ mma.sync kernels */
  FLASH4_BACKEND_HOPPER = 3,    /* sm90a wgmma/TMA kernels */
  FLASH4_BACKEND_CPU = 4        /* CPU float32 kernels (vectorised, FMA-unit exp2) */
} flash4_backend;

typedef struct flash4_tensor {
  void* data; /* NULL = absent (only allowed where documented) */
  flash4_dtype dtype;
  int rank;
  int64_t shape[FLASH4_MAX_RANK];
  int64_t stride[FLASH4_MAX_RANK]; /* in elements */
} flash4_tensor;

typedef struct flash4_options {
  float softmax_scale; /* 0 means 1/sqrt(Dqk) */
  int causal;          /* bottom-right aligned */
  int window_left;     /* < 0: unbounded */
  int window_right;    /* < 0: unbounded */
  float softcap;       /* 0: off */
  const float* sink;   /* [Hq] learnable sink logits (fp32), or NULL */
} flash4_options;

typedef struct flash4_varlen {
  const int32_t* cu_seqlens_q; /* [batch + 1], or NULL for dense tensors */
  const int32_t* cu_seqlens_k; /* [batch + 1], or NULL for dense / paged */
  const int32_t* seqused_k;    /* [batch], optional (required when paged) */
  int batch;
  int max_seqlen_q;
  int max_seqlen_k;
} flash4_varlen;

typedef struct flash4_paged_kv {
  const int32_t* page_table; /* [batch, max_pages_per_seq], or NULL */
  int64_t max_pages_per_seq;
  int page_size;
} flash4_paged_kv;

typedef struct flash4_tuning {
  /* FA4 softmax techniques, for A/B benchmarking. Defaults (zero-initialised) are the
   * library's tuned choices. */
  int exp2_emulation;      /* 0 default, 1 force off, 2 force on */
  float rescale_threshold; /* tau in log2 units; 0 = default (8); < 0 = always rescale */
} flash4_tuning;

typedef struct flash4_forward_args {
  flash4_device device;
  void* stream; /* cudaStream_t for FLASH4_CUDA; ignored on CPU */
  flash4_backend backend;
  flash4_tensor q, k, v;
  flash4_tensor out;
  flash4_tensor lse; /* optional: data NULL to skip */
  flash4_options options;
  flash4_varlen varlen;
  flash4_paged_kv paged;
  flash4_tuning tuning;
} flash4_forward_args;

typedef struct flash4_backward_args {
  flash4_device device;
  void* stream;
  flash4_backend backend;
  flash4_tensor q, k, v, out, dout;
  flash4_tensor lse; /* required: the forward's LSE */
  flash4_tensor dq, dk, dv;
  float* dsink; /* [Hq] fp32, written (not accumulated); NULL skips it; must be NULL
                  when options.sink is NULL. dsink_h = -sum_i exp(sink_h - lse_i) D_i over
                  every row i of head h (all batches), D_i = dout_i . out_i */
  flash4_options options;
  flash4_varlen varlen;
  int deterministic; /* bit-identical results across runs */
} flash4_backward_args;

/* Fill args with defaults: zero pointers, window -1/-1, backend AUTO. */
void flash4_forward_args_init(flash4_forward_args* args);
void flash4_backward_args_init(flash4_backward_args* args);

flash4_status flash4_forward(const flash4_forward_args* args);
flash4_status flash4_backward(const flash4_backward_args* args);

/* Message of the last call on this thread if it failed; "" if it succeeded (each
 * call clears it) or if there was none. */
const char* flash4_last_error(void);

/* Name of the implementation the last successful call on this thread ran
 * ("reference", "cpu", "portable", "hopper"). */
const char* flash4_last_backend(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASH4_FLASH4_H */
