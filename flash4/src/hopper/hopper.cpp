// flash4's Hopper (sm90a) backend, host side: what it covers, the TMA tensor maps
// (cuTensorMapEncodeTiled, reached through the runtime's driver entry point so nothing
// links libcuda), params, the varlen work list, launch, and the FLASH4_BACKEND / FLASH4_LOG
// switches.
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>

#include "backends.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/fa4_softmax.cuh"
#include "cuda/params.hpp"
#include "cuda/workspace.hpp"
#include "hopper/host.hpp"
#include "hopper/launch.hpp"
#include "hopper/split_combine.hpp"
#include "hopper/varlen_tiles.hpp"
#include "validate.hpp"

namespace flash4::detail {
namespace {

// FA4's exp2 emulation on the Hopper path: off unless asked for (flash4_tuning) until
// bench/RESULTS.md shows it pays here.
constexpr bool kEmulateExp2ByDefault = false;

// Whether FLASH4_BACKEND_AUTO picks these kernels for what they cover (FLASH4_BACKEND=
// portable opts out). On since the whole gpu suite passed with them on an H200
// (bench/RESULTS.md, "Hopper forward").
constexpr bool kHopperByDefault = true;

// Pingpong between the two consumer warpgroups (FA3); FLASH4_HOPPER_PINGPONG=0|1 overrides
// it for A/B runs. Off: on an H200 it cost 1-9% at d = 64 and 128 (bench/RESULTS.md) on
// top of the intra-warpgroup overlap, as implemented here.
constexpr bool kPingpongByDefault = false;

// The dynamic tile schedule (persistent CTAs take tiles from an atomic counter, forward_sm90.cuh)
// is the default: on an H200 it passed every forward suite and was 1.03-1.22x the static
// round-robin on causal problems, 0.98-1.03x on the others (geomean 1.056 over 36 rows,
// 2026-12-01, scripts/hopper_sched_check.sh). FLASH4_HOPPER_SCHEDULE=static (read at each
// call) brings the round-robin back, for A/B runs.
bool dynamic_schedule_asked() { return !env_is("FLASH4_HOPPER_SCHEDULE", "static"); }

// Consumer warpgroups of the forward at d = 64: three (192-row tiles, FlashAttention-3's
// shape: more warps to hide the softmax, which costs as much as the wgmmas at d = 64) unless
// the problem is causal or windowed with queries of 1k or fewer, whose small triangles the
// larger tile wastes. On an H200 (2026-12-01, scripts/hopper_fwd_warpgroups_check.sh: 49 d = 64
// cases vs float64, racecheck / memcheck clean) three were 1.06-1.22x two non-causal and
// 1.06-1.16x causal at S >= 2k, but 0.95 / 0.92x causal at S 512 / 1k. Softcap keeps two (its
// tanh does not fit 160 registers a thread: launch_impl.cuh), as do paged KV and packed GQA
// and split-KV (their kernels are two-warpgroup only). FLASH4_HOPPER_FWD_WARPGROUPS=2|3
// (read at each call) forces the count, for A/B runs and tests.
int forward_warpgroups(const flash4_forward_args& a, const ProblemShape& shape, bool packed_kernel) {
  if (padded_head_dim(shape) != 64 || a.options.softcap > 0 || shape.paged || packed_kernel) return 2;
  if (env_is("FLASH4_HOPPER_FWD_WARPGROUPS", "2")) return 2;
  if (env_is("FLASH4_HOPPER_FWD_WARPGROUPS", "3")) return 3;
  const bool local = a.options.causal != 0 || a.options.window_left >= 0 || a.options.window_right >= 0;
  // Varlen without max_seqlen_q: the mean length stands in.
  const int64_t queries = shape.seqlen_q > 0 ? shape.seqlen_q : shape.tokens_q / std::max<int64_t>(shape.batch, 1);
  return local && queries <= 1024 ? 2 : 3;
}

// FLASH4_HOPPER_PINGPONG=0|1 overrides the default.
hopper::ForwardSchedule forward_schedule() {
  hopper::ForwardSchedule s;
  s.pingpong = kPingpongByDefault;
  if (env_is("FLASH4_HOPPER_PINGPONG", "0")) s.pingpong = false;
  if (env_is("FLASH4_HOPPER_PINGPONG", "1")) s.pingpong = true;
  return s;
}

}  // namespace

// 16-byte aligned data, 16-byte multiple strides (TMA's rules, and the 4-byte stores of O).
std::string row_alignment_gap(const flash4_tensor& t, const char* name) {
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return concat(name, ".data is not 16-byte aligned");
  for (int d = 0; d + 1 < t.rank; ++d)
    if (t.shape[d] > 1 && t.stride[d] % 8 != 0) return concat(name, ".stride[", d, "] is not a multiple of 8 elements");
  return "";
}

std::string sm90_device_gap(bool kernel_present) {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return "no CUDA device";
  }
  if (major != 9 || minor != 0) return concat("device is sm_", major, minor, ", the kernels are sm_90a");
  if (!kernel_present) return "this binary holds no sm_90a code for the device";
  if (tensor_map_encoder() == nullptr) return "cuTensorMapEncodeTiled not found in the driver";
  return "";
}

