// flash4's CPU forward kernel: exact softmax attention in float32 (FLASH4_BACKEND_CPU, and
// what FLASH4_BACKEND_AUTO runs on the CPU for f32 / f16 / bf16 tensors; f64 tensors get the
// float64 reference). Every feature of the reference: dense, packed and paged, GQA, causal
// and windows, softcap, sink, seqused_k. One (sequence, query head) per OpenMP work item, so
// results do not depend on the thread count.
//
// Per work item the keys and values are held transposed (Kt[d][j], Vt[d][j]) so that every
// loop of a query row runs along its visible keys (long and contiguous, where the head dim
// may be 24): the scores are D axpy passes over them, each output element one dot product
// with P. exp2 runs on the FMA units (row_ops.hpp).
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

FLASH4_CPU_CLONES void forward_item(const ForwardItem& w, int64_t item) {
  const flash4_forward_args& args = w.args;
  const flash4_options& o = args.options;
  const int64_t Hq = w.shape.heads_q, group = w.shape.heads_q / w.shape.heads_kv;
  const int64_t Dqk = w.shape.d_qk, Dv = w.shape.d_v;
  const int64_t b = item / Hq, h = item % Hq, h_kv = h / group;
  const int64_t Sq = w.map.seqlen_q(b), Sk = w.map.seqlen_k(b);
  const float scale = float(w.shape.softmax_scale), softcap = o.softcap;
  const float* sink = o.sink != nullptr ? o.sink + h : nullptr;

  std::vector<float> Kt(Dqk * Sk), Vt(Dv * Sk), row(std::max(Dqk, Dv)), q(Dqk), out(Dv), s(Sk), p(Sk);
  for (int64_t j = 0; j < Sk; ++j) {
    load_row(args.k.dtype, args.k.data, w.map.k_row(args.k, b, j, h_kv), Dqk, row.data());
    for (int64_t d = 0; d < Dqk; ++d) Kt[d * Sk + j] = row[d];
    load_row(args.v.dtype, args.v.data, w.map.k_row(args.v, b, j, h_kv), Dv, row.data());
    for (int64_t d = 0; d < Dv; ++d) Vt[d * Sk + j] = row[d];
  }
  for (int64_t i = 0; i < Sq; ++i) {
    load_row(args.q.dtype, args.q.data, w.map.q_row(args.q, b, i, h), Dqk, q.data());
    const KeyRange keys = visible_keys(i, Sq, Sk, o);
    const int64_t j0 = keys.begin, n = keys.empty() ? 0 : keys.end - keys.begin;
    // Scores s = scale q.k (natural units), soft-capped.
    std::fill_n(s.data() + j0, n, 0.0f);
    for (int64_t d = 0; d < Dqk; ++d) cpu::axpy(s.data() + j0, q[d] * scale, Kt.data() + d * Sk + j0, n);
    if (softcap > 0)
      for (int64_t j = j0; j < j0 + n; ++j) s[j] = softcap * std::tanh(s[j] / softcap);
    float max_score = n > 0 ? cpu::row_max(s.data() + j0, n) : -std::numeric_limits<float>::infinity();
    if (sink != nullptr) max_score = std::max(max_score, *sink);
    std::fill(out.begin(), out.end(), 0.0f);  // no key and no sink: out 0, lse -inf
    float lse = -std::numeric_limits<float>::infinity();
    if (max_score != -std::numeric_limits<float>::infinity()) {
      // p = 2^((s - max) log2 e), the sink in the denominator only.
      cpu::exp2_row(p.data() + j0, s.data() + j0, cpu::kLog2e, max_score * cpu::kLog2e, n);
      float sum = cpu::lane_sum(p.data() + j0, n);
      if (sink != nullptr) sum += cpu::exp2_softmax((*sink - max_score) * cpu::kLog2e);
      const float inv_sum = 1.0f / sum;
      for (int64_t d = 0; d < Dv; ++d) out[d] = cpu::lane_dot(p.data() + j0, Vt.data() + d * Sk + j0, n) * inv_sum;
      lse = max_score + std::log(sum);
    }
    store_row(args.out.dtype, args.out.data, w.map.q_row(args.out, b, i, h), Dv, out.data());
    if (args.lse.data != nullptr) static_cast<float*>(args.lse.data)[w.map.lse_index(args.lse, b, h, i)] = lse;
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
