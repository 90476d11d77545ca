// CPU reference backward in float64. P and O are recomputed from q, k, v (the given out
// and lse are only shape-checked), so the gradients are the exact derivatives of the
// float64 forward. One (batch, KV head) per OpenMP work item: the query heads sharing a
// KV head accumulate dK/dV in that item, in a fixed order, so results are deterministic.
//
// With s = scale * q.k (then s <- c * tanh(s / c) under softcap c), P = softmax over the
// visible keys plus the sink, O = P V, and D_i = dO_i . O_i:
//   dV_j  = sum_i P_ij dO_i
//   dS_ij = P_ij (dO_i . V_j - D_i) * (softcap ? 1 - (s_ij / c)^2 : 1)
//   dQ_i  = scale * sum_j dS_ij K_j,   dK_j = scale * sum_i dS_ij Q_i
//   dsink_h = -sum_i P_i,sink D_i       (the sink column has value 0, so dP_sink = 0)
#include <vector>

#include "backends.hpp"
#include "reference/sequences.hpp"

namespace flash4::detail {

flash4_status reference_backward(const flash4_backward_args& args) {
  const ProblemShape shape = validate_backward(args);
  const SequenceMap map(shape, args.varlen, nullptr);
  const flash4_options& o = args.options;
  const int64_t Hq = shape.heads_q, Hkv = shape.heads_kv, group = Hq / Hkv;
  const int64_t Dqk = shape.d_qk, Dv = shape.d_v;
  const double scale = shape.softmax_scale, softcap = o.softcap;

  // Rows no sequence covers (packed padding, keys past seqused_k) get zero gradients.
  zero_fill(args.dq);
  zero_fill(args.dk);
  zero_fill(args.dv);
  std::vector<double> dsink_partial(shape.batch * Hq, 0.0);  // [b][h], summed over b in order

  parallel_for(shape.batch * Hkv, [&](int64_t item) {
    const int64_t b = item / Hkv, h_kv = item % Hkv;
    const int64_t Sq = map.seqlen_q(b), Sk = map.seqlen_k(b);
    std::vector<double> K(Sk * Dqk), V(Sk * Dv), dK(Sk * Dqk, 0.0), dV(Sk * Dv, 0.0);
    std::vector<double> q_i(Dqk), do_i(Dv), dq_i(Dqk), o_i(Dv), s(Sk), p(Sk);
    load_key_rows(map, args.k, b, h_kv, Sk, Dqk, K.data());
    load_key_rows(map, args.v, b, h_kv, Sk, Dv, V.data());
    for (int64_t h = h_kv * group; h < (h_kv + 1) * group; ++h) {
      const float* sink = o.sink != nullptr ? o.sink + h : nullptr;
      for (int64_t i = 0; i < Sq; ++i) {
        load_row(args.q.dtype, args.q.data, map.q_row(args.q, b, i, h), Dqk, q_i.data());
        load_row(args.dout.dtype, args.dout.data, map.q_row(args.dout, b, i, h), Dv, do_i.data());
        const KeyRange keys = visible_keys(i, Sq, Sk, o);
        const RowSoftmax row = softmax_row(q_i.data(), K.data(), Dqk, keys, scale, softcap, sink, s.data(), p.data());
        std::fill(o_i.begin(), o_i.end(), 0.0);
        for (int64_t j = keys.begin; j < keys.end; ++j)
          for (int64_t d = 0; d < Dv; ++d) o_i[d] += p[j] * V[j * Dv + d];
        double D_i = 0;
        for (int64_t d = 0; d < Dv; ++d) D_i += do_i[d] * o_i[d];
        std::fill(dq_i.begin(), dq_i.end(), 0.0);
        for (int64_t j = keys.begin; j < keys.end; ++j) {
          double dp = 0;
          for (int64_t d = 0; d < Dv; ++d) dp += do_i[d] * V[j * Dv + d];
          double ds = p[j] * (dp - D_i);
          if (softcap > 0) ds *= 1.0 - (s[j] / softcap) * (s[j] / softcap);
          for (int64_t d = 0; d < Dqk; ++d) {
            dq_i[d] += scale * ds * K[j * Dqk + d];
            dK[j * Dqk + d] += scale * ds * q_i[d];
          }
          for (int64_t d = 0; d < Dv; ++d) dV[j * Dv + d] += p[j] * do_i[d];
        }
        dsink_partial[b * Hq + h] -= row.p_sink * D_i;
        store_row(args.dq.dtype, args.dq.data, map.q_row(args.dq, b, i, h), Dqk, dq_i.data());
      }
    }
    for (int64_t j = 0; j < Sk; ++j) {
      store_row(args.dk.dtype, args.dk.data, map.k_row(args.dk, b, j, h_kv), Dqk, dK.data() + j * Dqk);
      store_row(args.dv.dtype, args.dv.data, map.k_row(args.dv, b, j, h_kv), Dv, dV.data() + j * Dv);
    }
  });

  if (args.dsink != nullptr && o.sink != nullptr)
    for (int64_t h = 0; h < Hq; ++h) {
      double total = 0;
      for (int64_t b = 0; b < shape.batch; ++b) total += dsink_partial[b * Hq + h];
      args.dsink[h] = float(total);
    }
  return FLASH4_OK;
}

}  // namespace flash4::detail
