// flash4's Hopper (sm90a) backward, host side: what it covers, its tensor maps, params,
// workspace and the kernel sequence (varlen work list, rows preprocess, main kernel, the
// portable backward's dQ conversion and zero rows). Deterministic calls run the same sequence
// with the deterministic dQ kernel (backward_sm90.cuh), its zeroed counts and ticket, and
// (varlen) the work list in its order. On by default for the calls it covers (first run on an H200, 2026-11-30:
// scripts/hopper_bwd_check.sh, 43/43 tests, 1.3-1.6x the portable backward);
// FLASH4_HOPPER_BWD=0 turns it off for A/B runs (api.cpp asks hopper_backward_preferred).
// dQ is added by bulk reduce-add from shared memory (hopper::DqAdd::bulk; the default since
// scripts/hopper_dq_check.sh on an H200, 2026-12-01: every backward suite passes, 1.07-1.35x
// the atomics); FLASH4_HOPPER_DQ=atomics (read at each call) adds it by float2 atomics
// instead, for A/B runs. Non-deterministic calls hand each consumer warpgroup its staging
// buffers on barriers of its own (DqAdd::bulk_per_warpgroup; the default since
// scripts/hopper_dq_warpgroup_check.sh on an H200, 2026-12-01: 114 tests vs float64,
// 1.02-1.04x the lock-step hand-over dense, 1.00 varlen); FLASH4_HOPPER_DQ=bulk keeps both
// warpgroups in step, as deterministic calls always do. FLASH4_LOG=1 says which ran.
// Sink logits (options.sink) need nothing of the main kernel (the forward's lse holds the
// sink); with dsink asked for, the rows preprocess writes each row's term and the portable
// finish sums them per head in a fixed order (backward_sm90.cuh, "Sink"); passed
// scripts/hopper_bwd_sink_check.sh on an H200 (2026-12-01), with softcap.
// dQ in FlashAttention-4's flat layout (hopper::DqAdd::flat: one 1-D bulk reduce-add per tile,
// its own finish kernel) is the default at d 64 / 128 since scripts/hopper_dq_flat_check.sh on
// an H200 (2026-12-02: 169 tests vs float64, bwd 1.049x the tensor-map bulk path geomean,
// 1.00-1.13; deterministic d 64 1.00-1.06); FLASH4_HOPPER_DQ=per_warpgroup or =bulk select
// the tensor-map layout ([tokens][Hq][d]) with its per-warpgroup or lock-step hand-over.
// d 256 (not deterministic) likewise since scripts/hopper_d256_flat_check.sh (H200,
// 2026-12-02: 1.154x its float2 atomics, 1.07-1.20); FLASH4_HOPPER_DQ=atomics keeps those.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>

#include "backends.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/fa4_softmax.cuh"
#include "cuda/kernels.hpp"
#include "cuda/params.hpp"
#include "cuda/workspace.hpp"
#include "hopper/backward_sm90.hpp"
#include "hopper/host.hpp"
#include "hopper/launch.hpp"
#include "hopper/varlen_tiles.hpp"
#include "validate.hpp"

