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
