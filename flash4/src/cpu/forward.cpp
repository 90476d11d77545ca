// flash4's CPU forward kernel: exact softmax attention in float32 (FLASH4_BACKEND_CPU, and
// what FLASH4_BACKEND_AUTO runs on the CPU for f32 / f16 / bf16 tensors; f64 tensors get the
// float64 reference). Every feature of the reference: dense, packed and paged, GQA, causal
// and windows, softcap, sink, seqused_k. One (sequence, query head) per OpenMP work item, so
// results do not depend on the thread count.
//
// Per work item and block of kBlockRows query rows: S = (scale Q) K^T over the union of the
// rows' visible keys and O = P V as register-tiled products (row_ops.hpp's gemm), each row's
// softmax over its own keys in between (the others' P set to 0). exp2 runs on the FMA units.
#include <algorithm>
#include <limits>
#include <vector>

#include "backends.hpp"
#include "cpu/row_ops.hpp"
#include "reference/sequences.hpp"

namespace flash4::detail {
namespace {

struct ForwardItem {
  const flash4_forward_args& args;
  const ProblemShape& shape;
  const SequenceMap& map;
};

// Query rows a block takes: 16, as the backward (flash4-cpu-bench: about even with 4 at S
// 128 - 1024, d 24 - 128; somewhat ahead at d 24, causal).
constexpr int kBlockRows = 16;

FLASH4_CPU_CLONES void forward_item(const ForwardItem& w, int64_t item) {
  constexpr int R = kBlockRows;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const flash4_forward_args& args = w.args;
  const flash4_options& o = args.options;
  const int64_t Hq = w.shape.heads_q, group = w.shape.heads_q / w.shape.heads_kv;
  const int64_t Dqk = w.shape.d_qk, Dv = w.shape.d_v;
  const int64_t b = item / Hq, h = item % Hq, h_kv = h / group;
  const int64_t Sq = w.map.seqlen_q(b), Sk = w.map.seqlen_k(b);
  const float scale = float(w.shape.softmax_scale), softcap = o.softcap;
  const float* sink = o.sink != nullptr ? o.sink + h : nullptr;

  // Row strides: ld along the keys (Kt, s, p), ldv along V's head dim (padded_stride).
  const int64_t ld = cpu::padded_stride(Sk), ldv = cpu::padded_stride(Dv);
  std::vector<float> Kt(Dqk * ld), V(Sk * ldv), q(R * Dqk), out(R * Dv), s(R * ld), p(R * ld);
  load_key_rows_transposed(w.map, args.k, b, h_kv, Sk, Dqk, Kt.data(), ld);
  load_key_rows(w.map, args.v, b, h_kv, Sk, Dv, V.data(), ldv);
  for (int64_t i0 = 0; i0 < Sq; i0 += R) {
    const int rows = int(std::min<int64_t>(R, Sq - i0));
    // The rows' visible keys and their union [jb, je).
    KeyRange keys[R];
    int64_t jb = Sk, je = 0;
    for (int r = 0; r < rows; ++r) {
      load_row(args.q.dtype, args.q.data, w.map.q_row(args.q, b, i0 + r, h), Dqk, q.data() + r * Dqk);
      for (int64_t d = 0; d < Dqk; ++d) q[r * Dqk + d] *= scale;
      keys[r] = visible_keys(i0 + r, Sq, Sk, o);
      if (!keys[r].empty()) jb = std::min(jb, keys[r].begin), je = std::max(je, keys[r].end);
    }
    const int64_t n = je > jb ? je - jb : 0;
    if (n > 0) cpu::gemm(s.data() + jb, ld, q.data(), Dqk, Kt.data() + jb, ld, rows, Dqk, n, false);
    float inv_sum[R] = {}, lse[R];
    for (int r = 0; r < rows; ++r) {
      float* s_r = s.data() + r * ld;
      float* p_r = p.data() + r * ld;
      const int64_t j0 = keys[r].begin, m = keys[r].empty() ? 0 : keys[r].end - keys[r].begin;
      if (softcap > 0)
        for (int64_t j = j0; j < j0 + m; ++j) s_r[j] = softcap * std::tanh(s_r[j] / softcap);
      float max_score = m > 0 ? cpu::row_max(s_r + j0, m) : kNegInf;
      if (sink != nullptr) max_score = std::max(max_score, *sink);
      // P over the union: 0 outside the row's own keys.
      if (n > 0) std::fill(p_r + jb, p_r + je, 0.0f);
      lse[r] = kNegInf;  // no key and no sink: out 0, lse -inf
      if (max_score == kNegInf) continue;
      cpu::exp2_row(p_r + j0, s_r + j0, cpu::kLog2e, max_score * cpu::kLog2e, m);
      float sum = cpu::lane_sum(p_r + j0, m);
      if (sink != nullptr) sum += cpu::exp2_softmax((*sink - max_score) * cpu::kLog2e);
      inv_sum[r] = 1.0f / sum;
      lse[r] = max_score + std::log(sum);
    }
    if (n > 0)
      cpu::gemm(out.data(), Dv, p.data() + jb, ld, V.data() + jb * ldv, ldv, rows, n, Dv, false);
    else
      std::fill(out.begin(), out.end(), 0.0f);
    for (int r = 0; r < rows; ++r) {
      for (int64_t d = 0; d < Dv; ++d) out[r * Dv + d] *= inv_sum[r];
      store_row(args.out.dtype, args.out.data, w.map.q_row(args.out, b, i0 + r, h), Dv, out.data() + r * Dv);
      if (args.lse.data != nullptr)
        static_cast<float*>(args.lse.data)[w.map.lse_index(args.lse, b, h, i0 + r)] = lse[r];
    }
  }
}

}  // namespace

flash4_status cpu_forward(const flash4_forward_args& args) {
  const ProblemShape shape = validate_forward(args);
  const SequenceMap map(shape, args.varlen, &args.paged);
  const ForwardItem work{args, shape, map};
  parallel_for(shape.batch * shape.heads_q, [&](int64_t item) { forward_item(work, item); });
  return FLASH4_OK;
}

}  // namespace flash4::detail
