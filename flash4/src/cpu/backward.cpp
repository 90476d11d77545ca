// flash4's CPU backward kernel in float32 (FLASH4_BACKEND_CPU; what FLASH4_BACKEND_AUTO runs
// on the CPU for f32 / f16 / bf16 tensors). As the GPU kernels, it takes P from the forward's
// lse and D_i = dO_i . O_i from the forward's out (the reference recomputes both in float64):
//   P_ij  = exp(s_ij - lse_i)            (s soft-capped: s = c tanh(scale q.k / c))
//   dV_j  = sum_i P_ij dO_i              dP_ij = dO_i . V_j
//   dS_ij = P_ij (dP_ij - D_i) (softcap ? 1 - tanh^2 : 1)
//   dQ_i  = scale sum_j dS_ij K_j        dK_j  = scale sum_i dS_ij Q_i
//   dsink_h = -sum_i exp(sink_h - lse_i) D_i
// One (sequence, KV head) per OpenMP work item: the query heads sharing a KV head add into
// its dK / dV in one fixed order, so results are deterministic at any thread count (the
// `deterministic` flag asks for nothing more). Keys, values and the dK / dV sums are held
// transposed ([d][j]) so that every loop of a query row runs along its visible keys (long
// and contiguous, where the head dim may be 24): S and dP as D axpy passes, dQ as D dot
// products with dS, dK and dV as D axpy passes of dS and P.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backends.hpp"
#include "cpu/row_ops.hpp"
#include "reference/sequences.hpp"