namespace flash4::detail {
namespace {

// Rows of a key block (the k / v tensor maps' box) of the kernel for head dim `kernel_dim`.
int key_block_rows(int kernel_dim) {
  return kernel_dim == 256 ? hopper::kBackwardSplitKeyBoxRows : hopper::kTmaBoxRows;
}

// Why the Hopper backward does not run `a` ("" when it does).
std::string backward_gap(const flash4_backward_args& a, const ProblemShape& shape) {
  if (a.q.dtype != FLASH4_BF16 && a.q.dtype != FLASH4_F16) return "dtype is not bf16 / fp16";
  if (std::string gap = seqused_gap(a.varlen); !gap.empty()) return gap;
  if (!(shape.softmax_scale > 0)) return "softmax_scale <= 0 is not covered";
  // d 256: not for short deterministic sequences, nor with FLASH4_HOPPER_BWD_D256=0 (backward_kernel_dim).
  const int kernel_dim = backward_kernel_dim(shape, a.deterministic);
  if (kernel_dim == 0) {
    if (padded_head_dim(shape) != 256)
      return concat("head dims ", shape.d_qk, "/", shape.d_v, " (covered: multiples of 8 up to 256)");
    if (env_is("FLASH4_HOPPER_BWD_D256", "0")) return "head dims over 128 with FLASH4_HOPPER_BWD_D256=0";
    return concat("deterministic at head dims over 128 with fewer than ", kDeterministicD256MinKeys,
                  " keys per sequence (the portable backward is faster there; FLASH4_HOPPER_BWD_D256=1 forces)");
  }
  const int rows = key_block_rows(kernel_dim);
  if (shape.heads_kv > 65535 || shape.batch > 65535) return "more than 65535 KV heads or sequences";
  if (std::string gap = problem_size_gap(shape); !gap.empty()) return gap;
  if (shape.varlen) {
    // No grid needs max_seqlen (the work list is built on the device from cu_seqlens).
    if (hopper::varlen_tile_capacity(shape.tokens_k, shape.batch, rows) * shape.heads_kv >= (int64_t(1) << 31))
      return "2^31 or more key blocks";
  } else {
    // Deterministic dQ numbers the dense tiles in one grid dimension.
    if (a.deterministic && (shape.seqlen_k + rows - 1) / rows * shape.heads_kv * shape.batch >= (int64_t(1) << 31))
      return "deterministic dQ with 2^31 or more key blocks";
  }
  if (shape.tokens_q * shape.heads_q * shape.d_qk >= (int64_t(1) << 40)) return "dQ workspace too large";
  for (auto [t, name] : {std::pair{&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"}, {&a.out, "out"}, {&a.dout, "dout"},
                         {&a.dq, "dq"}, {&a.dk, "dk"}, {&a.dv, "dv"}})
    if (std::string gap = row_alignment_gap(*t, name); !gap.empty()) return gap;
  return sm90_device_gap(hopper::backward_sm90_runs_here());
}

// DqAdd::bulk: dq_accum [tokens_q][Hq][d] fp32 as the 3-d tensor map (d, tokens_q, Hq) the
// kernel's bulk reduce-adds write through: box kDqBulkBoxCols x kBackwardQBoxRows x 1, the
// 128-byte swizzle of dq_stage_tile (backward_sm90.cuh). Rows past tokens_q are clipped by
// TMA. Returns the driver's error code (0 = success).
int encode_dq_accum_map(CUtensorMap* map, float* dq_accum, int64_t tokens_q, int64_t heads_q, int64_t d) {
  const cuuint64_t dims[3] = {cuuint64_t(d), cuuint64_t(tokens_q), cuuint64_t(heads_q)};
  const cuuint64_t strides[2] = {cuuint64_t(heads_q * d * 4), cuuint64_t(d * 4)};  // bytes, dims 1 and 2
  const cuuint32_t box[3] = {hopper::kDqBulkBoxCols, hopper::kBackwardQBoxRows, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return int(tensor_map_encoder()(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, dq_accum, dims, strides, box,
                                  element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
}

}  // namespace

bool hopper_backward_preferred(flash4_backend requested) {
  if (env_is("FLASH4_HOPPER_BWD", "0")) return false;
  if (requested == FLASH4_BACKEND_HOPPER) return true;
  return requested == FLASH4_BACKEND_AUTO && !env_is("FLASH4_BACKEND", "portable");
}

bool hopper_backward(const flash4_backward_args& a, flash4_status* status, std::string* gap) {
  const ProblemShape shape = validate_backward(a);
  *gap = backward_gap(a, shape);
  if (!gap->empty()) return false;
  // d = 64 at BM = 128 (FA3's tile) or 64: backward_wide_m_rule (host.hpp).
  const bool wide_asked = backward_wide_m_rule(shape, a.deterministic != 0, a.options.softcap > 0);
  hopper::BackwardTensorMaps maps;
  // q / dout boxes: the query block (64 rows, or 128 for the wide kernel).
  auto encode_query_maps = [&](int rows) {
    for (auto [map, t, name] : {std::tuple{&maps.q, &a.q, "q"}, {&maps.dout, &a.dout, "dout"}})
      if (int error = encode_tensor_map(map, *t, rows); error != 0)
        return concat("cuTensorMapEncodeTiled rejected ", name, " (CUresult ", error, ")");
    return std::string();
  };
  if (std::string error = encode_query_maps(wide_asked ? hopper::kBackwardWideQBoxRows : hopper::kBackwardQBoxRows);
      !error.empty()) {
    *gap = error;
    return false;
  }
  // The kernel's head dim and key block (k / v boxes, the varlen work list's blocks).
  const int kernel_dim = backward_kernel_dim(shape, a.deterministic), key_rows = key_block_rows(kernel_dim);
  for (auto [map, t, name] : {std::tuple{&maps.k, &a.k, "k"}, {&maps.v, &a.v, "v"}})
    if (int error = encode_tensor_map(map, *t, key_rows); error != 0) {
      *gap = concat("cuTensorMapEncodeTiled rejected ", name, " (CUresult ", error, ")");
      return false;
    }

  cuda::AttentionParams p = attention_params(a, shape);  // lse: required here
  p.dout = row_layout(a.dout);
  p.dq = row_layout(a.dq);
  p.dk = row_layout(a.dk);
  p.dv = row_layout(a.dv);
  // dsink asked for: as the portable backward decides it (validation rejects dsink without a sink).
  const bool want_dsink = a.dsink != nullptr && a.options.sink != nullptr;
  // The portable finish reads p.deterministic: false, dQ comes from dq_accum in both modes.
  p.deterministic = false;
  const bool deterministic = a.deterministic != 0;
  // dK / dV by whole-sector quad stores: the default since scripts/hopper_bwd_quad_store_check.sh
  // passed on an H200 (2026-12-02: 1.03x geomean, 1.06-1.08x at S 512); =0 keeps 4-byte stores.
  p.quad_stores = !env_is("FLASH4_HOPPER_BWD_QUAD_STORE", "0");
  p.heads_first_grid = backward_heads_first_rule(kernel_dim, p.causal, shape, deterministic);

  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  try {
    const int64_t row_pitch = hopper::backward_sm90_row_pitch(p.tokens_q);
    const size_t rows = size_t(p.heads_q) * size_t(row_pitch);
    // The flat dQ layout (DqAdd::flat, the default unless FLASH4_HOPPER_DQ names another path):
    // non-deterministic calls on every kernel (d 256: its warpgroups fill one staging buffer in
    // turn, backward_sm90.cuh's kSplitHeadDim), deterministic ones only on the BM = 128 kernel
    // (d 64, backward_wide_m_rule), whose warpgroups' tiles are whole rows of their own (at
    // BM = 64 the halves are combined first). Its finish grid takes heads_q x parts in its y
    // dimension and the slots (below 2^25 + 2^16 with tokens_q < 2^31) in its x.
    const int64_t slots = hopper::dq_order_slots(p.tokens_q, p.batch);
    const bool other_dq_asked = env_is("FLASH4_HOPPER_DQ", "atomics") || env_is("FLASH4_HOPPER_DQ", "bulk") ||
                                env_is("FLASH4_HOPPER_DQ", "per_warpgroup");
    const bool flat = !other_dq_asked && (!deterministic || wide_asked) &&
                      int64_t(p.heads_q) * (kernel_dim / 64) <= 65535 && p.tokens_q < (int64_t(1) << 31);
    const size_t dq_count = flat ? size_t(hopper::dq_flat_floats(p.heads_q, slots, kernel_dim))
                                 : size_t(p.tokens_q) * size_t(p.heads_q) * size_t(p.d_qk);
    // dsink: the rows' terms [Hq][tokens_q] (every one written by the rows preprocess).
    const size_t dsink_count = want_dsink ? size_t(p.heads_q) * size_t(p.tokens_q) : 0;
    // Varlen: the work list of (sequence, key block) pairs, key blocks of the kernel's rows.
    const int64_t capacity = shape.varlen ? hopper::varlen_tile_capacity(shape.tokens_k, shape.batch, key_rows) : 0;
    const size_t list_bytes = shape.varlen ? varlen_tiles_bytes(capacity, shape.batch) : 0;
    // Deterministic dQ: the counts [Hq][slots] and the ticket after them, one zeroed range.
    const size_t order_count = deterministic ? size_t(p.heads_q) * size_t(slots) + 1 : 0;
    Workspace ws(Workspace::bytes_for(dq_count) + 2 * Workspace::bytes_for(rows) +
                     Workspace::bytes_for(dsink_count) + list_bytes + Workspace::bytes_for(order_count),
                 stream);
    p.dq_accum = ws.take(dq_count);
    p.lse_log2 = ws.take(rows);
    p.d_rows = ws.take(rows);
    if (want_dsink) {
      p.dsink_rows = ws.take(dsink_count);
      p.dsink = a.dsink;  // written by backward_finish, the fixed-order sum of the rows' terms
    }
    hopper::VarlenTiles list;
    if (shape.varlen)
      list = build_varlen_tiles_in(
          ws, p, deterministic ? hopper::TileKind::key_blocks_in_dq_order : hopper::TileKind::key_blocks, capacity,
          shape.batch, stream, key_rows);
    hopper::DqOrder order;
    if (deterministic) {
      order.counts = reinterpret_cast<int*>(ws.take(order_count));
      order.ticket = order.counts + size_t(p.heads_q) * size_t(slots);
      order.slots = slots;
      FLASH4_CUDA_CHECK(cudaMemsetAsync(order.counts, 0, order_count * sizeof(int), stream));
    }
    // How dQ is added (hopper::DqAdd): bulk reduce-adds unless FLASH4_HOPPER_DQ=atomics; the
    // bulk path's tensor coordinates are 32-bit (tokens_q < 2^31) and it needs the dq_accum
    // map, else the atomics run (FLASH4_LOG=1 says which ran, and why not bulk).
    hopper::DqAdd dq_add = hopper::DqAdd::atomics;
    std::string dq_note = "dQ by float2 atomics";
    const bool lock_step_asked = env_is("FLASH4_HOPPER_DQ", "bulk");
    if (env_is("FLASH4_HOPPER_DQ", "atomics")) {
      dq_note += " (FLASH4_HOPPER_DQ=atomics)";
    } else if (flat) {
      dq_add = hopper::DqAdd::flat;
      dq_note = wide_asked            ? "dQ by 1-D bulk reduce-add in the flat layout"
                : kernel_dim == 256 ? "dQ by 1-D bulk reduce-add in the flat layout, one buffer in turn"
                                    : "dQ by 1-D bulk reduce-add in the flat layout, per-warpgroup hand-over";
      if (env_is("FLASH4_HOPPER_DQ", "flat")) dq_note += " (FLASH4_HOPPER_DQ=flat)";
    } else if (kernel_dim == 256) {
      dq_note += " (d 256: no shared memory for the bulk staging)";
    } else if (p.tokens_q >= (int64_t(1) << 31)) {
      dq_note += " (bulk reduce-add: 2^31 or more query tokens)";
    } else if (int error = encode_dq_accum_map(&maps.dq_accum, p.dq_accum, p.tokens_q, p.heads_q, p.d_qk);
               error != 0) {
      dq_note += concat(" (bulk reduce-add: cuTensorMapEncodeTiled rejected dq_accum, CUresult ", error, ")");
    } else if (!lock_step_asked && !deterministic && !wide_asked) {
      dq_add = hopper::DqAdd::bulk_per_warpgroup;
      dq_note = "dQ by bulk reduce-add, per-warpgroup hand-over";
      if (env_is("FLASH4_HOPPER_DQ", "per_warpgroup")) dq_note += " (FLASH4_HOPPER_DQ=per_warpgroup)";
    } else {
      dq_add = hopper::DqAdd::bulk;
      dq_note = "dQ by bulk reduce-add";
      if (lock_step_asked) dq_note += " (FLASH4_HOPPER_DQ=bulk)";
    }
    // The wide kernel needs the bulk adds; without them the 64-row boxes come back.
    const bool wide_m = wide_asked && (dq_add == hopper::DqAdd::bulk || dq_add == hopper::DqAdd::flat);
    if (wide_asked && !wide_m)
      if (std::string error = encode_query_maps(hopper::kBackwardQBoxRows); !error.empty())
        throw cuda::CudaError(error);
    // Flat, not deterministic: flat_atomic_chunks_rule (host.hpp) of each warpgroup's 64-column
    // dQ chunks a step go by float4 atomics straight into the flat layout, the rest through the
    // staging buffer and the dQ writer; FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=0 | 1 | 2 overrides.
    if (dq_add == hopper::DqAdd::flat && !deterministic) {
      p.flat_atomic_chunks = flat_atomic_chunks_rule(kernel_dim);
      if (p.flat_atomic_chunks > 0)
        dq_note += concat(", ", p.flat_atomic_chunks, " chunk(s) a warpgroup by float4 atomics");
    }
    // The split-query d 256 step: d256_split_queries_rule (host.hpp), where every dQ chunk
    // goes by atomics (its P^T tiles take the staging buffer); =0 opts out.
    p.d256_split_queries = d256_split_queries_rule(kernel_dim, p.flat_atomic_chunks);
    if (p.d256_split_queries) {
      dq_note += ", queries split between the warpgroups";
    } else if (kernel_dim == 256 && !deterministic && !env_is("FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES", "0")) {
      dq_note += " (queries not split: that needs both dQ chunks by atomics)";
    }
    if (kernel_dim == 256) dq_note = "d 256, 64-key blocks: " + dq_note;
    if (wide_m) dq_note += ", 128-query blocks";
    if (deterministic) dq_note += ", deterministic";
    if (p.quad_stores) dq_note += ", dK / dV by quad stores";
    if (p.heads_first_grid) dq_note += ", heads-first grid";
    if (p.sink != nullptr) dq_note += want_dsink ? ", sink + dsink" : ", sink (no dsink)";
    log_backend("flash4_backward", "hopper", dq_note);
    FLASH4_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, dq_count * sizeof(float), stream));
    hopper::backward_sm90_rows(p, row_pitch, stream);
    const hopper::DqOrder* dq_order = deterministic ? &order : nullptr;
    if (kernel_dim != shape.d_qk || kernel_dim != shape.d_v)
      log_backend("flash4_backward", "hopper",
                  concat("head dims ", shape.d_qk, "/", shape.d_v, " on the d ", kernel_dim, " kernel (zero-padded)"));
    if (kernel_dim == 64)
      hopper::backward_sm90<64>(maps, p, row_pitch, list, capacity, dq_order, dq_add, wide_m, stream);
    else if (kernel_dim == 128)
      hopper::backward_sm90<128>(maps, p, row_pitch, list, capacity, dq_order, dq_add, false, stream);
    else
      hopper::backward_sm90<256>(maps, p, row_pitch, list, capacity, dq_order, dq_add, false, stream);
    // dq = scale * dq_accum in the output dtype, for every token row (rows of no sequence:
    // 0), zeros in the dk / dv rows of no sequence (varlen), and with p.dsink dsink_h = the
    // sum of dsink_rows[h][:] in a fixed order (dsink_reduce_kernel: the same bits on every
    // run, deterministic or not): the portable backward's finish in its atomic mode.
    if (flat) {
      // dq from the flat layout here; the portable finish then does what it does after its own
      // deterministic backward, which writes dq itself: zeros in the rows of no sequence
      // (dq; dk / dv too), and dsink.
      hopper::backward_sm90_dq_flat_finish(p, slots, kernel_dim, stream);
      cuda::AttentionParams finish = p;
      finish.deterministic = true;
      cuda::backward_finish(finish, stream);
    } else {
      cuda::backward_finish(p, stream);
    }
    *status = FLASH4_OK;
  } catch (const cuda::CudaError& e) {
    set_last_error(std::string("flash4 Hopper CUDA backend (backward): ") + e.what());
    *status = FLASH4_DEVICE_ERROR;
  }
  return true;
}

}  // namespace flash4::detail
