// flash4's portable CUDA backend (sm80+): what it supports, how validated args become
// kernel params, the backward's workspace, and the kernel sequence. Anything it does
// not cover returns FLASH4_UNSUPPORTED with a message naming the feature; CUDA failures
// return FLASH4_DEVICE_ERROR naming the call (cuda_check.hpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "backends.hpp"
#include "cuda_check.hpp"
#include "workspace.hpp"
#include "fa4_softmax.cuh"
#include "kernels.hpp"
#include "params.hpp"
#include "validate.hpp"

namespace flash4::detail {
namespace {

using cuda::AttentionParams;
using cuda::RowLayout;
using cuda::row_layout;
using cuda::set_lse;

// FA4's exp2 emulation on this mma.sync path: off unless asked for. Measured on an H200
// (bench/RESULTS.md): 4% slower at d = 64 and 128, 1% faster at d = 256 (geometric means
// over S and causal): these kernels wait on latency, not on the MUFU. Conditional
// rescaling (tau = 8) is on: 2% faster than always rescaling.
constexpr bool kEmulateExp2ByDefault = false;

class Unsupported : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Parts>
[[noreturn]] void unsupported(const Parts&... parts) {
  std::ostringstream message;
  message << "portable CUDA backend: ";
  (message << ... << parts);
  throw Unsupported(message.str());
}

const char* dtype_name(flash4_dtype dtype) {
  switch (dtype) {
    case FLASH4_F32: return "fp32";
    case FLASH4_F16: return "fp16";
    case FLASH4_BF16: return "bf16";
    case FLASH4_F64: return "fp64";
  }
  return "an unknown dtype";
}

// The smallest kernel pair (d_qk, d_v) that holds the problem's head dims.
struct HeadDims {
  int qk = 0, v = 0;
};
HeadDims kernel_head_dims(int64_t d_qk, int64_t d_v) {
  if (d_qk % 8 != 0 || d_v % 8 != 0)
    unsupported("head dims must be multiples of 8 (16-byte rows), got d_qk=", d_qk, ", d_v=", d_v);
  HeadDims best;
  for (const auto& pair : cuda::kHeadDimPairs)
    if (pair[0] >= d_qk && pair[1] >= d_v && (best.qk == 0 || pair[0] + pair[1] < best.qk + best.v))
      best = {pair[0], pair[1]};
  if (best.qk == 0) unsupported("head dims d_qk=", d_qk, ", d_v=", d_v, " (at most 256 each)");
  return best;
}

void check_rows_aligned(const flash4_tensor& t, const char* name) {
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) unsupported(name, ".data must be 16-byte aligned");
  for (int d = 0; d + 1 < t.rank; ++d)
    if (t.shape[d] > 1 && t.stride[d] % 8 != 0)
      unsupported(name, ".stride[", d, "] (", t.stride[d], ") must be a multiple of 8 elements (16-byte rows)");
}

int device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  FLASH4_CUDA_CHECK(cudaGetDevice(&device));
  FLASH4_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

void check_device() {
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
  if (major < 8) unsupported("needs compute capability 8.0 or newer (mma.sync bf16, cp.async), device has ", major, ".x");
}

void check_shared_memory(size_t needed, const char* what) {
  const size_t available = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  if (needed > available)
    unsupported(what, " needs ", needed, " bytes of shared memory per block, the device offers ", available);
}

// Longest sequence of a packed batch, read back from the device (a synchronisation) when
// the caller did not give max_seqlen.
int max_sequence_length(const int32_t* cu_seqlens, int batch, cudaStream_t stream) {
  std::vector<int32_t> cu(size_t(batch) + 1);
  FLASH4_CUDA_CHECK(cudaMemcpyAsync(cu.data(), cu_seqlens, cu.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
  FLASH4_CUDA_CHECK(cudaStreamSynchronize(stream));
  int longest = 0;
  for (int b = 0; b < batch; ++b) longest = std::max(longest, cu[b + 1] - cu[b]);
  return longest;
}

void check_dtype(flash4_dtype dtype) {
  if (dtype != FLASH4_BF16 && dtype != FLASH4_F16) unsupported("dtype ", dtype_name(dtype), " (bf16 and fp16 only)");
}

// Fields forward and backward share.
template <class Args>
AttentionParams common_params(const Args& a, const ProblemShape& shape, cudaStream_t stream) {
  check_dtype(a.q.dtype);
  if (shape.heads_q > 65535 || shape.batch > 65535)
    unsupported("at most 65535 query heads and 65535 sequences per call, got Hq=", shape.heads_q, ", batch=",
                shape.batch);
  if (shape.tokens_q > std::numeric_limits<int32_t>::max() / 2 || shape.tokens_k > std::numeric_limits<int32_t>::max() / 2)
    unsupported("at most 2^30 tokens per call");
  check_device();
  check_rows_aligned(a.q, "q");
  check_rows_aligned(a.k, "k");
  check_rows_aligned(a.v, "v");
  check_rows_aligned(a.out, "out");

  AttentionParams p;
  p.dtype = a.q.dtype == FLASH4_BF16 ? cuda::DType::bf16 : cuda::DType::f16;
  const bool packed = shape.varlen;
  p.q = row_layout(a.q, packed);
  p.k = row_layout(a.k, packed && !shape.paged);
  p.v = row_layout(a.v, packed && !shape.paged);
  p.out = row_layout(a.out, packed);
  set_lse(p, a.lse, packed);
  p.batch = int(shape.batch);
  p.heads_q = int(shape.heads_q);
  p.heads_kv = int(shape.heads_kv);
  p.group = int(shape.heads_q / shape.heads_kv);
  p.d_qk = int(shape.d_qk);
  p.d_v = int(shape.d_v);
  p.tokens_q = shape.tokens_q;
  p.tokens_k = shape.tokens_k;
  p.cu_seqlens_q = a.varlen.cu_seqlens_q;
  p.cu_seqlens_k = shape.paged ? nullptr : a.varlen.cu_seqlens_k;
  p.seqused_k = a.varlen.seqused_k;
  if (packed) {
    p.seqlen_q = a.varlen.max_seqlen_q > 0 ? a.varlen.max_seqlen_q
                                            : max_sequence_length(a.varlen.cu_seqlens_q, p.batch, stream);
    if (!shape.paged)
      p.seqlen_k = a.varlen.max_seqlen_k > 0 ? a.varlen.max_seqlen_k
                                              : max_sequence_length(a.varlen.cu_seqlens_k, p.batch, stream);
    else
      p.seqlen_k = int(shape.seqlen_k);
  } else {
    p.seqlen_q = int(shape.seqlen_q);
    p.seqlen_k = int(shape.seqlen_k);
  }

  const flash4_options& o = a.options;
  const double scale = shape.softmax_scale;
  p.scale = float(scale);
  p.scale_log2 = float(scale * 1.4426950408889634);
  set_softcap(p, o.softcap, scale);
  p.causal = o.causal != 0;
  p.window_left = o.window_left < 0 ? -1 : o.window_left;
  p.window_right = o.window_right < 0 ? -1 : o.window_right;
  p.sink = o.sink;
  return p;
}

template <class Body>
flash4_status guarded_cuda(Body&& body) {
  try {
    body();
    return FLASH4_OK;
  } catch (const Unsupported& e) {
    set_last_error(e.what());
    return FLASH4_UNSUPPORTED;
  } catch (const cuda::CudaError& e) {
    set_last_error(std::string("flash4 portable CUDA backend: ") + e.what());
    return FLASH4_DEVICE_ERROR;
  }
}

// Calls f.template operator()<DQK, DV>() for the kernel pair d.
template <class F>
void with_head_dims(HeadDims d, F&& f) {
  if (d.qk == 64) f.template operator()<64, 64>();
  else if (d.qk == 96) f.template operator()<96, 96>();
  else if (d.qk == 128) f.template operator()<128, 128>();
  else if (d.qk == 192 && d.v == 128) f.template operator()<192, 128>();
  else if (d.qk == 192) f.template operator()<192, 192>();
  else f.template operator()<256, 256>();
}

// Double-buffered K / V when two CTAs still fit on a multiprocessor with it (latency
// hiding needs both); else FA2's single buffers. FLASH4_PORTABLE_FWD_STAGES=1|2 forces
// one for measurements (bench/RESULTS.md).
bool forward_two_stages(size_t smem_one, size_t smem_two) {
  const size_t per_block = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  const size_t per_sm = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor));
  check_shared_memory(smem_one, "the forward");
  if (const char* forced = std::getenv("FLASH4_PORTABLE_FWD_STAGES"))
    return forced[0] == '2' && smem_two <= per_block;
  return smem_two <= per_block && 2 * (smem_two + 1024) <= per_sm;
}

void run_forward(const AttentionParams& p, HeadDims d, cudaStream_t stream) {
  with_head_dims(d, [&]<int DQK, int DV>() {
    const bool two = forward_two_stages(cuda::forward_smem_bytes<DQK, DV>(false), cuda::forward_smem_bytes<DQK, DV>(true));
    cuda::forward_hdim<DQK, DV>(p, two, stream);
  });
}

void run_backward(const AttentionParams& p, HeadDims d, bool two_stages, cudaStream_t stream) {
  with_head_dims(d, [&]<int DQK, int DV>() {
    const size_t per_block = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
    const size_t per_sm = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor));
    const size_t dq_two = cuda::backward_dq_smem_bytes<DQK, DV>(true);
    const bool dq_two_stages = p.deterministic && dq_two <= per_block && 2 * (dq_two + 1024) <= per_sm;
    cuda::backward_hdim<DQK, DV>(p, two_stages, dq_two_stages, stream);
  });
}

}  // namespace

