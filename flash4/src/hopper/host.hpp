// Host-side helpers the Hopper forward and backward share (defined in hopper.cpp): TMA
// tensor maps through the driver's cuTensorMapEncodeTiled and the alignment TMA needs.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <flash4/flash4.h>

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include "cuda/params.hpp"
#include "validate.hpp"

namespace flash4::detail {

// The driver's cuTensorMapEncodeTiled (through the runtime's entry point: nothing links
// libcuda), or nullptr when the driver has none.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder();

// (D, S, H, B) view of a dense [B, S, H, D] 16-bit tensor, box 64 columns x box_rows rows,
// 128-byte swizzle. Returns the driver's error code (0 = success).
int encode_tensor_map(CUtensorMap* map, const flash4_tensor& t, int box_rows);

// Why `t` breaks TMA's alignment rules (16-byte aligned data, 16-byte multiple strides);
// "" when it does not.
std::string row_alignment_gap(const flash4_tensor& t, const char* name);

// Why this process cannot run an sm_90a kernel here: no device, a device other than
// sm_90, no sm_90a code in the binary (`kernel_present` false), or no tensor-map
// encoder in the driver; "" when it can.
std::string sm90_device_gap(bool kernel_present);

// The row layout of a dense [B, S, H, D] tensor (strides in elements).
cuda::RowLayout dense_layout(const flash4_tensor& t);

// Kernel parameters of a dense [B, S, H, D] call (forward or backward arguments): dtype,
// q / k / v / out layouts, LSE [B, Hq, Sq] when given, sizes, scale, causal. Each caller
// adds what only it needs.
template <class Args>
cuda::AttentionParams dense_attention_params(const Args& a, const ProblemShape& shape) {
  cuda::AttentionParams p;
  p.dtype = a.q.dtype == FLASH4_BF16 ? cuda::DType::bf16 : cuda::DType::f16;
  p.q = dense_layout(a.q);
  p.k = dense_layout(a.k);
  p.v = dense_layout(a.v);
  p.out = dense_layout(a.out);
  if (a.lse.data != nullptr) {
    p.lse = static_cast<float*>(a.lse.data);
    p.lse_batch_stride = a.lse.stride[0];
    p.lse_head_stride = a.lse.stride[1];
    p.lse_row_stride = a.lse.stride[2];
  }
  p.batch = int(shape.batch);
  p.heads_q = int(shape.heads_q);
  p.heads_kv = int(shape.heads_kv);
  p.group = int(shape.heads_q / shape.heads_kv);
  p.d_qk = int(shape.d_qk);
  p.d_v = int(shape.d_v);
  p.seqlen_q = int(shape.seqlen_q);
  p.seqlen_k = int(shape.seqlen_k);
  p.tokens_q = shape.tokens_q;
  p.tokens_k = shape.tokens_k;
  p.scale = float(shape.softmax_scale);
  p.scale_log2 = float(shape.softmax_scale * 1.4426950408889634);
  p.causal = a.options.causal != 0;
  return p;
}

// Reasons in messages: the parts streamed one after another.
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

}  // namespace flash4::detail
