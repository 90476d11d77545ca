// Argument validation shared by every backend. validate_forward / validate_backward
// check everything that can be checked without running the attention: ranks, dtypes,
// strides, shape consistency, option ranges, and (on the CPU, where the pointers are
// readable) the contents of cu_seqlens, seqused_k, the page table and the sink logits.
// Each failure throws InvalidArgument with a message that starts with the entry point
// and names the field and the offending value, e.g.
//   "flash4_forward: k.shape[2] (Hkv=3) must divide q.shape[2] (Hq=8)".
// What a backend merely does not implement (a head dim, a dtype on CUDA) is not checked
// here: the backend answers FLASH4_UNSUPPORTED itself.
#pragma once

#include <flash4/flash4.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace flash4::detail {

class InvalidArgument : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The problem's dimensions, as validated.
struct ProblemShape {
  bool varlen = false;      // cu_seqlens_q given: q/out/dq/dout are packed [T, H, D]
  bool paged = false;       // page_table given (forward only): k/v are [pages, page_size, Hkv, D]
  int64_t batch = 0;        // dense: q.shape[0]; varlen: varlen.batch
  int64_t heads_q = 0;      // Hq
  int64_t heads_kv = 0;     // Hkv, divides Hq
  int64_t d_qk = 0;         // head dim of q and k
  int64_t d_v = 0;          // head dim of v and out
  int64_t seqlen_q = 0;     // dense: q.shape[1]; varlen: varlen.max_seqlen_q (0 = not given)
  int64_t seqlen_k = 0;     // dense: k.shape[1]; varlen: varlen.max_seqlen_k (0 = not given);
                            // paged: max_pages_per_seq * page_size
  int64_t tokens_q = 0;     // varlen: q.shape[0]; dense: B * Sq
  int64_t tokens_k = 0;     // varlen: k.shape[0]; dense: B * Sk; paged: pages * page_size
  double softmax_scale = 0; // options.softmax_scale, or 1/sqrt(d_qk) when that is 0
};

ProblemShape validate_forward(const flash4_forward_args& args);
ProblemShape validate_backward(const flash4_backward_args& args);

}  // namespace flash4::detail