namespace flash4::detail {
namespace {

struct BackwardItem {
  const flash4_backward_args& args;
  const ProblemShape& shape;
  const SequenceMap& map;
  std::vector<double>& dsink_partial;  // [b][h]
};

FLASH4_CPU_CLONES void backward_item(const BackwardItem& w, int64_t item) {
  const flash4_backward_args& args = w.args;
  const flash4_options& o = args.options;
  const int64_t Hq = w.shape.heads_q, Hkv = w.shape.heads_kv, group = Hq / Hkv;
  const int64_t Dqk = w.shape.d_qk, Dv = w.shape.d_v;
  const int64_t b = item / Hkv, h_kv = item % Hkv;
  const int64_t Sq = w.map.seqlen_q(b), Sk = w.map.seqlen_k(b);
  const float scale = float(w.shape.softmax_scale), softcap = o.softcap;
  const float* lse_data = static_cast<const float*>(args.lse.data);

  std::vector<float> Kt(Dqk * Sk), Vt(Dv * Sk), dKt(Dqk * Sk, 0.0f), dVt(Dv * Sk, 0.0f);
  std::vector<float> row(std::max(Dqk, Dv)), q(Dqk), dout(Dv), out(Dv), dq(Dqk), s(Sk), p(Sk), dp(Sk);
  std::vector<float> tanh_s(softcap > 0 ? Sk : 0);
  for (int64_t j = 0; j < Sk; ++j) {
    load_row(args.k.dtype, args.k.data, w.map.k_row(args.k, b, j, h_kv), Dqk, row.data());
    for (int64_t d = 0; d < Dqk; ++d) Kt[d * Sk + j] = row[d];
    load_row(args.v.dtype, args.v.data, w.map.k_row(args.v, b, j, h_kv), Dv, row.data());
    for (int64_t d = 0; d < Dv; ++d) Vt[d * Sk + j] = row[d];
  }
  for (int64_t h = h_kv * group; h < (h_kv + 1) * group; ++h) {
    const float* sink = o.sink != nullptr ? o.sink + h : nullptr;
    for (int64_t i = 0; i < Sq; ++i) {
      load_row(args.q.dtype, args.q.data, w.map.q_row(args.q, b, i, h), Dqk, q.data());
      load_row(args.dout.dtype, args.dout.data, w.map.q_row(args.dout, b, i, h), Dv, dout.data());
      load_row(args.out.dtype, args.out.data, w.map.q_row(args.out, b, i, h), Dv, out.data());
      const float lse = lse_data[w.map.lse_index(args.lse, b, h, i)];
      const float D_i = cpu::lane_dot(dout.data(), out.data(), Dv);
      if (sink != nullptr) w.dsink_partial[b * Hq + h] -= double(std::exp(*sink - lse)) * D_i;
      const KeyRange keys = visible_keys(i, Sq, Sk, o);
      const int64_t j0 = keys.begin, n = keys.empty() ? 0 : keys.end - keys.begin;
      std::fill(dq.begin(), dq.end(), 0.0f);
      if (n > 0) {
        float* s_row = s.data() + j0;
        std::fill_n(s_row, n, 0.0f);
        for (int64_t d = 0; d < Dqk; ++d) cpu::axpy(s_row, q[d] * scale, Kt.data() + d * Sk + j0, n);
        if (softcap > 0)
          for (int64_t j = j0; j < j0 + n; ++j) {
            tanh_s[j] = std::tanh(s[j] / softcap);
            s[j] = softcap * tanh_s[j];
          }
        cpu::exp2_row(p.data() + j0, s_row, cpu::kLog2e, lse * cpu::kLog2e, n);
        std::fill_n(dp.data() + j0, n, 0.0f);
        for (int64_t d = 0; d < Dv; ++d) cpu::axpy(dp.data() + j0, dout[d], Vt.data() + d * Sk + j0, n);
        // dp <- scale dS (the scale of dQ and dK folded in once).
#pragma omp simd
        for (int64_t j = j0; j < j0 + n; ++j) dp[j] = scale * p[j] * (dp[j] - D_i);
        if (softcap > 0)
          for (int64_t j = j0; j < j0 + n; ++j) dp[j] *= 1.0f - tanh_s[j] * tanh_s[j];
        for (int64_t d = 0; d < Dqk; ++d) {
          dq[d] = cpu::lane_dot(dp.data() + j0, Kt.data() + d * Sk + j0, n);
          cpu::axpy(dKt.data() + d * Sk + j0, q[d], dp.data() + j0, n);
        }
        for (int64_t d = 0; d < Dv; ++d) cpu::axpy(dVt.data() + d * Sk + j0, dout[d], p.data() + j0, n);
      }
      store_row(args.dq.dtype, args.dq.data, w.map.q_row(args.dq, b, i, h), Dqk, dq.data());
    }
  }
  for (int64_t j = 0; j < Sk; ++j) {
    for (int64_t d = 0; d < Dqk; ++d) row[d] = dKt[d * Sk + j];
    store_row(args.dk.dtype, args.dk.data, w.map.k_row(args.dk, b, j, h_kv), Dqk, row.data());
    for (int64_t d = 0; d < Dv; ++d) row[d] = dVt[d * Sk + j];
    store_row(args.dv.dtype, args.dv.data, w.map.k_row(args.dv, b, j, h_kv), Dv, row.data());
  }
}

}  // namespace

flash4_status cpu_backward(const flash4_backward_args& args) {
  const ProblemShape shape = validate_backward(args);
  const SequenceMap map(shape, args.varlen, nullptr);
  // Rows no sequence covers (packed padding, keys past seqused_k) get zero gradients.
  zero_fill(args.dq);
  zero_fill(args.dk);
  zero_fill(args.dv);
  std::vector<double> dsink_partial(shape.batch * shape.heads_q, 0.0);
  BackwardItem work{args, shape, map, dsink_partial};
  parallel_for(shape.batch * shape.heads_kv, [&](int64_t item) { backward_item(work, item); });
  if (args.dsink != nullptr && args.options.sink != nullptr)
    for (int64_t h = 0; h < shape.heads_q; ++h) {
      double total = 0;
      for (int64_t b = 0; b < shape.batch; ++b) total += dsink_partial[b * shape.heads_q + h];
      args.dsink[h] = float(total);
    }
  return FLASH4_OK;
}

}  // namespace flash4::detail