cuda::RowLayout row_layout(const flash4_tensor& t) { return cuda::row_layout(t, t.rank == 3); }

std::string problem_size_gap(const ProblemShape& shape) {
  if (shape.varlen) {
    if (shape.batch == 0 || shape.tokens_q == 0 || shape.tokens_k == 0) return "empty problem";
    if (shape.tokens_q > (int64_t(1) << 30) || shape.tokens_k > (int64_t(1) << 30)) return "more than 2^30 tokens";
  } else {
    if (shape.batch == 0 || shape.seqlen_q == 0 || shape.seqlen_k == 0) return "empty problem";
    if (shape.seqlen_q > (int64_t(1) << 30) || shape.seqlen_k > (int64_t(1) << 30)) return "sequences over 2^30";
  }
  return "";
}

hopper::VarlenTiles build_varlen_tiles_in(Workspace& ws, const cuda::AttentionParams& p, hopper::TileKind kind,
                                          int64_t capacity, int64_t batch, cudaStream_t stream, int key_rows) {
  hopper::VarlenTilesScratch scratch;
  scratch.key_rows = key_rows;
  scratch.pairs = reinterpret_cast<int2*>(ws.take(2 * size_t(capacity)));
  scratch.count = reinterpret_cast<int*>(ws.take(1));
  scratch.first = reinterpret_cast<int*>(ws.take(size_t(batch) + 1));
  scratch.capacity = capacity;
  hopper::build_varlen_tiles(p, kind, scratch, stream);
  hopper::VarlenTiles list;
  list.pairs = scratch.pairs;
  list.count = scratch.count;
  return list;
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

namespace {

// The 4-d map (d, then the three outer dimensions in `extent` / `stride`, elements) of t's
// 16-bit data, box 64 columns x box[0] x box[1] x box[2], 128-byte swizzle.
int encode_4d(CUtensorMap* map, const flash4_tensor& t, const int64_t (&extent)[3], const int64_t (&stride)[3],
              const cuuint32_t (&box)[3]) {
  const cuuint64_t elem = 2;
  const int64_t d = t.shape[t.rank - 1];
  const cuuint64_t dims[4] = {cuuint64_t(d), cuuint64_t(extent[0]), cuuint64_t(extent[1]), cuuint64_t(extent[2])};
  cuuint64_t strides[3];
  for (int i = 0; i < 3; ++i)  // a stride of an extent-1 dimension is never used: any legal value
    strides[i] = extent[i] > 1 ? cuuint64_t(stride[i]) * elem : cuuint64_t(d) * elem;
  const cuuint32_t boxes[4] = {64, box[0], box[1], box[2]};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type =
      t.dtype == FLASH4_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return int(tensor_map_encoder()(map, type, 4, t.data, dims, strides, boxes, element_strides,
                                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
}

}  // namespace

// (D, S, H, B) view of a dense [B, S, H, D] tensor or (D, T, H, 1) of a packed [T, H, D]
// one, box 64 columns x box_rows rows, 128-byte swizzle. Returns the driver's error code
// (0 = success). Rows past the tensor's end arrive as zeros; a packed tensor's rows past one
// sequence's end are the next sequence's (the kernels mask or zero them).
int encode_tensor_map(CUtensorMap* map, const flash4_tensor& t, int box_rows) {
  const bool packed = t.rank == 3;
  // Dimensions 1 .. 3 (rows, heads, batch).
  const int64_t extent[3] = {packed ? t.shape[0] : t.shape[1], packed ? t.shape[1] : t.shape[2],
                             packed ? 1 : t.shape[0]};
  const int64_t stride[3] = {packed ? t.stride[0] : t.stride[1], packed ? t.stride[1] : t.stride[2],
                             packed ? 0 : t.stride[0]};
  return encode_4d(map, t, extent, stride, {cuuint32_t(box_rows), 1, 1});
}

namespace {

// Packed GQA: (D, H, S, B) view of a dense [B, S, H, D] q, box 64 columns x `group` heads x
// rows / group tokens, 128-byte swizzle: the box lands in shared memory as rows of (token,
// head) pairs, heads fastest -- the tile's row order. Returns the driver's error code.
int encode_packed_q_map(CUtensorMap* map, const flash4_tensor& t, int group, int rows) {
  const int64_t extent[3] = {t.shape[2], t.shape[1], t.shape[0]};  // heads, tokens, batch
  const int64_t stride[3] = {t.stride[2], t.stride[1], t.stride[0]};
  return encode_4d(map, t, extent, stride, {cuuint32_t(group), cuuint32_t(rows / group), 1});
}

// Query heads packed into a tile's rows (packed GQA; 1 = none): a KV head's whole group when q
// is dense, the group is a power of two up to 16 and packing needs fewer 128-row tiles than
// one head a tile -- short Sq, decode above all (Sq = 1, group 8: 1 tile instead of 8, and the
// group's K / V read once; H200 decode 8 x 8192 keys, GQA 32 / 8: 0.206 -> 0.141 ms).
// FLASH4_HOPPER_PACK_GQA=auto (the default) applies the rule, =1 packs wherever it can, =0
// never; read at each call.
constexpr bool kPackGqaByDefault = true;
int forward_q_pack(const flash4_forward_args& a, const ProblemShape& shape) {
  const int64_t group = shape.heads_q / shape.heads_kv;
  if (shape.varlen || a.options.softcap > 0 || !packable_group(group)) return 1;
  if (shape.seqlen_q * group >= (int64_t(1) << 30)) return 1;
  if (env_is("FLASH4_HOPPER_PACK_GQA", "1")) return int(group);
  if (env_is("FLASH4_HOPPER_PACK_GQA", "0")) return 1;
  if (!kPackGqaByDefault && !env_is("FLASH4_HOPPER_PACK_GQA", "auto")) return 1;
  return pack_gqa_rule(shape.seqlen_q, group, hopper::forward_query_rows(2));
}

// Split-KV runs (flash-decoding) of the packed-GQA kernels (1 = none; a power of two, so the
// producer's tile arithmetic stays shifts): when the packed tiles fill under half of the SMs
// and each has at least 4 key blocks, enough runs of at least 2 blocks to cover the SMs (at
// most 16); split_combine.cu merges them (H200 decode as above, packed: 0.141 -> 0.082 ms).
// FLASH4_HOPPER_SPLIT_KV=auto (the default) applies the rule, =N forces the power of two at
// or below N (1 .. 64); read at each call.
// Unpacked q (MHA, or a GQA group packing does not shrink: decode with 64 KV heads, say, fills
// the SMs without it) splits too, in the packed-GQA kernels at q_pack 1, dense q without
// softcap as packing asks (H200, MHA decode, 8 x 8 heads, 8192 keys: 64 tiles on 132 SMs, 2
// runs each, 0.108 -> 0.082 ms; one sequence of 32k keys 0.388 -> 0.056 ms; chunked prefill,
// 128 queries x 32 heads over 8192 keys, 2.0x), in runs of at least 8 key blocks (shorter
// runs showed no clear gain, see split_kv_rule); FLASH4_HOPPER_SPLIT_KV_UNPACKED=0 opts out.
// The decision itself is forward_split_count (host.hpp, tested on the CPU).
int forward_splits(const flash4_forward_args& a, const ProblemShape& shape, int q_pack, int kernel_dim) {
  return forward_split_count(shape, a.options.softcap > 0, q_pack, kernel_dim, [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      cudaGetLastError();
      return 0;  // no rule without the count: split_kv_rule then gives 1
    }
    return sms;
  });
}

// Why the Hopper forward does not run `a` ("" when it does).
std::string forward_gap(const flash4_forward_args& a, const ProblemShape& shape) {
  if (a.q.dtype != FLASH4_BF16 && a.q.dtype != FLASH4_F16) return "dtype is not bf16 / fp16";
  if (shape.paged) {
    // FLASH4_HOPPER_PAGED=0 (read at each call) sends paged calls to the portable kernels.
    if (env_is("FLASH4_HOPPER_PAGED", "0")) return "FLASH4_HOPPER_PAGED=0";
    if (a.paged.page_size % 8 != 0)
      return concat("paged.page_size ", a.paged.page_size, " is not a multiple of 8 (the TMA boxes' swizzle)");
    if (a.options.softcap > 0) return "paged KV with softcap is not covered (no such kernel instantiated)";
    if (a.k.shape[0] >= (int64_t(1) << 31) - 1) return "2^31 or more pages";
    if (shape.batch * a.paged.max_pages_per_seq >= (int64_t(1) << 31)) return "a page table of 2^31 or more entries";
  }
  if (std::string gap = seqused_gap(a.varlen); !gap.empty()) return gap;
  if (!(shape.softmax_scale > 0)) return "softmax_scale <= 0 is not covered";
  if (padded_head_dim(shape) == 0)
    return concat("head dims ", shape.d_qk, "/", shape.d_v, " (covered: multiples of 8 up to 256)");
  if (shape.heads_q > 65535 || shape.batch > 65535) return "more than 65535 heads or sequences";
  if (std::string gap = problem_size_gap(shape); !gap.empty()) return gap;
  if (shape.varlen) {
    // No tile needs max_seqlen (the work list is built on the device from cu_seqlens).
    if (hopper::varlen_tile_capacity(shape.tokens_q, shape.batch) * shape.heads_q >= (int64_t(1) << 31))
      return "2^31 or more tiles";
  } else {
    if ((shape.seqlen_q + 127) / 128 * shape.heads_q * shape.batch >= (int64_t(1) << 31)) return "2^31 or more tiles";
  }
  for (auto [t, name] : {std::pair{&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"}, {&a.out, "out"}})
    if (std::string gap = row_alignment_gap(*t, name); !gap.empty()) return gap;
  return sm90_device_gap(hopper::forward_sm90_runs_here());
}

}  // namespace

bool hopper_preferred(flash4_backend requested) {
  if (requested == FLASH4_BACKEND_HOPPER) return true;
  if (requested != FLASH4_BACKEND_AUTO) return false;
  if (env_is("FLASH4_BACKEND", "portable")) return false;
  return kHopperByDefault || env_is("FLASH4_BACKEND", "hopper");
}

void log_backend(const char* entry, const char* backend, const std::string& note) {
  static const bool enabled = env_is("FLASH4_LOG", "1");
  if (enabled) std::fprintf(stderr, "flash4: %s ran %s%s%s\n", entry, backend, note.empty() ? "" : ": ", note.c_str());
}

bool hopper_forward(const flash4_forward_args& a, flash4_status* status, std::string* gap) {
  const ProblemShape shape = validate_forward(a);
  *gap = forward_gap(a, shape);
  if (!gap->empty()) return false;
  hopper::ForwardTensorMaps maps{};
  const int kernel_dim = padded_head_dim(shape);
  const int q_pack = forward_q_pack(a, shape);
  const int splits = forward_splits(a, shape, q_pack, kernel_dim);
  // The packed-GQA kernels run packed q and every split-KV call (q_pack 1 included).
  const bool packed_kernel = q_pack > 1 || splits > 1;
  const int warpgroups = forward_warpgroups(a, shape, packed_kernel);
  const int query_rows = hopper::forward_query_rows(warpgroups);
  // Paged: boxes of paged_box_rows rows (they must not cross a page), the same count the
  // producer gathers a key block in.
  const int block_n = hopper::forward_key_box_rows(kernel_dim);
  const int key_rows = shape.paged ? hopper::paged_box_rows(a.paged.page_size, block_n) : block_n;
  for (auto [map, t, name, rows] : {std::tuple{&maps.q, &a.q, "q", query_rows}, {&maps.k, &a.k, "k", key_rows},
                                    {&maps.v, &a.v, "v", key_rows}})
    if (int error = packed_kernel && t == &a.q ? encode_packed_q_map(map, *t, q_pack, rows)
                                                : encode_tensor_map(map, *t, rows);
        error != 0) {
      *gap = concat("cuTensorMapEncodeTiled rejected ", name, " (CUresult ", error, ")");
      return false;
    }
  // The TMA store of O: dense, unpacked q, d <= 128 (H200: 1.00-1.09x the register stores,
  // most at short S). FLASH4_HOPPER_TMA_STORE_O=0 (read at each call) opts out.
  const bool tma_store_o =
      !env_is("FLASH4_HOPPER_TMA_STORE_O", "0") && !shape.varlen && !packed_kernel && kernel_dim <= 128;
  if (tma_store_o)
    if (int error = encode_tensor_map(&maps.o, a.out, 64); error != 0) {
      *gap = concat("cuTensorMapEncodeTiled rejected out (CUresult ", error, ")");
      return false;
    }

  cuda::AttentionParams p = attention_params(a, shape);
  if (shape.paged) {
    p.page_table = a.paged.page_table;
    p.page_table_stride = a.paged.max_pages_per_seq;
    p.page_size = a.paged.page_size;
    p.page_box_rows = key_rows;
    p.pages = int(a.k.shape[0]);
  }
  p.q_pack = q_pack;
  p.q_pack_shift = log2_of_power_of_two(q_pack);
  p.num_splits = splits;
  p.split_shift = log2_of_power_of_two(p.num_splits);
  // Split-KV partials: O [splits][B][Hq][Sq][d_v] and LSE [splits][B][Hq][Sq], fp32.
  const int64_t split_rows = p.num_splits > 1 ? int64_t(p.num_splits) * shape.batch * shape.heads_q * shape.seqlen_q : 0;
  const int emulation = a.tuning.exp2_emulation;
  // FLASH4_HOPPER_EMULATE_EXP2=1 stands in for the default (0) too, for A/B runs.
  p.emulate_exp2 = emulation == 2 || (emulation == 0 && (kEmulateExp2ByDefault || env_is("FLASH4_HOPPER_EMULATE_EXP2", "1")));
  p.rescale_tau = cuda::effective_rescale_threshold(a.tuning.rescale_threshold);

  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  try {
    // Varlen: the work list of (sequence, query block) pairs, built on the stream first. The
    // dynamic schedule: its tile counter, zeroed on the stream (graph capture records both).
    const int64_t capacity = shape.varlen ? hopper::varlen_tile_capacity(shape.tokens_q, shape.batch) : 0;
    const bool dynamic = dynamic_schedule_asked();
    Workspace ws((shape.varlen ? varlen_tiles_bytes(capacity, shape.batch) : 0) +
                     (dynamic ? Workspace::bytes_for(1) : 0) +
                     (split_rows > 0 ? Workspace::bytes_for(size_t(split_rows * shape.d_v)) +
                                           Workspace::bytes_for(size_t(split_rows))
                                     : 0),
                 stream);
    if (split_rows > 0) {
      p.o_partial = ws.take(size_t(split_rows * shape.d_v));
      p.lse_partial = ws.take(size_t(split_rows));
      log_backend("flash4_forward", "hopper", concat("split-KV, ", p.num_splits, " runs of the key blocks"));
    }
    hopper::VarlenTiles list;
    const hopper::TileKind kind =
        warpgroups == 3 ? hopper::TileKind::query_blocks_of_192 : hopper::TileKind::query_blocks;
    if (shape.varlen) list = build_varlen_tiles_in(ws, p, kind, capacity, shape.batch, stream);
    hopper::ForwardSchedule schedule = forward_schedule();
    schedule.warpgroups = warpgroups;
    schedule.tma_store_o = tma_store_o;
    // Written without a GPU: opt-in until scripts/hopper_store_warp_check.sh has run.
    schedule.store_warp_o = tma_store_o && env_is("FLASH4_HOPPER_O_STORE_WARP", "1");
    if (tma_store_o)
      log_backend("flash4_forward", "hopper", schedule.store_warp_o ? "O by TMA store from a producer warp" : "O by TMA store");
    if (warpgroups == 3)
      log_backend("flash4_forward", "hopper", "three consumer warpgroups");
    if (dynamic) {
      schedule.tile_counter = reinterpret_cast<int*>(ws.take(1));
      FLASH4_CUDA_CHECK(cudaMemsetAsync(schedule.tile_counter, 0, sizeof(int), stream));
      log_backend("flash4_forward", "hopper", "dynamic schedule");
    }
    if (shape.paged)
      log_backend("flash4_forward", "hopper", concat("paged KV, boxes of ", key_rows, " rows"));
    if (q_pack > 1) log_backend("flash4_forward", "hopper", concat("packed GQA, ", q_pack, " query heads a tile"));
    if (kernel_dim != shape.d_qk || kernel_dim != shape.d_v)
      log_backend("flash4_forward", "hopper",
                  concat("head dims ", shape.d_qk, "/", shape.d_v, " on the d ", kernel_dim, " kernel (zero-padded)"));
    if (kernel_dim == 64)
      hopper::forward_sm90<64>(maps, p, list, capacity, schedule, stream);
    else if (kernel_dim == 128)
      hopper::forward_sm90<128>(maps, p, list, capacity, schedule, stream);
    else
      hopper::forward_sm90<256>(maps, p, list, capacity, schedule, stream);
    if (split_rows > 0) hopper::combine_splits(p, stream);
    *status = FLASH4_OK;
  } catch (const cuda::CudaError& e) {
    set_last_error(std::string("flash4 Hopper CUDA backend: ") + e.what());
    *status = FLASH4_DEVICE_ERROR;
  }
  return true;
}

}  // namespace flash4::detail