flash4_status portable_forward(const flash4_forward_args& args) {
  return guarded_cuda([&] {
    const ProblemShape shape = validate_forward(args);
    cudaStream_t stream = static_cast<cudaStream_t>(args.stream);
    check_dtype(args.q.dtype);
    const HeadDims dims = kernel_head_dims(shape.d_qk, shape.d_v);
    // No query row to write (rows of no sequence are left alone): nothing touches the device.
    if (shape.batch == 0 || shape.tokens_q == 0) return;
    AttentionParams p = common_params(args, shape, stream);
    if (shape.paged) {  // k / v are [pages, page_size, Hkv, D]: common_params laid them out so
      p.page_table = args.paged.page_table;
      p.page_table_stride = args.paged.max_pages_per_seq;
      p.page_size = args.paged.page_size;
    }
    const int emulation = args.tuning.exp2_emulation;
    p.emulate_exp2 = emulation == 2 || (emulation == 0 && kEmulateExp2ByDefault);
    p.rescale_tau = cuda::effective_rescale_threshold(args.tuning.rescale_threshold);
    run_forward(p, dims, stream);
  });
}

flash4_status portable_backward(const flash4_backward_args& args) {
  return guarded_cuda([&] {
    const ProblemShape shape = validate_backward(args);
    cudaStream_t stream = static_cast<cudaStream_t>(args.stream);
    check_dtype(args.q.dtype);
    const HeadDims dims = kernel_head_dims(shape.d_qk, shape.d_v);
    // No gradient row at all (every row, even one of no sequence, is written otherwise).
    if (shape.tokens_q == 0 && shape.tokens_k == 0 && args.dsink == nullptr) return;
    AttentionParams p = common_params(args, shape, stream);
    check_rows_aligned(args.dout, "dout");
    check_rows_aligned(args.dq, "dq");
    check_rows_aligned(args.dk, "dk");
    check_rows_aligned(args.dv, "dv");
    const bool packed = shape.varlen;
    p.dout = row_layout(args.dout, packed);
    p.dq = row_layout(args.dq, packed);
    p.dk = row_layout(args.dk, packed);
    p.dv = row_layout(args.dv, packed);
    p.deterministic = args.deterministic != 0;

    const size_t smem_one = cuda::backward_smem_bytes(dims.qk, dims.v, false);
    const size_t smem_two = cuda::backward_smem_bytes(dims.qk, dims.v, true);
    const size_t available = size_t(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
    check_shared_memory(smem_one, "the backward");
    const bool two_stages = smem_two <= available;

    const size_t rows = size_t(shape.heads_q) * size_t(shape.tokens_q);
    const size_t dq_count = p.deterministic ? 0 : size_t(shape.tokens_q) * shape.heads_q * shape.d_qk;
    const bool want_dsink = args.dsink != nullptr && args.options.sink != nullptr;
    Workspace ws(Workspace::bytes_for(dq_count) + 3 * Workspace::bytes_for(rows), stream);
    p.dq_accum = ws.take(dq_count);
    p.d_rows = ws.take(rows);
    p.lse_log2 = ws.take(rows);
    p.dsink_rows = ws.take(rows);
    if (dq_count > 0) FLASH4_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, dq_count * sizeof(float), stream));
    if (want_dsink) {
      FLASH4_CUDA_CHECK(cudaMemsetAsync(p.dsink_rows, 0, rows * sizeof(float), stream));
      p.dsink = args.dsink;
    } else {
      p.dsink_rows = nullptr;
    }

    cuda::backward_preprocess(p, stream);
    run_backward(p, dims, two_stages, stream);
    cuda::backward_finish(p, stream);
  });
}

}  // namespace flash4::detail
